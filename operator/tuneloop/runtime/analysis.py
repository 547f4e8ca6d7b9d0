"""The analysis of a ModelDeployment colour before (or after) it takes the traffic: real chat
completions against its vLLM OpenAI API, the smoke prompts' answers checked against their
expectations, latency and errors against the thresholds, and (minJudgeScore) the answers scored by
the LLM judge through the shared judge client.

The preview is asked through httpx directly rather than the openai SDK because each request must be exactly
one HTTP exchange whose failure we classify ourselves (a 200 without choices[0].message.content counts
as an error just like a 500), with no retries or parsing of the SDK's in between.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
from collections import Counter
from dataclasses import dataclass

import httpx

from tuneloop.api.fields import linear_pattern
from tuneloop.api.evaluation import JudgeSpec
from tuneloop.api.modeldeployment import AnalysisSpec, Expectation
from tuneloop.judge_client import Judge, JudgeUnavailable
from tuneloop.reconcile.modeldeployment import AnalysisResult
from tuneloop.retry import JUDGE, RetryPolicy
from tuneloop.runtime.bounded_read import read_at_most

DEFAULT_PROMPT = "Reply with the single word OK."
NO_REFERENCE = "(none given)"
ANSWER_CHARS = 120
PROMPT_CHARS = 60
ERROR_KINDS_SHOWN = 3
# An answer is at most spec.maxTokens tokens (a few bytes each): a larger reply is an attack or a bug.
MAX_REPLY_BYTES = 4 * 2**20


class RequestFailed(Exception):
    """One request to the preview failed; the message says how (connection, timeout, status, body)."""


@dataclass
class Outcome:
    question: int  # index of the prompt sent
    latency_ms: float | None = None  # None: the request failed
    answer: str | None = None
    error: str | None = None


def _quote(text: str, limit: int = ANSWER_CHARS) -> str:
    """The text in double quotes on one line, cut to `limit` characters."""
    return json.dumps(text if len(text) <= limit else text[:limit - 1] + "…", ensure_ascii=False)


def p95(latencies_ms: list[float]) -> float | None:
    """Nearest-rank 95th percentile: the smallest observed latency that at least 95% of them do not exceed."""
    if not latencies_ms:
        return None
    return sorted(latencies_ms)[math.ceil(0.95 * len(latencies_ms)) - 1]


def _error_message(text: str) -> str:
    """The message of an error reply (OpenAI's {"error": {"message"}} or vLLM's {"message"}), else its text."""
    try:
        body = json.loads(text)
        message = body.get("error", body).get("message") or text
    except (ValueError, AttributeError, RecursionError):
        message = text
    message = " ".join(str(message).split())
    return message if len(message) <= 80 else message[:79] + "…"


def _content(text: str) -> str:
    try:
        content = json.loads(text)["choices"][0]["message"]["content"]
    except (ValueError, LookupError, TypeError, RecursionError):
        content = None
    if not isinstance(content, str):
        raise RequestFailed(f"reply without choices[0].message.content: {_quote(text, 80)}")
    return content


async def _complete(client: httpx.AsyncClient, url: str, body: dict, timeout_seconds: float) -> str:
    """The answer's content; RequestFailed on a failed, slow, oversized or unreadable reply. The server
    runs the tenant's image: nothing it sends is trusted, and at most MAX_REPLY_BYTES of it is read."""
    try:
        async with asyncio.timeout(timeout_seconds), client.stream("POST", url, json=body) as response:
            raw = await read_at_most(response, MAX_REPLY_BYTES)
            if len(raw) > MAX_REPLY_BYTES:
                raise RequestFailed(f"reply larger than {MAX_REPLY_BYTES // 2**20} MiB")
            text = raw.decode("utf-8", errors="replace")
    except (TimeoutError, httpx.TimeoutException):
        raise RequestFailed(f"timed out after {timeout_seconds:g} s") from None
    except httpx.HTTPError as error:
        raise RequestFailed(f"connection failed: {str(error) or type(error).__name__}") from None
    if not 200 <= response.status_code < 300:
        raise RequestFailed(f"HTTP {response.status_code}: {_error_message(text)}")
    return _content(text)


async def _send_all(spec: AnalysisSpec, base_url: str, model: str, questions: list[str]) -> list[Outcome]:
    """max(requests, len(questions)) requests cycling through the questions, spec.concurrency in flight."""
    url = f"{base_url.rstrip('/')}/v1/chat/completions"
    slots = asyncio.Semaphore(spec.concurrency)

    async def one(client: httpx.AsyncClient, index: int) -> Outcome:
        question = index % len(questions)
        body = {"model": model, "messages": [{"role": "user", "content": questions[question]}],
                "temperature": 0, "max_tokens": spec.max_tokens}
        async with slots:
            started = time.perf_counter()
            try:
                answer = await _complete(client, url, body, spec.timeout_seconds)
            except RequestFailed as error:
                return Outcome(question, error=str(error))
            return Outcome(question, (time.perf_counter() - started) * 1000, answer)

    # No redirects: a 3xx is an answer of the preview's, counted as a failed request.
    async with httpx.AsyncClient(timeout=spec.timeout_seconds, follow_redirects=False) as client:
        return await asyncio.gather(*(one(client, index)
                                      for index in range(max(spec.requests, len(questions)))))


