"""Rows belong to a namespace: the one of the token that posted them ('' for the service-wide token).
Idempotency keys are unique per namespace, so one team cannot probe another's keys.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch: SQLite cannot drop a constraint in place; Alembic copies the table there, and alters it
    # in place on PostgreSQL.
    with op.batch_alter_table("feedback") as batch:
        batch.add_column(sa.Column("namespace", sa.String(63), nullable=False, server_default=""))
        batch.drop_constraint("uq_feedback_idempotency_key", type_="unique")
        batch.create_unique_constraint("uq_feedback_namespace_idempotency_key", ["namespace", "idempotency_key"])
        batch.drop_index("ix_feedback_model_id")
        batch.create_index("ix_feedback_namespace_model_id", ["namespace", "model", "id"])


def downgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.drop_index("ix_feedback_namespace_model_id")
        batch.create_index("ix_feedback_model_id", ["model", "id"])
        batch.drop_constraint("uq_feedback_namespace_idempotency_key", type_="unique")
        batch.create_unique_constraint("uq_feedback_idempotency_key", ["idempotency_key"])
        batch.drop_column("namespace")
