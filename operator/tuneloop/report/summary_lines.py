"""One-line plain-text summaries shared by the terminal report, the HTML page and the MLflow description,
so the three say the same thing in the same words. Callers escape them for their medium."""

from __future__ import annotations

from dataclasses import dataclass

from tuneloop.api.common import duration
from tuneloop.api.evaluation import Comparison, GateResult, JudgeStats, Score
from tuneloop.api.export import ExportResults
from tuneloop.api.finetunejob import (
    ContaminationStats,
    CostStatus,
    DatasetStats,
    ImprovementCost,
    PreferenceDataStats,
    QueueStatus,
)

CONTAMINATION_EXAMPLES = 3
JUDGE_METRICS = "judgeScore and judgeWinRate"


def split_sizes(dataset: DatasetStats) -> str:
    """'300 rows (alpaca): 240 train, 30 validation, 30 test', with '+ 40 synthetic' after train when a teacher
    wrote some (dataset.augment)."""
    synthetic = f" + {dataset.synthetic_rows} synthetic" if dataset.synthetic_rows else ""
    return (f"{dataset.rows} rows ({dataset.format}): {dataset.train_rows} train{synthetic}, "
            f"{dataset.validation_rows} validation, {dataset.test_rows} test")


def export_files(export: ExportResults) -> list[str]:
    """One line per exported file: kind (and GGUF type), size, sha256 prefix, where."""
    return [f"{exported.kind}{' ' + exported.gguf_type if exported.gguf_type else ''}: "
            f"{exported.bytes / 1e6:,.0f} MB, sha256 {exported.sha256[:16]}, {exported.uri}"
            for exported in export.files]


def preference_data(stats: PreferenceDataStats) -> str:
    """'44 pairs: 39 trained on, 5 held out; 3 near test or regression rows removed'"""
    rows = "pairs" if stats.format == "pairs" else "kto rows"
    text = f"{stats.rows} {rows}: {stats.train_rows} trained on, {stats.validation_rows} held out"
    if stats.desirable is not None:
        text += f"; {stats.desirable} desirable, {stats.rows - stats.desirable} not"
    if stats.contaminated:
        fate = "removed" if stats.removed == stats.contaminated else f"{stats.removed} removed"
        text += f"; {stats.contaminated} near test or regression rows, {fate}"
    return text


def contamination_examples(stats: ContaminationStats, limit: int = CONTAMINATION_EXAMPLES) -> list[str]:
    return list(stats.examples[:limit])


def judge(stats: JudgeStats) -> str:
    if not stats.configured:
        return "not configured (spec.evaluation.judge): gated on the other metrics"
    return stats.summary()


def judge_distrust(stats: JudgeStats) -> str | None:
    """Why the gate does not rely on the judge's metrics; None when it may (or there is no judge)."""
    if not stats.configured or stats.trusted:
        return None
    if stats.note:
        why = stats.note
    elif stats.self_agreement is None:
        why = "its self-agreement was not measured (judge.agreementSample is 0)"
    else:
        why = f"its self-agreement {stats.self_agreement:.2f} is below judge.minAgreement"
    return f"the gate does not rely on {JUDGE_METRICS}: {why}"


def headline_metric(comparison: Comparison, preferred: str) -> str | None:
    """The metric a one-line guardrail summary shows: the preferred one when measured, else the first."""
    if preferred in comparison.candidate:
        return preferred
    return next(iter(comparison.candidate), None)


def guardrail(comparison: Comparison, metric: str | None, baseline: str) -> str:
    """'exactMatch 0.700 [0.500, 0.850] vs champion 0.750 [0.550, 0.900], difference -0.050 [-0.150, +0.050]'"""
    if metric is None:
        return "no metric measured"
    candidate, base, difference = (comparison.candidate.get(metric), comparison.baseline.get(metric),
                                   comparison.difference.get(metric))
    text = f"{metric} {_interval(candidate)} vs {baseline} {_interval(base)}"
    return text + (f", difference {difference.interval(signed=True)}" if difference is not None else "")

LOST_ROWS = ("the candidate lost on the guardrail's metric: the champion passed and the candidate failed, or "
             "its score fell by more than the margin")


def regressed_count(count: int | None, examples: int) -> str:
    if count is None:
        return "not counted"
    rows = "row" if count == 1 else "rows"
    return f"{count} of {examples} {rows} regressed (lost on the guardrail's metric)"


@dataclass(frozen=True)
class GateLine:
    text: str  # 'ok: ...' or 'FAILED: ...', as the gate wrote it
    passed: bool
    deciding: bool


def gate_lines(gate: GateResult) -> list[GateLine]:
    """The gate's checks in order, the deciding one marked (the first failed, or the weakest passed)."""
    lines, marked = [], False
    for check in gate.checks:
        passed = check.startswith("ok:")
        test = check.split(": ", 1)[1] if ": " in check else check
        deciding = not marked and gate.deciding is not None and test == gate.deciding
        marked = marked or deciding
        lines.append(GateLine(text=check, passed=passed, deciding=deciding))
    return lines


