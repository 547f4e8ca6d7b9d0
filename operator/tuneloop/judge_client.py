"""A client for an LLM judge behind any OpenAI-compatible endpoint (`POST {url}/chat/completions`), e.g. vLLM.

Shared by the evaluator (judged evaluation of a candidate adapter) and the operator (the judge score
of a ModelDeployment's analysis), so it depends on nothing but `tuneloop.api` and the `openai` SDK.

The prompts follow MLflow's GenAI judges (mlflow.genai.judges.prompts): inputs in XML-like tags,
a rubric, the rationale asked before the verdict, and "only the following JSON format, no
markdown"; replies are read as MLflow reads them, tolerating a ```json fence around the object.
We do not call mlflow.genai itself because:
  - it reaches models through LiteLLM or an MLflow gateway, provider URIs and all; an air-gapped
    cluster has one in-cluster vLLM and the image should need only an HTTP client;
  - we need the request discipline under our control: a bounded number in flight (the judge is
    a shared GPU), a per-request deadline, retries with backoff that a test can count, and a hard
    JudgeUnavailable instead of an evaluation that quietly scores nothing;
  - pairwise judging asked in both orders (to cancel position bias) is not one of its judges.

Client: the `openai` SDK (AsyncOpenAI), the reference client of the API vLLM imitates: it owns
URL joining, bearer auth and error bodies, and its typed errors (APIConnectionError,
APITimeoutError, APIStatusError with status_code) are exactly the distinctions the retry policy
needs. Its own retries are off (max_retries=0) so every attempt goes through our retry policy
(tuneloop.retry).

Unparseable judgments are never passes: callers leave them out of their scores. Each carries why it
could not be read (`Unreadable`), and each Judge counts them:
  malformed  no readable score or verdict in the reply;
  refusal    the model declined to judge (REFUSAL_MARKERS near the start of the reply);
  ramble     cut at the token limit (finish_reason "length") or longer than RAMBLE_CHARS, with no verdict;
  rejected   the endpoint refused the request (a 4xx retrying cannot fix, e.g. 400 context too long).
Reading stays tolerant: a verdict readable anywhere in a long or cut reply counts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from tenacity import RetryCallState

from tuneloop.api.evaluation import JudgeSpec
from tuneloop.retry import JUDGE, RetryPolicy, async_retrying

log = logging.getLogger("tuneloop.judge")
T = TypeVar("T")

MIN_SCORE, MAX_SCORE = 1, 10
RETRYABLE_STATUS = (408, 409, 429)  # and every 5xx
# A judgment is a sentence or two of JSON; a reply without a verdict past this many characters rambled
# even when the server does not say it hit the token limit.
RAMBLE_CHARS = 2048
# Lower-case openings of a refusal to judge, looked for in the first REFUSAL_WINDOW characters.
REFUSAL_MARKERS = ("i can't", "i cannot", "i can not", "i won't", "i will not", "i am unable", "i'm unable",
                   "as an ai", "i'm sorry, but", "i am sorry, but")
REFUSAL_WINDOW = 200
FATAL_STATUS = {401: "rejected the API key", 403: "refused access", 404: "does not serve that model or path"}

DEFAULT_RUBRIC = (
    "A good answer is correct and faithful to the reference answer: it contains the same facts, values "
    "and decisions, in the form the question asks for, and adds nothing that contradicts the reference. "
    "Wording may differ; missing, wrong or invented content may not.")

SYSTEM_PROMPT = (
    "You are an expert judge tasked with evaluating the answers of an AI assistant to a question. "
    "You are given the question, a reference answer written by a person, and the criteria to apply.")

POINTWISE_PROMPT = """\
Consider the following question, reference answer and answer. Rate how well the answer meets the criteria. \
Do not make assumptions or bring in external knowledge.

<question>{question}</question>
<reference>{reference}</reference>
<answer>{answer}</answer>

<criteria>{rubric}</criteria>

Rate the answer from 1 (wrong or useless) to 10 (fully meets the criteria) using only the following json \
format. Do not use any markdown formatting or output additional lines.
{{
  "rationale": "Reason for the score, in one or two sentences.",
  "score": <integer from 1 to 10>
}}"""

PAIRWISE_PROMPT = """\
Consider the following question, reference answer and two answers, A and B. Decide which answer meets the \
criteria better. The order of the answers says nothing about their quality. Do not make assumptions or bring \
in external knowledge.

