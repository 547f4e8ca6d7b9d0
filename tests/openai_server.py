"""A scripted OpenAI-compatible server (vLLM's API, as far as the tests need it): a real aiohttp
server on 127.0.0.1 (random port) in a thread of its own, so sync and async tests alike can use it.

A Backend plays one vLLM server: what it answers (by prompt substring, or a callable), how slowly,
how often it fails. The server serves one backend at /v1/..., or routes
/<namespace>/<service>/v1/... to whatever `backend_for(namespace, service)` returns, the way
kube-proxy routes a Service to its pods (None: a Service without endpoints, 503).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

_completion_ids = itertools.count(1)


def completion(model: str | None, content: str | None) -> web.Response:
    return web.json_response({
        "id": f"chatcmpl-{next(_completion_ids)}", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    })


def error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "scripted", "code": status}},
                             status=status, headers=headers)


def model_list(names: tuple[str, ...]) -> web.Response:
    return web.json_response({"object": "list", "data": [
        {"id": name, "object": "model", "created": 0, "owned_by": "tests"} for name in names]})


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerThread:
    """Serves `app` on `host` (127.0.0.1), a free port, from a thread with its own event loop; `with`
    starts and stops it. With an `ssl_context` it speaks HTTPS."""

    def __init__(self, app: web.Application, name: str, *, host: str = "127.0.0.1", ssl_context: Any = None):
        self._app, self._host, self._ssl_context = app, host, ssl_context
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.port = 0

    def __enter__(self):
        self._thread.start()
        assert self._ready.wait(10), f"{self._thread.name} did not start"
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        runner = web.AppRunner(self._app, handler_cancellation=True)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, self._host, 0, ssl_context=self._ssl_context)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()


class CountsInFlight:
    """Counts the requests being answered now (in_flight) and the most there were at once (max_in_flight)."""

    in_flight = 0
    max_in_flight = 0

    async def answer_after(self, seconds: float) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.in_flight -= 1


@dataclass
class Backend(CountsInFlight):
    """One scripted vLLM server. `answers`: prompt substring -> answer (first match wins), or a callable."""

    answers: Mapping[str, str] | Callable[[str], str] = field(default_factory=dict)
    default_answer: str = "OK"
    latency: float = 0.0  # seconds before each reply
    error_rate: float = 0.0  # share of chat requests answered with error_status, spread evenly
    error_status: int = 500
    models: tuple[str, ...] = ()  # served model names; a request for another gets vLLM's 404; empty: any
    requests: list[dict[str, Any]] = field(default_factory=list)  # chat request bodies, in arrival order
    authorizations: set[str] = field(default_factory=set)  # Authorization headers seen

    def answer(self, prompt: str) -> str:
        if callable(self.answers):
            return self.answers(prompt)
        return next((text for part, text in self.answers.items() if part in prompt), self.default_answer)

    def fails_latest(self) -> bool:
        """Of the first n requests, exactly floor(n * error_rate) fail, whatever the order they came in."""
        count = len(self.requests)
        return int(count * self.error_rate + 1e-9) > int((count - 1) * self.error_rate + 1e-9)


def judge_backend(score: int | Callable[[str], int]) -> Backend:
    """A judge answering MLflow-style JSON judgments; `score` may read the judge prompt."""
    def judgment(prompt: str) -> str:
        return json.dumps({"rationale": "scripted", "score": score(prompt) if callable(score) else score})

    return Backend(answers=judgment)


class OpenAIServer(ServerThread):
    """`OpenAIServer(backend)` or `OpenAIServer(backend_for=lambda namespace, service: ...)`."""

    def __init__(self, backend: Backend | None = None, *,
                 backend_for: Callable[[str, str], Backend | None] | None = None):
        assert (backend is None) != (backend_for is None), "give a backend or backend_for"
        self.backend_for = backend_for or (lambda namespace, service: backend)
        app = web.Application()
        for prefix in ("", "/{namespace}/{service}"):
            app.router.add_get(f"{prefix}/v1/models", self._models)
            app.router.add_post(f"{prefix}/v1/chat/completions", self._chat)
        super().__init__(app, "openai-server")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_for(self, namespace: str, service: str) -> str:
        return f"{self.url}/{namespace}/{service}"

    def _backend(self, request: web.Request) -> Backend | None:
        return self.backend_for(request.match_info.get("namespace", ""), request.match_info.get("service", ""))

    async def _models(self, request: web.Request) -> web.Response:
        backend = self._backend(request)
        return model_list(backend.models) if backend else error(503, "no endpoints available for service")

    async def _chat(self, request: web.Request) -> web.Response:
        backend = self._backend(request)
        if backend is None:
            return error(503, "no endpoints available for service")
        body = await request.json()
        backend.requests.append(body)
        backend.authorizations.add(request.headers.get("Authorization", ""))
        failing = backend.fails_latest()
        await backend.answer_after(backend.latency)
        if backend.models and body.get("model") not in backend.models:
            return error(404, f"The model `{body.get('model')}` does not exist.")
        if failing:
            return error(backend.error_status, f"scripted {backend.error_status}")
        return completion(body.get("model"), backend.answer(body["messages"][-1]["content"]))
