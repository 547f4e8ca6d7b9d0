"""The evaluator's LLM judge: pointwise scores of candidate and baseline answers, and pairwise
verdicts asked in both orders, through the shared client in `tuneloop.judge_client` (prompts,
reply parsing, retries, JudgeUnavailable are there, where the operator's analysis uses them too).

Unparseable judgments are never passes: they are left out of judgeScore and are not wins.

The judge is measured as well as asked (JudgeStats):
  - why replies could not be read (malformed, refusal, ramble, rejected; see tuneloop.judge_client);
  - self-agreement, its noise floor: the first judge.agreementSample test items are asked again (the
    candidate's pointwise score, and the candidate-first pairwise order); a repeat agrees when both asks
    are readable and the scores are within one point, or the verdicts the same. The first asks are at
    temperature 0, the repeats at judge.agreementTemperature: a deterministic server asked twice at 0
    answers the same whatever its noise, so repeats at 0 would measure nothing;
  - position bias: the share of pairwise items whose verdict flipped when the answers swapped places.
The gate relies on judge metrics only when the judge is trusted: self-agreement >= judge.minAgreement and
position flips <= judge.maxPositionFlips.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from tuneloop.api.evaluation import JudgeSpec, JudgeStats
from tuneloop.api.workloads import JUDGE_API_KEY_ENV
from tuneloop.judge_client import (
    SYSTEM_PROMPT, UNREADABLE, Judge, JudgeUnavailable, PointJudgment, Unreadable, WinnerJudgment, parse_score,
    parse_winner,
)
from tuneloop.retry import JUDGE, RetryPolicy

# The shared client's names stay importable from here: the evaluator's callers and tests use them.
__all__ = [
    "SYSTEM_PROMPT", "ItemJudgment", "JudgeItem", "JudgeNotConfigured", "JudgeRun", "JudgeUnavailable",
    "PairJudgment", "PointJudgment", "RepeatJudgment", "WinnerJudgment", "check_judge", "judge_answers",
    "parse_score", "parse_winner", "resolve_api_key", "summarise",
]

log = logging.getLogger("tuneloop_evaluator")


class JudgeNotConfigured(ValueError):
    """The spec names an API key that this run does not have."""


@dataclass
class JudgeItem:
    question: str
    reference: str
    candidate: str
    baseline: str


Verdict = Literal["win", "tie", "loss"]


@dataclass
class PairJudgment:
    """Candidate vs baseline, asked as (A=candidate, B=baseline) and (A=baseline, B=candidate)."""

    first: Verdict | None
    second: Verdict | None
    rationales: list[str] = field(default_factory=list)
    unreadable: list[Unreadable] = field(default_factory=list)  # why an order could not be read, one per order

    @property
    def unparseable(self) -> int:
        return (self.first is None) + (self.second is None)

    @property
    def verdict(self) -> Verdict | None:
        """Agreeing orders give their verdict; any disagreement is a tie; an unread order gives None."""
        if self.first is None or self.second is None:
            return None
        return self.first if self.first == self.second else "tie"

    @property
    def inconsistent(self) -> bool:
        return self.verdict == "tie" and self.first != self.second

    @property
    def win_value(self) -> float | None:
        return {"win": 1.0, "tie": 0.5, "loss": 0.0}.get(self.verdict) if self.verdict else None


@dataclass
class ItemJudgment:
    candidate: PointJudgment
    baseline: PointJudgment
    pair: PairJudgment | None = None


@dataclass
class RepeatJudgment:
    """A test item asked a second time: the candidate's pointwise score, and the candidate-first order."""

    index: int  # of the item in the judgments it repeats (the test items, which come first)
    candidate: PointJudgment
    first: WinnerJudgment | None = None  # None: pairwise judging is off

    def agreements(self, original: ItemJudgment) -> list[bool]:
        """Whether each repeated judgment agrees with the first ask; an unreadable one never does."""
        agree = [self.candidate.score is not None and original.candidate.score is not None
                 and abs(self.candidate.score - original.candidate.score) <= 1]
        if self.first is not None and original.pair is not None:
            again = _first_order(self.first.winner)
            agree.append(again is not None and again == original.pair.first)
        return agree


