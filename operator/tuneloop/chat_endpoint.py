"""Requests to a model behind any OpenAI-compatible endpoint (`POST {url}/chat/completions`, e.g. vLLM or
`transformers serve`): the request discipline the LLM judge (tuneloop.judge_client) and the augment stage's
teacher (tuneloop_trainer.teacher) share.

Client: the `openai` SDK (AsyncOpenAI), the reference client of the API vLLM imitates: it owns URL joining,
bearer auth and error bodies, and its typed errors (APIConnectionError, APITimeoutError, APIStatusError with
status_code) are exactly the distinctions the retry policy needs. Its own retries are off (max_retries=0) so
every attempt goes through our retry policy (tuneloop.retry). The HTTP client under it reads at most
MAX_REPLY_BYTES of a reply and follows no redirect.

What one logical request may end in:
  an answer;
  RequestRejected  the endpoint refused this one request with a status retrying cannot fix (e.g. 400);
  `unavailable`    (the caller's exception type) the endpoint refused us (401, 403, 404) or did not answer
                   within the retries: nothing more should be asked of it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tenacity import RetryCallState

from tuneloop.retry import RetryPolicy, async_retrying

log = logging.getLogger("tuneloop.chat_endpoint")
T = TypeVar("T")

RETRYABLE_STATUS = (408, 409, 429)  # and every 5xx
FATAL_STATUS = {401: "rejected the API key", 403: "refused access", 404: "does not serve that model or path"}
# A judgment or a synthetic row is a few hundred tokens: a reply past this is an attack or a bug, and reading
# it whole would hold the process's memory hostage (the operator judges rollouts in its own process).
MAX_REPLY_BYTES = 1 * 2**20


class RequestRejected(RuntimeError):
    """The endpoint answered this one request with a status that retrying cannot fix (e.g. 400)."""


# --- reading replies ---

_FENCED = re.compile(r"```[\w-]*\s*(.*?)\s*```", re.DOTALL)


def json_object(reply: str) -> dict[str, Any] | None:
    """The reply's JSON object: the whole reply, a fenced block, or the outermost {...} span (as MLflow's
    judges read replies, tolerating a ```json fence around the object)."""
    fenced = _FENCED.search(reply)
    candidates = [reply.strip()] + ([fenced.group(1)] if fenced else [])
    start, end = reply.find("{"), reply.rfind("}")
    if 0 <= start < end:
        candidates.append(reply[start:end + 1])
    for text in candidates:
        try:
            value = json.loads(text, strict=False)
        except (json.JSONDecodeError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
    return None


def fenced_text(reply: str) -> str:
    """The content of the reply's first ``` fence, or the whole reply; stripped."""
    fenced = _FENCED.search(reply)
    return (fenced.group(1) if fenced else reply).strip()


# --- errors and retries ---

def describe_error(error: BaseException) -> str:
    import openai

    if isinstance(error, openai.APIStatusError):
        return f"HTTP {error.status_code}: {error.message}"
    if isinstance(error, (TimeoutError, openai.APITimeoutError)):
        return "timed out"
    return f"{type(error).__name__}: {error}"


def worth_retrying(error: BaseException) -> bool:
    import openai

    if isinstance(error, openai.APIStatusError):
        return error.status_code in RETRYABLE_STATUS or error.status_code >= 500
    return isinstance(error, (openai.APIConnectionError, TimeoutError))


def retry_after(error: BaseException) -> float:
    """The wait a 429's Retry-After asks for, up to 60 s; 0 without one."""
    response = getattr(error, "response", None)
    asked = response.headers.get("retry-after") if response is not None else None
    try:
        return min(float(asked), 60.0) if asked else 0.0
    except ValueError:
        return 0.0


