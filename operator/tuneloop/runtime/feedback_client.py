"""What the operator asks the feedback service: how many corrections arrived after a watermark."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

REQUEST_TIMEOUT_SECONDS = 10.0


class FeedbackUnavailable(RuntimeError):
    """The feedback service could not be asked, or refused; the message says which and why."""


@dataclass(frozen=True)
class FeedbackStats:
    new_rows: int  # rows after the watermark
    last_id: int  # the newest row's id: the end of the range a snapshot taken now covers


async def feedback_stats(url: str, token: str | None, model: str, after_id: int) -> FeedbackStats:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
    try:
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
            async with session.get(f"{url}/v1/feedback/stats", params={"model": model, "afterId": after_id}) as reply:
                if reply.status in (401, 403):
                    raise FeedbackUnavailable(f"{url} refused the token (HTTP {reply.status})")
                if reply.status >= 400:
                    raise FeedbackUnavailable(f"{url} answered HTTP {reply.status}: {(await reply.text())[:200]}")
                body = await reply.json()
    except (aiohttp.ClientError, TimeoutError) as error:
        raise FeedbackUnavailable(f"{url} is unreachable: {error or type(error).__name__}") from None
    try:
        return FeedbackStats(new_rows=int(body["new"]), last_id=int(body["lastId"]))
    except (KeyError, TypeError, ValueError):
        raise FeedbackUnavailable(f"{url}/v1/feedback/stats answered without new and lastId: "
                                  f"{str(body)[:200]}") from None
