"""A scripted OpenAI-compatible judge: a real aiohttp server on 127.0.0.1 (random port) in a thread.

A script maps each chat request (and how often the same request came before, so retries can be
told apart from first tries) to a Reply: a JSON judgment, malformed text, a reply cut at the token limit
(finish_reason "length"), a delay, an HTTP error.
Every request is recorded, for assertions on the protocol and on retries.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from openai_server import CountsInFlight, ServerThread, closed_port, completion, error, model_list


@dataclass
class Reply:
    content: str | None = None
    status: int = 200
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    finish_reason: str = "stop"


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
    return f"http://127.0.0.1:{closed_port()}/v1"


class ScriptedJudge(ServerThread, CountsInFlight):
    def __init__(self, script: Script = reference_judge, models: tuple[str, ...] = ("judge-model",)):
        self.script = script
        self.models = models
        self.requests: list[Seen] = []
        self._repeats: Counter[str] = Counter()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._list_models)
        super().__init__(app, "scripted-judge")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def chat_requests(self) -> list[Seen]:
        return [seen for seen in self.requests if seen.path.endswith("/chat/completions")]

    async def _list_models(self, request: web.Request) -> web.Response:
        self.requests.append(Seen(request.path, dict(request.headers), {}))
        return model_list(self.models)

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        seen = Seen(request.path, dict(request.headers), body)
        self.requests.append(seen)
        key = json.dumps(body["messages"], sort_keys=True)
        repeat = self._repeats[key]
        self._repeats[key] += 1
        reply = self.script(seen, repeat)
        await self.answer_after(reply.delay)
        if reply.status != 200:
            return error(reply.status, f"scripted {reply.status}", reply.headers)
        response = completion(body.get("model"), reply.content)
        if reply.finish_reason != "stop":
            document = json.loads(response.body)
            document["choices"][0]["finish_reason"] = reply.finish_reason
            return web.json_response(document)
        return response
