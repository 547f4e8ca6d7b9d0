"""The operator's wall clock, in one place so that tests of schedules can move time on."""

from __future__ import annotations

from datetime import datetime, timezone


def now() -> datetime:
    return datetime.now(timezone.utc)
