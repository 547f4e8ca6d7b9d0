"""The evaluator's LLM judge: pointwise scores of candidate and baseline answers, and pairwise
verdicts asked in both orders, through the shared client in `tuneloop.judge_client` (prompts,
reply parsing, retries, JudgeUnavailable are there, where the operator's analysis uses them too).

Unparseable judgments are never passes: they are left out of judgeScore and are not wins.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from tuneloop.api.evaluation import JudgeSpec, JudgeStats
from tuneloop.api.workloads import JUDGE_API_KEY_ENV
from tuneloop.judge_client import (
    SYSTEM_PROMPT, Judge, JudgeUnavailable, PointJudgment, parse_score, parse_winner,
)
from tuneloop.retry import JUDGE, RetryPolicy

# The shared client's names stay importable from here: the evaluator's callers and tests use them.
__all__ = [
    "SYSTEM_PROMPT", "ItemJudgment", "JudgeItem", "JudgeNotConfigured", "JudgeRun", "JudgeUnavailable",
    "PairJudgment", "PointJudgment", "check_judge", "judge_answers", "parse_score", "parse_winner",
    "resolve_api_key", "summarise",
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
    (first, why_first), (second, why_second) = await asyncio.gather(
        judge.winner(item.question, item.reference, item.candidate, item.baseline, f"{what} pairwise candidate-first"),
        judge.winner(item.question, item.reference, item.baseline, item.candidate, f"{what} pairwise baseline-first"))
    return PairJudgment(_first_order(first), _second_order(second), [why_first, why_second])


async def judge_item(judge: Judge, item: JudgeItem, what: str, pairwise: bool) -> ItemJudgment:
    jobs = [judge.score(item.question, item.reference, item.candidate, f"{what} candidate"),
            judge.score(item.question, item.reference, item.baseline, f"{what} baseline")]
    if pairwise:
        jobs.append(compare(judge, item, what))
    results = await asyncio.gather(*jobs)
    return ItemJudgment(candidate=results[0], baseline=results[1], pair=results[2] if pairwise else None)


def summarise(spec: JudgeSpec, judgments: list[ItemJudgment]) -> JudgeStats:
    stats = JudgeStats(configured=True, model=spec.model)
    for judgment in judgments:
        points = [judgment.candidate, judgment.baseline]
        stats.judged += len(points) + (2 if judgment.pair else 0)
        stats.unparseable += sum(point.score is None for point in points)
        if judgment.pair is None:
            continue
        stats.unparseable += judgment.pair.unparseable
        verdict = judgment.pair.verdict
        stats.wins += verdict == "win"
        stats.losses += verdict == "loss"
        stats.ties += verdict == "tie"
        stats.inconsistent += judgment.pair.inconsistent
    return stats


@dataclass
class JudgeRun:
    hold_out: list[ItemJudgment]
    general: list[ItemJudgment]
    stats: JudgeStats


def check_judge(spec: JudgeSpec, api_key: str, retry: RetryPolicy = JUDGE) -> None:
    """Blocking reachability check (before generation)."""
    async def check() -> None:
        async with Judge(spec, api_key, retry=retry) as judge:
            await judge.check_reachable()

    asyncio.run(check())


def judge_answers(spec: JudgeSpec, api_key: str, hold_out: list[JudgeItem], general: list[JudgeItem],
                  retry: RetryPolicy = JUDGE) -> JudgeRun:
    """Blocking: pointwise scores for both sets, pairwise (if spec.pairwise) on the hold-out set."""
    async def judge_all() -> JudgeRun:
        async with Judge(spec, api_key, retry=retry) as judge:
            # One task group for both sets: the first JudgeUnavailable cancels everything in flight.
            try:
                async with asyncio.TaskGroup() as group:
                    held = [group.create_task(judge_item(judge, item, f"hold-out example {index + 1}", spec.pairwise))
                            for index, item in enumerate(hold_out)]
                    wide = [group.create_task(judge_item(judge, item, f"general example {index + 1}", False))
                            for index, item in enumerate(general)]
            except* JudgeUnavailable as errors:
                raise errors.exceptions[0] from None
            judge.check_rejections()
            log.info("judge: %d requests, %d HTTP attempts, %d retries, %d rejected",
                     judge.requests, judge.attempts, judge.retries, judge.rejected)
        held_judgments = [task.result() for task in held]
        general_judgments = [task.result() for task in wide]
        return JudgeRun(hold_out=held_judgments, general=general_judgments,
                        stats=summarise(spec, held_judgments + general_judgments))

    return asyncio.run(judge_all())