def resolve_api_key(spec: JudgeSpec, environ: Mapping[str, str] = os.environ) -> str:
    """The key from spec.apiKeyEnv (local runs) or TUNELOOP_JUDGE_API_KEY (the mounted apiKeySecret).

    No key configured at all: an endpoint without auth (vLLM without --api-key); the SDK still
    sends a bearer token, and "EMPTY" is what vLLM's documentation passes.
    """
    name = spec.api_key_env or JUDGE_API_KEY_ENV
    key = environ.get(name, "").strip()
    if key:
        return key
    if spec.api_key_env:
        raise JudgeNotConfigured(f"evaluation.judge.apiKeyEnv: environment variable {name} is not set or empty")
    if spec.api_key_secret:
        secret = spec.api_key_secret
        raise JudgeNotConfigured(f"evaluation.judge.apiKeySecret ({secret.name}, key {secret.key}) should be in "
                                 f"environment variable {name}, which is not set or empty")
    return "EMPTY"


def _first_order(winner: str | None) -> Verdict | None:
    return {"A": "win", "B": "loss", "tie": "tie"}.get(winner) if winner else None


def _second_order(winner: str | None) -> Verdict | None:
    return {"A": "loss", "B": "win", "tie": "tie"}.get(winner) if winner else None


async def compare(judge: Judge, item: JudgeItem, what: str) -> PairJudgment:
    first, second = await asyncio.gather(
        judge.winner(item.question, item.reference, item.candidate, item.baseline, f"{what} pairwise candidate-first"),
        judge.winner(item.question, item.reference, item.baseline, item.candidate, f"{what} pairwise baseline-first"))
    return PairJudgment(_first_order(first.winner), _second_order(second.winner), [first.rationale, second.rationale],
                        [order.unreadable for order in (first, second) if order.unreadable is not None])


async def repeat_item(judge: Judge, index: int, item: JudgeItem, what: str, pairwise: bool) -> RepeatJudgment:
    """The item asked again at judge.agreementTemperature, free to disagree with the first asks (at 0)."""
    temperature = judge.spec.agreement_temperature
    jobs = [judge.score(item.question, item.reference, item.candidate, f"{what} candidate, asked again",
                        temperature)]
    if pairwise:
        jobs.append(judge.winner(item.question, item.reference, item.candidate, item.baseline,
                                 f"{what} pairwise candidate-first, asked again", temperature))
    results = await asyncio.gather(*jobs)
    return RepeatJudgment(index, results[0], results[1] if pairwise else None)


async def judge_item(judge: Judge, item: JudgeItem, what: str, pairwise: bool) -> ItemJudgment:
    jobs = [judge.score(item.question, item.reference, item.candidate, f"{what} candidate"),
            judge.score(item.question, item.reference, item.baseline, f"{what} baseline")]
    if pairwise:
        jobs.append(compare(judge, item, what))
    results = await asyncio.gather(*jobs)
    return ItemJudgment(candidate=results[0], baseline=results[1], pair=results[2] if pairwise else None)


def _unread(judgment: PointJudgment | WinnerJudgment) -> list[Unreadable]:
    value = judgment.score if isinstance(judgment, PointJudgment) else judgment.winner
    return [judgment.unreadable or "malformed"] if value is None else []


UNREADABLE_FIELDS: dict[Unreadable, str] = {
    "malformed": "malformed", "refusal": "refusals", "ramble": "rambles", "rejected": "rejected"}


def summarise(spec: JudgeSpec, judgments: list[ItemJudgment], repeats: list[RepeatJudgment] = ()) -> JudgeStats:
    """Counts over every judgment asked, repeats included (judged = readable + every kind of unreadable);
    verdicts over `judgments`; self-agreement of `repeats` with the judgments they repeat."""
    stats = JudgeStats(configured=True, model=spec.model)
    why: list[Unreadable] = []
    pairs_read = 0
    for judgment in judgments:
        points = [judgment.candidate, judgment.baseline]
        stats.judged += len(points) + (2 if judgment.pair else 0)
        why += [reason for point in points for reason in _unread(point)]
        if judgment.pair is None:
            continue
        why += judgment.pair.unreadable
        verdict = judgment.pair.verdict
        pairs_read += verdict is not None
        stats.wins += verdict == "win"
        stats.losses += verdict == "loss"
        stats.ties += verdict == "tie"
        stats.inconsistent += judgment.pair.inconsistent
    agreements: list[bool] = []
    for repeat in repeats:
        asked = [repeat.candidate] + ([repeat.first] if repeat.first is not None else [])
        stats.judged += len(asked)
        why += [reason for judgment in asked for reason in _unread(judgment)]
        agreements += repeat.agreements(judgments[repeat.index])
    counts = Counter(why)
    for reason in UNREADABLE:
        setattr(stats, UNREADABLE_FIELDS[reason], counts[reason])
    stats.unparseable = len(why)
    stats.repeated = len(agreements)
    stats.self_agreement = sum(agreements) / len(agreements) if agreements else None
    stats.position_flips = stats.inconsistent / pairs_read if pairs_read else None
    reasons = [reason for reason in (_agreement_distrust(spec, stats, sum(agreements)),
                                     _position_distrust(spec, stats, pairs_read)) if reason]
    stats.trusted, stats.note = not reasons, "; ".join(reasons) or None
    return stats


