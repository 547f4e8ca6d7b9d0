"""The one table of the feedback service. The migrations in `migrations/versions` create it; a test
checks that they and this declaration agree."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from tuneloop.feedback.limits import MAX_LABEL_CHARS, MAX_NAME_CHARS, MAX_NAMESPACE_CHARS

# The migration that added the review columns (0003) uses the same constraint texts.
VERDICT_CHARS = 16
REVIEWED = "correction IS NOT NULL OR verdict IS NOT NULL OR rating IS NOT NULL"
VERDICTS = "verdict IS NULL OR verdict IN ('accept', 'reject')"
RATINGS = "rating IS NULL OR (rating >= 1 AND rating <= 5)"

metadata = MetaData()

feedback = Table(
    "feedback",
    metadata,
    # SQLite only auto-increments an INTEGER key; with sqlite_autoincrement an id is never reused
    # (ids mark how far a snapshot got).
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("idempotency_key", String(MAX_NAME_CHARS), nullable=False),
    # The namespace of the token that posted the row (auth.Scope); '' for the service-wide token.
    Column("namespace", String(MAX_NAMESPACE_CHARS), nullable=False, server_default=""),
    Column("model", String(MAX_NAME_CHARS), nullable=False),
    Column("adapter_version", String(MAX_NAME_CHARS)),
    Column("label", String(MAX_LABEL_CHARS)),
    Column("prompt", Text),
    # none_as_null: a missing conversation is SQL NULL, not the JSON value null
    Column("messages", JSON(none_as_null=True)),
    Column("answer", Text, nullable=False),
    # A row has at least one of correction, verdict and rating (schemas.FeedbackIn).
    Column("correction", Text),
    Column("verdict", String(VERDICT_CHARS)),
    Column("rating", SmallInteger),
    Column("created_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("(prompt IS NULL) <> (messages IS NULL)", name="ck_feedback_prompt_or_messages"),
    CheckConstraint(REVIEWED, name="ck_feedback_reviewed"),
    CheckConstraint(VERDICTS, name="ck_feedback_verdict"),
    CheckConstraint(RATINGS, name="ck_feedback_rating"),
    UniqueConstraint("namespace", "idempotency_key", name="uq_feedback_namespace_idempotency_key"),
    Index("ix_feedback_namespace_model_id", "namespace", "model", "id"),
    sqlite_autoincrement=True,
)
