"""One-line plain-text summaries shared by the terminal report, the HTML page and the MLflow description,
so the three say the same thing in the same words. Callers escape them for their medium."""

from __future__ import annotations

from dataclasses import dataclass

from tuneloop.api.evaluation import Comparison, GateResult, JudgeStats, Score
from tuneloop.api.finetunejob import ContaminationStats, DatasetStats, PreferenceDataStats

CONTAMINATION_EXAMPLES = 3
JUDGE_METRICS = "judgeScore and judgeWinRate"


def split_sizes(dataset: DatasetStats) -> str:
    """'300 rows (alpaca): 240 train, 30 validation, 30 test'"""
    return (f"{dataset.rows} rows ({dataset.format}): {dataset.train_rows} train, {dataset.validation_rows} "
            f"validation, {dataset.test_rows} test")


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


def regressed_count(count: int | None, examples: int) -> str:
    if count is None:
        return "not counted"
    rows = "row" if count == 1 else "rows"
    return f"{count} of {examples} {rows} regressed (the champion exactly right, the candidate not)"


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
