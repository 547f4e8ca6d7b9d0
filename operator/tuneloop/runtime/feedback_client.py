"""What the operator asks the feedback service: how many corrections arrived after a watermark.

The service's address is a tenant's to choose (within outbound.py's rules), so nothing it answers
reaches a status verbatim: problems are fixed summaries (the HTTP status, the size of a body that
was not the stats JSON), and bodies are read only up to a bound.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import httpx

from tuneloop.retry import FEEDBACK_STATS, RetryPolicy, async_retrying, no_answer
from tuneloop.runtime.bounded_read import read_at_most

MAX_BODY_BYTES = 64 * 1024  # the stats answer is a few dozen bytes


class FeedbackUnavailable(RuntimeError):
    """The feedback service could not be asked, or refused; the message says which and why."""


@dataclass(frozen=True)
class FeedbackStats:
    new_rows: int  # rows after the watermark
    last_id: int  # the newest row's id: the end of the range a snapshot taken now covers


async def _ask(client: httpx.AsyncClient, url: str, params: dict, timeout_seconds: float) -> tuple[int, bytes]:
    """The reply's status and at most MAX_BODY_BYTES + 1 bytes of its body, all within the timeout."""
    async with asyncio.timeout(timeout_seconds), client.stream("GET", url, params=params) as reply:
        if reply.status_code >= 300:
            return reply.status_code, b""
        return reply.status_code, await read_at_most(reply, MAX_BODY_BYTES)


async def feedback_stats(url: str, token: str | None, model: str, after_id: int,
                         retry: RetryPolicy = FEEDBACK_STATS) -> FeedbackStats:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    params = {"model": model, "afterId": after_id}
    try:
        # No redirects: a 3xx would carry the token to wherever the answer points.
        async with httpx.AsyncClient(headers=headers, timeout=retry.timeout_seconds, follow_redirects=False) as client:
            status, raw = await async_retrying(retry, no_answer)(
                _ask, client, f"{url}/v1/feedback/stats", params, retry.timeout_seconds)
    except (httpx.HTTPError, httpx.InvalidURL, TimeoutError) as error:
        raise FeedbackUnavailable(f"{url} is unreachable: {error or type(error).__name__}") from None
    if status in (401, 403):
        raise FeedbackUnavailable(f"{url} refused the token (HTTP {status})")
    if status >= 300:
        raise FeedbackUnavailable(f"{url} answered HTTP {status}")
    try:
        if len(raw) > MAX_BODY_BYTES:
            raise ValueError
        body = json.loads(raw)
        # New rows with a correction: verdict-only rows give no training row. A service older than verdicts
        # has no `corrections` count, and every new row of it has a correction.
        new, last = body.get("corrections", body["new"]), body["lastId"]
        if not (type(new) is int and type(last) is int and 0 <= new <= 2**63 and 0 <= last <= 2**63):
            raise ValueError
    except (KeyError, TypeError, ValueError, RecursionError):
        size = f"{MAX_BODY_BYTES:,}+" if len(raw) > MAX_BODY_BYTES else f"{len(raw):,}"
        raise FeedbackUnavailable(f"{url}/v1/feedback/stats answered {size} bytes that are not the service's "
                                  "stats (JSON with integers new and lastId)") from None
    return FeedbackStats(new_rows=new, last_id=last)