def _agreement_distrust(spec: JudgeSpec, stats: JudgeStats, agreeing: int) -> str | None:
    """Why the judge's self-agreement does not let the gate rely on it; None when it does."""
    if not stats.repeated:
        cause = ("judge.agreementSample is 0" if spec.agreement_sample == 0 else "there were no test items to repeat")
        return f"self-agreement not measured ({cause}): judge metrics cannot be relied on"
    if stats.self_agreement >= spec.min_agreement:
        return None
    unread = stats.judged and stats.unparseable / stats.judged
    return (f"self-agreement {stats.self_agreement:.2f} ({agreeing} of "
            f"{stats.repeated} repeated judgments) is below judge.minAgreement {spec.min_agreement:g}; "
            f"{stats.unparseable} of {stats.judged} replies unreadable ({unread:.0%}: {stats.malformed} "
            f"malformed, {stats.refusals} refusals, {stats.rambles} rambles, {stats.rejected} rejected)")


def _position_distrust(spec: JudgeSpec, stats: JudgeStats, pairs_read: int) -> str | None:
    """Why the judge's position bias does not let the gate rely on it; None when it does (or no pair was read)."""
    if stats.position_flips is None or stats.position_flips <= spec.max_position_flips:
        return None
    return (f"position flips {stats.position_flips:.2f} ({stats.inconsistent} of {pairs_read} pairwise verdicts "
            f"changed when the answers swapped places) are above judge.maxPositionFlips {spec.max_position_flips:g}")


@dataclass
class JudgeRun:
    test: list[ItemJudgment]
    general: list[ItemJudgment]
    stats: JudgeStats
    repeats: list[RepeatJudgment] = field(default_factory=list)  # the self-agreement sample, asked again


def check_judge(spec: JudgeSpec, api_key: str, retry: RetryPolicy = JUDGE) -> None:
    """Blocking reachability check (before generation)."""
    async def check() -> None:
        async with Judge(spec, api_key, retry=retry) as judge:
            await judge.check_reachable()

    asyncio.run(check())


def judge_answers(spec: JudgeSpec, api_key: str, test: list[JudgeItem], general: list[JudgeItem],
                  retry: RetryPolicy = JUDGE) -> JudgeRun:
    """Blocking: pointwise scores for both sets, pairwise (if spec.pairwise) on the test set, and the first
    spec.agreementSample test items asked again to measure the judge's self-agreement."""
    async def judge_all() -> JudgeRun:
        async with Judge(spec, api_key, retry=retry) as judge:
            # One task group for both sets: the first JudgeUnavailable cancels everything in flight.
            try:
                async with asyncio.TaskGroup() as group:
                    tested = [group.create_task(judge_item(judge, item, f"test example {index + 1}", spec.pairwise))
                              for index, item in enumerate(test)]
                    wide = [group.create_task(judge_item(judge, item, f"general example {index + 1}", False))
                            for index, item in enumerate(general)]
                    again = [group.create_task(repeat_item(judge, index, item, f"test example {index + 1}",
                                                           spec.pairwise))
                             for index, item in enumerate(test[:spec.agreement_sample])]
            except* JudgeUnavailable as errors:
                raise errors.exceptions[0] from None
            judge.check_rejections()
            log.info("judge: %d requests, %d HTTP attempts, %d retries, unreadable: %s", judge.requests,
                     judge.attempts, judge.retries, dict(judge.unreadable) or "none")
        test_judgments = [task.result() for task in tested]
        general_judgments = [task.result() for task in wide]
        repeats = [task.result() for task in again]
        return JudgeRun(test=test_judgments, general=general_judgments, repeats=repeats,
                        stats=summarise(spec, test_judgments + general_judgments, repeats))

    return asyncio.run(judge_all())