<question>{question}</question>
<reference>{reference}</reference>
<answer_a>{answer_a}</answer_a>
<answer_b>{answer_b}</answer_b>

<criteria>{rubric}</criteria>

Answer using only the following json format. Do not use any markdown formatting or output additional lines.
{{
  "rationale": "Reason for the verdict, in one or two sentences.",
  "winner": "A|B|tie"
}}"""


class JudgeUnavailable(RuntimeError):
    """The judge could not be reached or refused the work; nothing judged may pass without it."""


class RequestRejected(RuntimeError):
    """The endpoint answered this one request with a status that retrying cannot fix (e.g. 400)."""


Unreadable = Literal["malformed", "refusal", "ramble", "rejected"]
UNREADABLE: tuple[Unreadable, ...] = ("malformed", "refusal", "ramble", "rejected")


@dataclass
class PointJudgment:
    score: int | None  # None: the reply could not be read (or the request was rejected)
    rationale: str = ""
    unreadable: Unreadable | None = None  # why score is None


@dataclass
class WinnerJudgment:
    winner: str | None  # "A", "B" or "tie"; None: the reply could not be read (or the request was rejected)
    rationale: str = ""
    unreadable: Unreadable | None = None  # why winner is None


def unreadable_reason(reply: str, finish_reason: str | None) -> Unreadable:
    """Why a reply without a readable verdict is unreadable: refusal, ramble or malformed."""
    opening = reply.lstrip()[:REFUSAL_WINDOW].casefold().replace("\u2019", "'")
    if any(marker in opening for marker in REFUSAL_MARKERS):
        return "refusal"
    if finish_reason == "length" or len(reply) > RAMBLE_CHARS:
        return "ramble"
    return "malformed"


# --- reading replies ---

_FENCED = re.compile(r"```[\w-]*\s*(.*?)\s*```", re.DOTALL)
_SCORE_TEXT = re.compile(r"\b(?:score|rating)\b(?:\s+(?:is|of))?\W{0,4}(\d+(?:\.\d+)?)", re.IGNORECASE)
_WINNER_TEXT = re.compile(r"\bwinner\b\W{0,4}(answer[ _]?a|answer[ _]?b|a|b|tie)\b", re.IGNORECASE)
_WINNER_BRACKETS = re.compile(r"\[\[(A|B|C|tie)\]\]", re.IGNORECASE)
_WINNER_WORDS = {"a": "A", "answer a": "A", "answer_a": "A", "answera": "A",
                 "b": "B", "answer b": "B", "answer_b": "B", "answerb": "B",
                 "tie": "tie", "c": "tie", "draw": "tie", "equal": "tie", "both": "tie"}


def _json_object(reply: str) -> dict[str, Any] | None:
    """The reply's JSON object: the whole reply, a fenced block, or the outermost {...} span."""
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


def _rationale(obj: dict[str, Any] | None) -> str:
    if not obj:
        return ""
    text = obj.get("rationale", obj.get("reason", obj.get("explanation", "")))
    return str(text).replace("Let's think step by step. ", "").strip()


def _as_score(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, (int, float)) and float(value).is_integer() and MIN_SCORE <= value <= MAX_SCORE:
        return int(value)
    return None


def _read_score(reply: str) -> tuple[int | None, str]:
    obj = _json_object(reply)
    if obj is not None:
        for key in ("score", "rating", "result"):
            if key in obj:
                return _as_score(obj[key]), _rationale(obj)
        return None, _rationale(obj)
    matches = _SCORE_TEXT.findall(reply)
    return (_as_score(matches[-1]) if matches else None), reply.strip()[:500]


def parse_score(reply: str, finish_reason: str | None = None) -> PointJudgment:
    """A 1-10 integer score; anything else (out of range, fractional, absent) is unreadable, with why."""
    score, rationale = _read_score(reply)
    return PointJudgment(score, rationale, None if score is not None else unreadable_reason(reply, finish_reason))