def _errors(outcomes: list[Outcome]) -> str:
    """'5 of 20 requests failed: 4× HTTP 500 ..., 1× timed out after 2 s'."""
    kinds = Counter(outcome.error for outcome in outcomes if outcome.error)
    shown = ", ".join(f"{count}× {error}" for error, count in kinds.most_common(ERROR_KINDS_SHOWN))
    more = ", ..." if len(kinds) > ERROR_KINDS_SHOWN else ""
    return f"{kinds.total()} of {len(outcomes)} requests failed: {shown}{more}"


def _misses(expect: Expectation, answer: str) -> str | None:
    """How the answer misses the expectation; None when it meets it."""
    if expect.contains is not None:
        return None if expect.contains in answer else f"does not contain {_quote(expect.contains)}"
    if expect.regex is not None:
        # RE2: linear in the answer's length, whatever the pattern (this runs on the event loop).
        return None if linear_pattern(expect.regex).search(answer) else f"does not match /{expect.regex}/"
    try:
        json.loads(answer)
        parses = True
    except (ValueError, RecursionError):
        parses = False
    if parses == expect.json_valid:
        return None
    return "is not JSON" if expect.json_valid else "is JSON"


def _smoke_failures(spec: AnalysisSpec, outcomes: list[Outcome], answers: dict[int, str]) -> list[str]:
    failures = []
    for index, smoke in enumerate(spec.smoke_prompts):
        which = f"smoke prompt {index + 1} ({_quote(smoke.prompt, PROMPT_CHARS)})"
        if index not in answers:
            last = [outcome.error for outcome in outcomes if outcome.question == index][-1]
            failures.append(f"{which}: never answered ({last})")
        elif (miss := _misses(smoke.expect, answers[index])) is not None:
            failures.append(f"{which}: answer {_quote(answers[index])} {miss}")
    return failures


async def _judge_score(judge_spec: JudgeSpec, api_key: str, items: list[tuple[str, str, str]],
                       retry: RetryPolicy) -> float | None:
    """Mean of the readable 1-10 scores of (question, reference, answer); None when none was readable.
    Raises JudgeUnavailable when the judge cannot be reached or refuses the work."""
    async with Judge(judge_spec, api_key, retry=retry) as judge:
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(judge.score(question, reference, answer, f"smoke prompt {number}"))
                         for number, (question, reference, answer) in enumerate(items, 1)]
        except* JudgeUnavailable as errors:
            raise errors.exceptions[0] from None
        judge.check_rejections()
    scores = [task.result().score for task in tasks if task.result().score is not None]
    return statistics.fmean(scores) if scores else None


async def analyse(spec: AnalysisSpec, base_url: str, model: str, run_id: str,
                  judge_api_key: str | None = None, judge_retry: RetryPolicy = JUDGE) -> AnalysisResult:
    """Run the analysis against the OpenAI API at base_url (`{base_url}/v1/chat/completions`) serving
    `model`; the judge's backoff follows `judge_retry`. Never raises for what the preview or the judge
    do: they give a failed result whose reason lists every failed check; a passed result's reason is a
    one-line summary."""
    questions = [smoke.prompt for smoke in spec.smoke_prompts] or [DEFAULT_PROMPT]
    outcomes = await _send_all(spec, base_url, model, questions)
    error_rate = sum(outcome.error is not None for outcome in outcomes) / len(outcomes)
    latency = p95([outcome.latency_ms for outcome in outcomes if outcome.latency_ms is not None])
    if latency is None:
        return AnalysisResult(run_id, False, f"preview {base_url} unreachable or failing: {_errors(outcomes)}",
                              error_rate=error_rate)

    answers: dict[int, str] = {}
    for outcome in outcomes:
        if outcome.answer is not None:
            answers.setdefault(outcome.question, outcome.answer)
    failures = _smoke_failures(spec, outcomes, answers)
    if spec.max_p95_latency_ms is not None and latency > spec.max_p95_latency_ms:
        failures.append(f"p95 latency {latency:.0f} ms > {spec.max_p95_latency_ms:g} ms")
    if error_rate > spec.max_error_rate:
        failures.append(f"error rate {error_rate:.3g} > {spec.max_error_rate:g} ({_errors(outcomes)})")

    score = None
    if spec.min_judge_score is not None:
        assert spec.judge is not None, "AnalysisSpec validation requires a judge with minJudgeScore"
        references = [smoke.reference or NO_REFERENCE for smoke in spec.smoke_prompts] or [NO_REFERENCE]
        items = [(questions[index], references[index], answer) for index, answer in sorted(answers.items())]
        try:
            score = await _judge_score(spec.judge, judge_api_key or "EMPTY", items, judge_retry)
        except JudgeUnavailable as error:
            failures.append(str(error))
        else:
            if score is None:
                failures.append(f"judge {spec.judge.url} (model {spec.judge.model}) gave no readable score "
                                f"for any of {len(items)} answers")
            elif score < spec.min_judge_score:
                failures.append(f"judge score {score:.3g} < {spec.min_judge_score:g}")

    if failures:
        reason = "; ".join(failures)
    else:
        reason = f"{len(outcomes)} requests, p95 {latency:.0f} ms, {error_rate * 100:.3g}% errors"
        reason += f", judge {score:.3g}" if score is not None else ""
    return AnalysisResult(run_id, not failures, reason, score, latency, error_rate)
