"""A review may be a verdict (accept or reject) or a rating (1 to 5) of the served answer instead of,
or besides, a correction: the correction becomes optional, and a row needs at least one of the three.
Existing rows all have a correction and keep it.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Written out rather than imported from tuneloop.feedback.models: a migration keeps meaning what it
# meant when it was written, whatever the models say later.
REVIEWED = "correction IS NOT NULL OR verdict IS NOT NULL OR rating IS NOT NULL"
VERDICTS = "verdict IS NULL OR verdict IN ('accept', 'reject')"
RATINGS = "rating IS NULL OR (rating >= 1 AND rating <= 5)"


def upgrade() -> None:
    # batch: SQLite cannot make a column nullable in place; Alembic copies the table there, and alters
    # it in place on PostgreSQL.
    with op.batch_alter_table("feedback") as batch:
        batch.add_column(sa.Column("verdict", sa.String(16)))
        batch.add_column(sa.Column("rating", sa.SmallInteger()))
        batch.alter_column("correction", existing_type=sa.Text(), nullable=True)
        batch.create_check_constraint("ck_feedback_reviewed", REVIEWED)
        batch.create_check_constraint("ck_feedback_verdict", VERDICTS)
        batch.create_check_constraint("ck_feedback_rating", RATINGS)


def downgrade() -> None:
    # Rows without a correction cannot be kept by the old schema: they go, as their verdicts and ratings do.
    op.execute("DELETE FROM feedback WHERE correction IS NULL")
    with op.batch_alter_table("feedback") as batch:
        batch.drop_constraint("ck_feedback_rating", type_="check")
        batch.drop_constraint("ck_feedback_verdict", type_="check")
        batch.drop_constraint("ck_feedback_reviewed", type_="check")
        batch.alter_column("correction", existing_type=sa.Text(), nullable=False)
        batch.drop_column("rating")
        batch.drop_column("verdict")
