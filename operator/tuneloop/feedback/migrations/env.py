"""Alembic environment of the feedback service: runs on the connection (and inside the locked
transaction) that `tuneloop.feedback.migrate.upgrade_database` hands over."""

from alembic import context

from tuneloop.feedback.migrate import VERSION_TABLE
from tuneloop.feedback.models import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run these migrations with tuneloop.feedback.migrate.upgrade_database(engine)")
context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