def _interval(score: Score | None) -> str:
    return "-" if score is None else score.interval()


# --- cost: the block every report ends with; its first line is the status's summary (reconcile/cost.py) ---

def money(amount: float, currency: str | None) -> str:
    return f"{amount:,.2f} {currency or ''}".rstrip()


def cost_facts(cost: CostStatus | None, queue_status: QueueStatus | None, phase: str) -> list[tuple[str, str]]:
    """The cost block's labelled lines, in order: the status's summary, money, training efficiency, the
    price of a point of the gated metric, and the Kueue queue. The per-stage table comes with them."""
    facts = []
    if cost is not None:
        lines = (("total", cost.summary), ("money", spend(cost)), ("efficiency", efficiency(cost)),
                 ("per point", per_point(cost.improvement, cost.currency)))
        facts += [(label, text) for label, text in lines if text]
    if queue_status is not None:
        facts.append(("queue", queue(queue_status, phase)))
    return facts


STAGE_COST_COLUMNS = ("stage", "GPUs", "queued", "running", "GPU-h held", "GPU-h used", "interrupted")


def stage_cost_table(cost: CostStatus) -> list[tuple[str, ...]]:
    """Each stage's times and GPU-hours as table cells, the column names first."""
    return [STAGE_COST_COLUMNS, *((stage.stage, str(stage.gpus), duration(stage.queued_seconds),
                                   duration(stage.running_seconds), f"{stage.gpu_seconds_requested / 3600:.3f}",
                                   f"{stage.gpu_seconds_used / 3600:.3f}", str(stage.interruptions))
                                  for stage in cost.stages)]


def aligned(rows: list[tuple[str, ...]]) -> list[str]:
    """Plain-text table lines: each column as wide as its widest cell, two spaces between."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def efficiency(cost: CostStatus) -> str | None:
    """'1,520 tokens/s, 48.2 TFLOPS achieved, MFU 24.4%', or '... MFU: n/a on a CPU'; None before training."""
    if cost.tokens_per_second is None and cost.achieved_tflops is None:
        return None
    parts = []
    if cost.tokens_per_second is not None:
        parts.append(f"{cost.tokens_per_second:,.0f} tokens/s")
    if cost.achieved_tflops is not None:
        tflops = cost.achieved_tflops
        parts.append(f"{tflops:,.0f} TFLOPS achieved" if tflops >= 100 else f"{tflops:.3g} TFLOPS achieved")
    if cost.mfu is not None:
        parts.append(f"MFU {cost.mfu:.1%}")
    elif _trained_on_a_cpu(cost):
        parts.append("MFU: n/a on a CPU")
    else:
        parts.append("MFU: n/a (GPU peak unknown: set gpuPeakTflops in the operator config)")
    return ", ".join(parts)


def spend(cost: CostStatus) -> str | None:
    """'12.30 USD (6.00 USD per GPU-hour x 2.05 GPU-h held)'; None without costPerGpuHour."""
    if cost.cost is None or cost.cost_per_gpu_hour is None:
        return None
    return (f"{money(cost.cost, cost.currency)} ({money(cost.cost_per_gpu_hour, cost.currency)} per GPU-hour x "
            f"{cost.gpu_hours_requested:.2f} GPU-h held)")


def per_point(improvement: ImprovementCost | None, currency: str | None) -> str | None:
    """'+12.0 exactMatch points: 0.171 GPU-h, 5m10s running, 1.02 USD per point', or why there is no price."""
    if improvement is None:
        return None
    gained = f"{improvement.points:+.1f} {improvement.metric} points"
    if improvement.points <= 0:
        return f"{gained}: no gain, no price per point"
    prices = []
    if improvement.gpu_hours_per_point is not None:
        prices.append(f"{improvement.gpu_hours_per_point:.3g} GPU-h")
    if improvement.running_hours_per_point is not None:
        prices.append(f"{duration(improvement.running_hours_per_point * 3600)} running")
    if improvement.cost_per_point is not None:
        prices.append(money(improvement.cost_per_point, currency))
    return f"{gained}: {', '.join(prices)} per point" if prices else gained


def queue(status: QueueStatus, phase: str) -> str:
    """'team-a-gpus: admitted 3 times, preempted once', and while queued Kueue's reason and since when."""
    text = f"{status.name}: admitted {_times(status.admissions)}, preempted {_times(status.preemptions)}"
    if phase == "Queued" and status.state == "Queued":
        why = ": ".join(part for part in (status.reason, status.message) if part)
        text += f"; waiting since {status.since}" + (f" ({why})" if why else "")
    return text


def _times(count: int) -> str:
    return {0: "never", 1: "once", 2: "twice"}.get(count, f"{count} times")


def _trained_on_a_cpu(cost: CostStatus) -> bool:
    return any(stage.stage == "train" and stage.gpus == 0 for stage in cost.stages)
