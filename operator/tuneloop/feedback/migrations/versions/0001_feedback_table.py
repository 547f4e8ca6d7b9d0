"""The feedback table.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("adapter_version", sa.String(200)),
        sa.Column("label", sa.String(64)),
        sa.Column("prompt", sa.Text()),
        sa.Column("messages", sa.JSON(none_as_null=True)),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("correction", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("(prompt IS NULL) <> (messages IS NULL)", name="ck_feedback_prompt_or_messages"),
        sa.UniqueConstraint("idempotency_key", name="uq_feedback_idempotency_key"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_feedback_model_id", "feedback", ["model", "id"])


def downgrade() -> None:
    op.drop_index("ix_feedback_model_id", table_name="feedback")
    op.drop_table("feedback")
