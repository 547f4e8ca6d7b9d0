"""Reading an HTTP reply from a server a tenant chose, without letting it choose how much we hold."""

from __future__ import annotations

from aiohttp import StreamReader


async def read_at_most(content: StreamReader, limit: int) -> bytes:
    """The body, or its first limit + 1 bytes when it is longer (so the caller can tell)."""
    chunks, size = [], 0
    while size <= limit:
        chunk = await content.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
