"""Reads and writes of feedback rows; the same statements on PostgreSQL and SQLite.

Ids are handed out in commit order: every insert holds one database-wide lock from taking its id to
committing. Then the highest id a reader sees is a safe mark: no row with a smaller id can appear
later, so a snapshot that ends at it and the next one that starts after it miss nothing. Without the
lock, PostgreSQL could commit id 11 before id 10. Feedback comes from people reviewing answers, a
few rows a second at most; the lock costs nothing at that rate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine, case, func, insert, select
from sqlalchemy.exc import IntegrityError

from tuneloop.feedback.auth import EVERYTHING, Scope
from tuneloop.feedback.database import consistent_read, exclusive_transaction
from tuneloop.feedback.limits import MAX_PAGE_BYTES
from tuneloop.feedback.models import feedback
from tuneloop.feedback.schemas import FeedbackIn, FeedbackPage, FeedbackRecord, FeedbackStats

INSERT_LOCK_KEY = 0x74756E6566656564  # "tunefeed" in ASCII


class IdempotencyConflict(Exception):
    def __init__(self, key: str, existing_id: int):
        self.key, self.existing_id = key, existing_id
        super().__init__(f"idempotency key {key!r} was already used for different feedback (id {existing_id}); "
                         "send the same content again, or use a new key for new feedback")


@dataclass(frozen=True)
class Stored:
    id: int
    duplicate: bool


def row_values(item: FeedbackIn, scope: Scope = EVERYTHING) -> dict[str, Any]:
    return {**item.stored_fields(), "idempotency_key": item.idempotency_key, "namespace": scope.stored_namespace,
            "created_at": datetime.now(timezone.utc)}


def visible(scope: Scope) -> list[Any]:
    """The rows a token may read: its namespace's, of its models."""
    conditions = [] if scope.namespace is None else [feedback.c.namespace == scope.namespace]
    if scope.models is not None:
        conditions.append(feedback.c.model.in_(sorted(scope.models)))
    return conditions


def add_feedback(engine: Engine, item: FeedbackIn, scope: Scope = EVERYTHING) -> Stored:
    """Store `item` once per idempotency key of the token's namespace; a repeat with the same content
    returns the first id."""
    try:
        with exclusive_transaction(engine, INSERT_LOCK_KEY) as connection:
            result = connection.execute(insert(feedback).values(**row_values(item, scope)))
            return Stored(result.inserted_primary_key[0], duplicate=False)
    except IntegrityError as error:
        refused = error
    with engine.connect() as connection:
        existing = connection.execute(
            select(feedback).where(feedback.c.namespace == scope.stored_namespace,
                                   feedback.c.idempotency_key == item.idempotency_key)).mappings().one_or_none()
    if existing is None:
        raise refused  # another constraint than the key's
    if {field: existing[field] for field in item.stored_fields()} != item.stored_fields():
        raise IdempotencyConflict(item.idempotency_key, existing["id"])
    return Stored(existing["id"], duplicate=True)


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; they were written in UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def record(row: Any) -> FeedbackRecord:
    fields = {key: value for key, value in row.items() if key != "namespace"}
    return FeedbackRecord.model_validate({**fields, "created_at": as_utc(row["created_at"])})


def row_bytes(row: Any) -> int:
    """About what a row weighs in the page: its text in UTF-8 (messages as their JSON)."""
    return sum(len((value if isinstance(value, str) else json.dumps(value)).encode())
               for value in row.values() if isinstance(value, (str, list, dict)))


def feedback_page(engine: Engine, scope: Scope, model: str | None, after_id: int, up_to_id: int | None,
                  limit: int) -> FeedbackPage:
    """The token's rows with after_id < id <= up_to_id in id order: at most `limit` of them, and no more
    than MAX_PAGE_BYTES of text (at least one row). Rows are streamed from the database, not all fetched."""
    query = (select(feedback).where(feedback.c.id > after_id, *visible(scope)).order_by(feedback.c.id)
             .limit(limit + 1))
    if model is not None:
        query = query.where(feedback.c.model == model)
    if up_to_id is not None:
        query = query.where(feedback.c.id <= up_to_id)
    items, size, more = [], 0, False
    with engine.connect() as connection:
        for row in connection.execution_options(stream_results=True, yield_per=50).execute(query).mappings():
            cost = row_bytes(row)
            if len(items) == limit or (items and size + cost > MAX_PAGE_BYTES):
                more = True
                break
            items.append(record(row))
            size += cost
    return FeedbackPage(items=items, next_after_id=items[-1].id if more else None)


def feedback_stats(engine: Engine, scope: Scope, model: str | None, after_id: int) -> FeedbackStats:
    rows = [*visible(scope), *([] if model is None else [feedback.c.model == model])]
    new_rows = [*rows, feedback.c.id > after_id]
    counted = {
        "confirmations": feedback.c.answer == feedback.c.correction,
        "corrections": feedback.c.correction.is_not(None),
        "accepted": feedback.c.verdict == "accept",
        "rejected": feedback.c.verdict == "reject",
        "ratings": feedback.c.rating.is_not(None),
    }
    with consistent_read(engine) as connection:
        total, last_id = connection.execute(
            select(func.count(), func.coalesce(func.max(feedback.c.id), 0)).where(*rows)).one()
        new, *counts = connection.execute(
            select(func.count(), *(func.coalesce(func.sum(case((condition, 1), else_=0)), 0)
                                   for condition in counted.values())).where(*new_rows)).one()
        by_column = {}
        for column in (feedback.c.label, feedback.c.adapter_version):
            counts_by_value = connection.execute(
                select(column, func.count()).where(*new_rows, column.is_not(None)).group_by(column).order_by(column))
            by_column[column.name] = {value: count for value, count in counts_by_value}
    return FeedbackStats(model=model, total=total, last_id=last_id, after_id=after_id, new=new,
                         **dict(zip(counted, counts)), by_label=by_column["label"],
                         by_adapter_version=by_column["adapter_version"])
