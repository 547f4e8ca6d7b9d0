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

Requests go through tuneloop.chat_endpoint (the `openai` SDK, bounded replies, tuneloop.retry's policy),
which the augment stage's teacher shares.

Unparseable judgments are never passes: callers leave them out of their scores. Each carries why it
could not be read (`Unreadable`), and each Judge counts them:
  malformed  no readable score or verdict in the reply;
  refusal    the model declined to judge (REFUSAL_MARKERS near the start of the reply);
  ramble     cut at the token limit (finish_reason "length") or longer than RAMBLE_CHARS, with no verdict;
  rejected   the endpoint refused the request (a 4xx retrying cannot fix, e.g. 400 context too long).
Reading stays tolerant: a verdict readable anywhere in a long or cut reply counts.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from tuneloop.api.evaluation import JudgeSpec
from tuneloop.chat_endpoint import ChatEndpoint, RequestRejected, json_object
from tuneloop.retry import JUDGE, RetryPolicy

log = logging.getLogger("tuneloop.judge")

MIN_SCORE, MAX_SCORE = 1, 10
# A judgment is a sentence or two of JSON; a reply without a verdict past this many characters rambled
# even when the server does not say it hit the token limit.
RAMBLE_CHARS = 2048
# Lower-case openings of a refusal to judge, looked for in the first REFUSAL_WINDOW characters.
REFUSAL_MARKERS = ("i can't", "i cannot", "i can not", "i won't", "i will not", "i am unable", "i'm unable",
                   "as an ai", "i'm sorry, but", "i am sorry, but")
REFUSAL_WINDOW = 200

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

_SCORE_TEXT = re.compile(r"\b(?:score|rating)\b(?:\s+(?:is|of))?\W{0,4}(\d+(?:\.\d+)?)", re.IGNORECASE)
_WINNER_TEXT = re.compile(r"\bwinner\b\W{0,4}(answer[ _]?a|answer[ _]?b|a|b|tie)\b", re.IGNORECASE)
_WINNER_BRACKETS = re.compile(r"\[\[(A|B|C|tie)\]\]", re.IGNORECASE)
_WINNER_WORDS = {"a": "A", "answer a": "A", "answer_a": "A", "answera": "A",
                 "b": "B", "answer b": "B", "answer_b": "B", "answerb": "B",
                 "tie": "tie", "c": "tie", "draw": "tie", "equal": "tie", "both": "tie"}


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
    obj = json_object(reply)
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
    obj = json_object(reply)
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

class Judge(ChatEndpoint):
    """`async with Judge(spec, key) as judge:` then check_reachable(), score(), winner(); one event loop."""

    def __init__(self, spec: JudgeSpec, api_key: str, *, retry: RetryPolicy = JUDGE):
        """`retry`'s backoff between attempts; the spec's maxRetries and timeoutSeconds set the rest, and its
        maxTokens the token limit of each reply (a reply cut there without a verdict is a ramble)."""
        super().__init__("judge", spec.url, spec.model, api_key, concurrency=spec.concurrency,
                         timeout_seconds=spec.timeout_seconds, max_retries=spec.max_retries, retry=retry,
                         unavailable=JudgeUnavailable)
        self.spec = spec
        self.max_tokens = spec.max_tokens
        self.unreadable: Counter[Unreadable] = Counter()  # judgments that could not be read, by why

    @property
    def rejected(self) -> int:
        return self.unreadable["rejected"]

    async def _ask(self, what: str, prompt: str, temperature: float) -> tuple[str, str | None] | None:
        """The judge's reply text and finish_reason; None when the endpoint rejected this request."""
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]

        try:
            return await self.chat(what, messages, temperature=temperature, max_tokens=self.max_tokens)
        except RequestRejected as error:
            log.warning("judge rejected %s: %s", what, error)
            return None

    def _counted(self, what: str, judgment: PointJudgment | WinnerJudgment) -> Any:
        if judgment.unreadable is not None:
            self.unreadable[judgment.unreadable] += 1
            log.debug("judge %s: unreadable (%s): %.200r", what, judgment.unreadable, judgment.rationale)
        return judgment

    @property
    def rubric(self) -> str:
        return self.spec.rubric or DEFAULT_RUBRIC

    async def score(self, question: str, reference: str, answer: str, what: str,
                    temperature: float = 0.0) -> PointJudgment:
        """The pointwise 1-10 score of one answer; score None when unreadable or rejected. `temperature` above
        0 for repeats that measure the judge's noise."""
        prompt = POINTWISE_PROMPT.format(question=question, reference=reference, answer=answer, rubric=self.rubric)
        reply = await self._ask(what, prompt, temperature)
        judgment = parse_score(*reply) if reply is not None else PointJudgment(None, "request rejected", "rejected")
        return self._counted(what, judgment)

    async def winner(self, question: str, reference: str, answer_a: str, answer_b: str,
                     what: str, temperature: float = 0.0) -> WinnerJudgment:
        """"A", "B" or "tie" (winner None when unreadable or rejected, with why), and the rationale."""
        prompt = PAIRWISE_PROMPT.format(question=question, reference=reference, answer_a=answer_a,
                                        answer_b=answer_b, rubric=self.rubric)
        reply = await self._ask(what, prompt, temperature)
        judgment = parse_winner(*reply) if reply is not None else WinnerJudgment(None, "request rejected", "rejected")
        return self._counted(what, judgment)

    def check_rejections(self) -> None:
        """More than half the requests rejected: the judge is not doing the job, whatever it answered."""
        if self.requests and self.rejected * 2 > self.requests:
            raise JudgeUnavailable(f"judge {self.spec.url} (model {self.spec.model}) rejected {self.rejected} "
                                   f"of {self.requests} requests")