def _read_winner(reply: str) -> tuple[str | None, str]:
    obj = _json_object(reply)
    if obj is not None:
        raw = obj.get("winner", obj.get("result", obj.get("verdict")))
        return (_WINNER_WORDS.get(str(raw).strip().casefold()) if raw is not None else None), _rationale(obj)
    bare = _WINNER_WORDS.get(reply.strip().strip(".").casefold())
    if bare is not None:
        return bare, ""
    matches = _WINNER_TEXT.findall(reply) or _WINNER_BRACKETS.findall(reply)
    return (_WINNER_WORDS.get(matches[-1].strip().casefold()) if matches else None), reply.strip()[:500]


def parse_winner(reply: str, finish_reason: str | None = None) -> WinnerJudgment:
    """"A", "B" or "tie"; anything else is unreadable, with why."""
    winner, rationale = _read_winner(reply)
    return WinnerJudgment(winner, rationale, None if winner is not None else unreadable_reason(reply, finish_reason))


# --- talking to the endpoint ---

def _describe(error: BaseException) -> str:
    import openai

    if isinstance(error, openai.APIStatusError):
        return f"HTTP {error.status_code}: {error.message}"
    if isinstance(error, (TimeoutError, openai.APITimeoutError)):
        return "timed out"
    return f"{type(error).__name__}: {error}"


def _worth_retrying(error: BaseException) -> bool:
    import openai

    if isinstance(error, openai.APIStatusError):
        return error.status_code in RETRYABLE_STATUS or error.status_code >= 500
    return isinstance(error, (openai.APIConnectionError, TimeoutError))


def _retry_after(error: BaseException) -> float:
    """The wait a 429's Retry-After asks for, up to 60 s; 0 without one."""
    response = getattr(error, "response", None)
    retry_after = response.headers.get("retry-after") if response is not None else None
    try:
        return min(float(retry_after), 60.0) if retry_after else 0.0
    except ValueError:
        return 0.0


# A judgment is at most judge.maxTokens tokens of JSON: a reply past this is an attack or a bug, and reading
# it whole would hold the process's memory hostage (the operator judges rollouts in its own process).
MAX_REPLY_BYTES = 1 * 2**20


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


