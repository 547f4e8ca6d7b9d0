"""Reading an HTTP reply from a server a tenant chose, without letting it choose how much we hold."""

from __future__ import annotations

import httpx


async def read_at_most(response: httpx.Response, limit: int) -> bytes:
    """The body of a streamed reply, or its first limit + 1 bytes when it is longer (so the caller can tell)."""
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return b"".join(chunks)[:limit + 1]
