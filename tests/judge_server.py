"""A scripted OpenAI-compatible judge: a real aiohttp server on 127.0.0.1 (random port) in a thread.

A script maps each chat request (and how often the same request came before, so retries can be
told apart from first tries) to a Reply: a JSON judgment, malformed text, a delay, an HTTP error.
Every request is recorded, for assertions on the protocol and on retries.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Reply:
    content: str | None = None
    status: int = 200
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def prompt(self) -> str:
        return self.body["messages"][-1]["content"]

    @property
    def pairwise(self) -> bool:
        return "<answer_a>" in self.prompt

    def tag(self, name: str) -> str:
        match = re.search(rf"<{name}>(.*?)</{name}>", self.prompt, re.DOTALL)
        assert match, f"no <{name}> in the judge prompt"
        return match.group(1)


Script = Callable[[Seen, int], Reply]


def judgment(**fields: Any) -> Reply:
    return Reply(json.dumps({"rationale": "scripted", **fields}))


def reference_judge(seen: Seen, repeat: int) -> Reply:
    """Scores 9 an answer equal to the reference and 2 any other; prefers the answer equal to the reference."""
    reference = seen.tag("reference").strip()
    if not seen.pairwise:
        return judgment(score=9 if seen.tag("answer").strip() == reference else 2)
    a_right = seen.tag("answer_a").strip() == reference
    b_right = seen.tag("answer_b").strip() == reference
    return judgment(winner="A" if a_right and not b_right else "B" if b_right and not a_right else "tie")


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


class ScriptedJudge:
    def __init__(self, script: Script = reference_judge, models: tuple[str, ...] = ("judge-model",)):
        self.script = script
        self.models = models
        self.requests: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._repeats: Counter[str] = Counter()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="scripted-judge", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def chat_requests(self) -> list[Seen]:
        return [seen for seen in self.requests if seen.path.endswith("/chat/completions")]

    def __enter__(self) -> "ScriptedJudge":
        self._thread.start()
        assert self._ready.wait(10), "the scripted judge did not start"
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._list_models)
        runner = web.AppRunner(app, handler_cancellation=True)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    async def _list_models(self, request: web.Request) -> web.Response:
        self.requests.append(Seen(request.path, dict(request.headers), {}))
        return web.json_response({"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "tests"} for name in self.models]})

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        seen = Seen(request.path, dict(request.headers), body)
        self.requests.append(seen)
        key = json.dumps(body["messages"], sort_keys=True)
        repeat = self._repeats[key]
        self._repeats[key] += 1
        reply = self.script(seen, repeat)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(reply.delay)
        finally:
            self.in_flight -= 1
        if reply.status != 200:
            return web.json_response({"error": {"message": f"scripted {reply.status}", "type": "scripted",
                                                "code": reply.status}}, status=reply.status, headers=reply.headers)
        return web.json_response({
            "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": 0,
            "model": body.get("model"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": reply.content}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })
