"""Bring the database schema up to date with Alembic; the service does it on every start.

The migrations ship inside the package (`migrations/`), so this works from an installed wheel. The
whole upgrade runs in one transaction that holds a database-wide lock (see
`database.exclusive_transaction`): replicas starting together take turns, and the later ones find
the schema at head and do nothing. Both databases roll DDL back with the transaction, so an upgrade
cut short leaves the old schema, never half a new one.

Alembic's bookkeeping table has a name of its own, so the service may share a database with other
Alembic users (MLflow keeps its own `alembic_version`).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

from tuneloop.feedback.database import exclusive_transaction

MIGRATIONS_FOLDER = Path(__file__).with_name("migrations")
VERSION_TABLE = "tuneloop_feedback_alembic_version"
MIGRATION_LOCK_KEY = 0x74756E656C6F6F70  # "tuneloop" in ASCII; any bigint that other lock users avoid


def alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_FOLDER))
    config.attributes["connection"] = connection
    return config


def upgrade_database(engine: Engine) -> None:
    with exclusive_transaction(engine, MIGRATION_LOCK_KEY) as connection:
        command.upgrade(alembic_config(connection), "head")


def head_revision() -> str:
    return ScriptDirectory(str(MIGRATIONS_FOLDER)).get_current_head() or ""


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()
