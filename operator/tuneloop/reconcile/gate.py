"""The gate: is the candidate better, beyond the noise? Decided on confidence-interval lower bounds.

An improvement whose interval reaches zero is not an improvement; a score whose interval reaches
below the minimum does not meet it. Every check is written out, with its numbers, so the
condition message says exactly why the adapter passed or not.
"""

from __future__ import annotations

from tuneloop.api.evaluation import Comparison, GateResult, GateSpec


def _improvement(metric: str, threshold: float, hold_out: Comparison) -> tuple[bool, str]:
    difference = hold_out.difference.get(metric)
    if difference is None:
        return False, f"{metric} improvement not measured"
    passed = difference.low > threshold
    return passed, f"{metric} candidate-baseline {difference.interval(signed=True)}: lower bound {'>' if passed else '<='} {threshold:g}"


def _minimum(metric: str, threshold: float, hold_out: Comparison) -> tuple[bool, str]:
    score = hold_out.candidate.get(metric)
    if score is None:
        return False, f"{metric} not measured"
    passed = score.low >= threshold
    return passed, (f"{metric} {score.interval()}: lower bound "
                    f"{'>=' if passed else '<'} {threshold:g}")


def _regression(max_regression: float, general: Comparison) -> tuple[bool, str]:
    difference = general.difference.get("rougeL")
    if difference is None:
        return False, "general-set rougeL not measured"
    passed = difference.low >= -max_regression
    return passed, (f"general-set rougeL candidate-baseline {difference.interval(signed=True)}: lower bound "
                    f"{'>=' if passed else '<'} -{max_regression:g}")


def decide(gate: GateSpec, hold_out: Comparison, general: Comparison | None) -> GateResult:
    improvements = {gate.primary_metric: 0.0, **gate.min_improvement}
    checks = [_improvement(metric, threshold, hold_out) for metric, threshold in improvements.items()]
    checks += [_minimum(metric, threshold, hold_out) for metric, threshold in gate.min_score.items()]
    if general is not None:
        checks.append(_regression(gate.max_regression, general))
    failed = [text for passed, text in checks if not passed]
    lines = [("ok: " if passed else "FAILED: ") + text for passed, text in checks]
    if failed:
        message = "gate failed: " + "; ".join(failed)
    else:
        message = "gate passed: " + "; ".join(text for _, text in checks)
    return GateResult(passed=not failed, message=message, checks=lines)
