"""What a FineTuneJob cost, kept by the reconciler pass by pass (pure: no clock, no API).

Each stage has one ledger entry with an open interval: `state` says what the time since `since`
counts as (Queued, Running, or Stopped by the user, which counts as neither). When a pass sees
the stage's workload in another state, the interval is closed at the moment the runtime says the
change happened (a Job's startTime, a condition's lastTransitionTime), else at the pass's time,
and a new one opens. Totals hold closed intervals only, so a status written every pass does not
change every pass.

GPU-seconds held are the stage's GPUs times its running seconds: what the cluster reserved for it.
GPU-seconds used are its GPUs times the seconds its workload reports computing; the difference is
scheduling, image pulls, model loading before the workload's clock starts, and attempts that were
interrupted.
"""

from __future__ import annotations

from typing import Literal, get_args

from tuneloop.api.common import duration, parse_time
from tuneloop.api.finetunejob import CostStatus, FineTuneJobSpec, ImprovementCost, StageCost, StageName

LedgerState = Literal["Queued", "Running", "Stopped", "Done"]
STAGE_ORDER = get_args(StageName)


def stage_gpus(spec: FineTuneJobSpec, stage: str) -> int:
    """GPUs a stage's pods request, all nodes: the data check, augmentation and registration run on CPUs,
    the evaluation and the export on one GPU at most, training on all of them."""
    resources = spec.resources
    if stage == "train":
        return resources.gpus * resources.nodes
    if stage in ("evaluate", "export"):
        return min(resources.gpus, 1)
    return 0


def _seconds_between(start: str, end: str) -> float:
    return max((parse_time(end) - parse_time(start)).total_seconds(), 0.0)


def _entry(cost: CostStatus, stage: str, gpus: int) -> StageCost:
    for entry in cost.stages:
        if entry.stage == stage:
            return entry
    entry = StageCost(stage=stage, gpus=gpus, state="Done", since=None)
    cost.stages.append(entry)
    cost.stages.sort(key=lambda e: STAGE_ORDER.index(e.stage))
    return entry


def record(cost: CostStatus | None, stage: str, gpus: int, state: LedgerState, at: str,
           used_seconds: float | None = None) -> CostStatus:
    """The ledger after a pass saw `stage` in `state` since `at` (RFC 3339). A stage seen Done adds the
    GPU-seconds its workload used. Returns the same object, changed (a new one when there was none)."""
    cost = cost if cost is not None else CostStatus()
    entry = _entry(cost, stage, gpus)
    entry.gpus = gpus
    if entry.state != state or entry.since is None:
        if entry.since is not None and entry.state in ("Queued", "Running"):
            at = max(at, entry.since, key=parse_time)
            seconds = _seconds_between(entry.since, at)
            if entry.state == "Queued":
                entry.queued_seconds = round(entry.queued_seconds + seconds, 1)
            else:
                entry.running_seconds = round(entry.running_seconds + seconds, 1)
        if entry.state == "Running" and state in ("Queued", "Stopped"):
            entry.interruptions += 1
        if entry.state != "Done" or state != "Done":
            entry.state, entry.since = state, (None if state == "Done" else at)
    entry.gpu_seconds_requested = round(entry.gpus * entry.running_seconds, 1)
    if used_seconds is not None:
        entry.gpu_seconds_used = round(entry.gpus * used_seconds, 1)
    _totals(cost)
    return cost


def _totals(cost: CostStatus) -> None:
    cost.queued_seconds = round(sum(e.queued_seconds for e in cost.stages), 1)
    cost.running_seconds = round(sum(e.running_seconds for e in cost.stages), 1)
    cost.gpu_hours_requested = round(sum(e.gpu_seconds_requested for e in cost.stages) / 3600, 4)
    cost.gpu_hours_used = round(sum(e.gpu_seconds_used for e in cost.stages) / 3600, 4)
    if cost.cost_per_gpu_hour is not None:
        cost.cost = round(cost.cost_per_gpu_hour * cost.gpu_hours_requested, 2)
    cost.summary = summary(cost)


def price(cost: CostStatus, cost_per_gpu_hour: float | None, currency: str) -> None:
    """The operator's price, when it has one."""
    if cost_per_gpu_hour is not None:
        cost.cost_per_gpu_hour, cost.currency = cost_per_gpu_hour, currency
    _totals(cost)


def training_efficiency(cost: CostStatus, tokens_per_second: float | None, achieved_tflops: float | None,
                        mfu: float | None) -> None:
    cost.tokens_per_second = None if tokens_per_second is None else round(tokens_per_second, 1)
    cost.achieved_tflops = None if achieved_tflops is None else round(achieved_tflops, 3)
    cost.mfu = None if mfu is None else round(mfu, 4)
    _totals(cost)


def improvement(cost: CostStatus, metric: str, candidate: float, baseline: float) -> None:
    """What one point (x100) of the gate's primary metric cost; nothing per point without a gain."""
    points = round((candidate - baseline) * 100, 2)
    gained = points > 0
    per_gpu_hour = round(cost.gpu_hours_requested / points, 4) if gained and cost.gpu_hours_requested else None
    cost.improvement = ImprovementCost(
        metric=metric, points=points, gpu_hours_per_point=per_gpu_hour,
        running_hours_per_point=round(cost.running_seconds / 3600 / points, 4) if gained else None,
        cost_per_point=(round(cost.cost_per_gpu_hour * per_gpu_hour, 4)
                        if gained and cost.cost_per_gpu_hour is not None and per_gpu_hour is not None else None))
    _totals(cost)


def summary(cost: CostStatus) -> str:
    """'0.52 GPU-h held, 0.47 used; queued 4m10s, ran 31m05s; 0.017 GPU-h per exactMatch point; 1.30 USD';
    without GPUs (a CPU run): 'no GPU; queued 0s, ran 11m00s; 17s per exactMatch point'."""
    held = (f"{cost.gpu_hours_requested:.2f} GPU-h held, {cost.gpu_hours_used:.2f} used"
            if cost.gpu_hours_requested or cost.gpu_hours_used else "no GPU")
    parts = [held, f"queued {duration(cost.queued_seconds)}, ran {duration(cost.running_seconds)}"]
    gain = cost.improvement
    if gain is not None and gain.gpu_hours_per_point is not None:
        parts.append(f"{gain.gpu_hours_per_point:.3g} GPU-h per {gain.metric} point")
    elif gain is not None and gain.running_hours_per_point is not None:
        parts.append(f"{duration(gain.running_hours_per_point * 3600)} per {gain.metric} point")
    if cost.cost is not None:
        parts.append(f"{cost.cost:.2f} {cost.currency}")
    return "; ".join(parts)