def bounded_http_client(timeout_seconds: float) -> Any:
    """An httpx client for the OpenAI SDK that reads at most MAX_REPLY_BYTES of any reply and follows
    no redirect (the key would go wherever a 3xx points)."""
    import httpx

    class BoundedStream(httpx.AsyncByteStream):
        def __init__(self, stream: Any):
            self.stream = stream

        async def __aiter__(self) -> Any:
            received = 0
            async for chunk in self.stream:
                received += len(chunk)
                if received > MAX_REPLY_BYTES:
                    raise httpx.ReadError(f"reply larger than {MAX_REPLY_BYTES // 2**20} MiB")
                yield chunk

        async def aclose(self) -> None:
            await self.stream.aclose()

    class BoundedTransport(httpx.AsyncHTTPTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await super().handle_async_request(request)
            return httpx.Response(response.status_code, headers=response.headers,
                                  stream=BoundedStream(response.stream), extensions=response.extensions)

    return httpx.AsyncClient(transport=BoundedTransport(), timeout=timeout_seconds, follow_redirects=False)


class ChatEndpoint:
    """`async with ChatEndpoint(...) as endpoint:` then check_reachable() and chat(); one event loop.

    `role` names the endpoint in messages ("judge", "teacher"); `unavailable` is the exception raised when it
    refuses us or stops answering. At most `concurrency` requests are in flight; each attempt has
    `timeout_seconds`, and a request is tried 1 + `max_retries` times with `retry`'s backoff."""

    def __init__(self, role: str, url: str, model: str, api_key: str, *, concurrency: int, timeout_seconds: float,
                 max_retries: int, retry: RetryPolicy, unavailable: type[Exception]):
        self.role, self.url, self.model, self.api_key = role, str(url), model, api_key
        self.concurrency, self.unavailable = concurrency, unavailable
        self.retry = retry.model_copy(update={"attempts": max_retries + 1, "deadline_seconds": None,
                                              "timeout_seconds": timeout_seconds})
        self.requests = 0  # logical requests (a chat request, or the reachability check)
        self.attempts = 0  # HTTP attempts, retries included
        self.retries = 0
        self._client: Any = None
        self._slots: asyncio.Semaphore | None = None

    @property
    def name(self) -> str:
        return f"{self.role} {self.url} (model {self.model})"

    async def __aenter__(self) -> Any:
        # The SDK's first import and client take ~0.5 s of CPU: in a thread, not on the operator's event loop.
        self._client = await asyncio.to_thread(self._new_client)
        self._slots = asyncio.Semaphore(self.concurrency)
        return self

    def _new_client(self) -> Any:
        from openai import AsyncOpenAI

        timeout = self.retry.timeout_seconds
        client = AsyncOpenAI(base_url=self.url, api_key=self.api_key, timeout=timeout, max_retries=0,
                             http_client=bounded_http_client(timeout))
        client.chat.completions, client.models  # noqa: B018  (loads their modules here, not on the loop)
        return client

    async def __aexit__(self, *exc_info: object) -> None:
        await self._client.close()

    async def call(self, what: str, request: Callable[[], Awaitable[T]]) -> T:
        """One logical request with retries (a 429's Retry-After is waited at least); `unavailable` when they
        run out or the endpoint refuses us, RequestRejected when it refuses only this request."""
        import openai

        self.requests += 1

        async def attempt() -> T:
            self.attempts += 1
            async with self._slots, asyncio.timeout(self.retry.timeout_seconds):
                return await request()

        def on_retry(state: RetryCallState) -> None:
            self.retries += 1
            log.warning("%s %s: %s (attempt %d of %d); retrying in %.2fs", self.role, what,
                        describe_error(state.outcome.exception()), state.attempt_number, self.retry.attempts,
                        state.upcoming_sleep)

        try:
            return await async_retrying(self.retry, worth_retrying, on_retry=on_retry, floor=retry_after)(attempt)
        except openai.APIStatusError as error:
            if error.status_code in FATAL_STATUS:
                raise self.unavailable(f"{self.name} {FATAL_STATUS[error.status_code]}: "
                                       f"{describe_error(error)}") from None
            if not worth_retrying(error):
                raise RequestRejected(describe_error(error)) from None
            last_error: BaseException = error
        except (openai.APIConnectionError, TimeoutError) as error:
            last_error = error
        raise self.unavailable(f"{self.name} did not answer {what} after {self.retry.attempts} attempt(s): "
                               f"{describe_error(last_error)}")

    async def check_reachable(self) -> None:
        """Fail before any work is spent when the endpoint is down; warn when it lists other models."""
        try:
            page = await self.call("GET /models", lambda: self._client.models.list())
        except RequestRejected as error:  # some OpenAI-compatible gateways do not implement /models
            log.info("%s %s has no usable /models (%s); skipping the model check", self.role, self.url, error)
            return
        served = [model.id for model in getattr(page, "data", None) or []]
        if served and self.model not in served:
            log.warning("%s %s lists models %s, not %s", self.role, self.url, ", ".join(served), self.model)

    async def chat(self, what: str, messages: list[dict[str, str]], *, temperature: float,
                   max_tokens: int) -> tuple[str, str | None]:
        """The reply's text and finish_reason; RequestRejected or `unavailable` as call() says."""
        async def request() -> Any:
            return await self._client.chat.completions.create(
                model=self.model, messages=messages, temperature=temperature, max_tokens=max_tokens)

        response = await self.call(what, request)
        choices = getattr(response, "choices", None) or []
        message = getattr(choices[0], "message", None) if choices else None
        finish_reason = getattr(choices[0], "finish_reason", None) if choices else None
        return getattr(message, "content", None) or "", finish_reason