class Judge:
    """`async with Judge(spec, key) as judge:` then check_reachable(), score(), winner(); one event loop."""

    def __init__(self, spec: JudgeSpec, api_key: str, *, retry: RetryPolicy = JUDGE):
        """`retry`'s backoff between attempts; the spec's maxRetries and timeoutSeconds set the rest, and its
        maxTokens the token limit of each reply (a reply cut there without a verdict is a ramble)."""
        self.spec = spec
        self.api_key = api_key
        self.max_tokens = spec.max_tokens
        self.retry = retry.model_copy(update={"attempts": spec.max_retries + 1, "deadline_seconds": None,
                                              "timeout_seconds": spec.timeout_seconds})
        self.requests = 0  # logical requests (a judgment, or the reachability check)
        self.attempts = 0  # HTTP attempts, retries included
        self.retries = 0
        self.unreadable: Counter[Unreadable] = Counter()  # judgments that could not be read, by why
        self._client: Any = None
        self._slots: asyncio.Semaphore | None = None

    async def __aenter__(self) -> Judge:
        # The SDK's first import and client take ~0.5 s of CPU: in a thread, not on the operator's event loop.
        self._client = await asyncio.to_thread(self._new_client)
        self._slots = asyncio.Semaphore(self.spec.concurrency)
        return self

    def _new_client(self) -> Any:
        from openai import AsyncOpenAI

        client = AsyncOpenAI(base_url=self.spec.url, api_key=self.api_key, timeout=self.spec.timeout_seconds,
                             max_retries=0, http_client=bounded_http_client(self.spec.timeout_seconds))
        client.chat.completions, client.models  # noqa: B018  (loads their modules here, not on the loop)
        return client

    async def __aexit__(self, *exc_info: object) -> None:
        await self._client.close()

    async def _call(self, what: str, request: Callable[[], Awaitable[T]]) -> T:
        """One logical request with retries (a 429's Retry-After is waited at least); JudgeUnavailable when
        they run out or the endpoint refuses us."""
        import openai

        self.requests += 1

        async def attempt() -> T:
            self.attempts += 1
            async with self._slots, asyncio.timeout(self.retry.timeout_seconds):
                return await request()

        def on_retry(state: RetryCallState) -> None:
            self.retries += 1
            log.warning("judge %s: %s (attempt %d of %d); retrying in %.2fs", what,
                        _describe(state.outcome.exception()), state.attempt_number, self.retry.attempts,
                        state.upcoming_sleep)

        try:
            return await async_retrying(self.retry, _worth_retrying, on_retry=on_retry, floor=_retry_after)(attempt)
        except openai.APIStatusError as error:
            if error.status_code in FATAL_STATUS:
                raise JudgeUnavailable(
                    f"judge {self.spec.url} (model {self.spec.model}) {FATAL_STATUS[error.status_code]}: "
                    f"{_describe(error)}") from None
            if not _worth_retrying(error):
                raise RequestRejected(_describe(error)) from None
            last_error: BaseException = error
        except (openai.APIConnectionError, TimeoutError) as error:
            last_error = error
        raise JudgeUnavailable(f"judge {self.spec.url} (model {self.spec.model}) did not answer {what} after "
                               f"{self.retry.attempts} attempt(s): {_describe(last_error)}")

    async def check_reachable(self) -> None:
        """Fail before any GPU time is spent when the endpoint is down; warn when it lists other models."""
        try:
            page = await self._call("GET /models", lambda: self._client.models.list())
        except RequestRejected as error:  # some OpenAI-compatible gateways do not implement /models
            log.info("judge %s has no usable /models (%s); skipping the model check", self.spec.url, error)
            return
        served = [model.id for model in getattr(page, "data", None) or []]
        if served and self.spec.model not in served:
            log.warning("judge %s lists models %s, not %s", self.spec.url, ", ".join(served), self.spec.model)

    @property
    def rejected(self) -> int:
        return self.unreadable["rejected"]

    async def _ask(self, what: str, prompt: str) -> tuple[str, str | None] | None:
        """The judge's reply text and finish_reason; None when the endpoint rejected this request."""
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]

        async def request() -> Any:
            return await self._client.chat.completions.create(
                model=self.spec.model, messages=messages, temperature=0, max_tokens=self.max_tokens)

        try:
            response = await self._call(what, request)
        except RequestRejected as error:
            log.warning("judge rejected %s: %s", what, error)
            return None
        choices = getattr(response, "choices", None) or []
        message = getattr(choices[0], "message", None) if choices else None
        finish_reason = getattr(choices[0], "finish_reason", None) if choices else None
        return getattr(message, "content", None) or "", finish_reason

    def _counted(self, what: str, judgment: PointJudgment | WinnerJudgment) -> Any:
        if judgment.unreadable is not None:
            self.unreadable[judgment.unreadable] += 1
            log.debug("judge %s: unreadable (%s): %.200r", what, judgment.unreadable, judgment.rationale)
        return judgment

    @property
    def rubric(self) -> str:
        return self.spec.rubric or DEFAULT_RUBRIC

    async def score(self, question: str, reference: str, answer: str, what: str) -> PointJudgment:
        """The pointwise 1-10 score of one answer; score None when unreadable or rejected."""
        prompt = POINTWISE_PROMPT.format(question=question, reference=reference, answer=answer, rubric=self.rubric)
        reply = await self._ask(what, prompt)
        judgment = parse_score(*reply) if reply is not None else PointJudgment(None, "request rejected", "rejected")
        return self._counted(what, judgment)

    async def winner(self, question: str, reference: str, answer_a: str, answer_b: str,
                     what: str) -> WinnerJudgment:
        """"A", "B" or "tie" (winner None when unreadable or rejected, with why), and the rationale."""
        prompt = PAIRWISE_PROMPT.format(question=question, reference=reference, answer_a=answer_a,
                                        answer_b=answer_b, rubric=self.rubric)
        reply = await self._ask(what, prompt)
        judgment = parse_winner(*reply) if reply is not None else WinnerJudgment(None, "request rejected", "rejected")
        return self._counted(what, judgment)

    def check_rejections(self) -> None:
        """More than half the requests rejected: the judge is not doing the job, whatever it answered."""
        if self.requests and self.rejected * 2 > self.requests:
            raise JudgeUnavailable(f"judge {self.spec.url} (model {self.spec.model}) rejected {self.rejected} "
                                   f"of {self.requests} requests")
