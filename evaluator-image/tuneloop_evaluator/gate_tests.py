"""The gate's family of one-sided tests, built from the spec and the per-example scores.

Every check is H0: true value <= threshold at level alpha = (1 - confidence) / 2, Holm-corrected across
the family; a check that cannot be tested (metric not measured, judge not trusted) fails, never passes.
"""

from __future__ import annotations

from dataclasses import dataclass

from statsmodels.stats.proportion import proportion_confint

from tuneloop.api.evaluation import BootstrapSpec, GateSpec, GateTest, JudgeSpec, JudgeStats, Score
from tuneloop_evaluator.statistics import (
    TestOutcome, binomial_minimum, bootstrap_minimum, detectable_effect, holm, mcnemar_improvement,
    paired_bootstrap_test, planning_sd, rows_needed,
)

PASS_FAIL = ("exactMatch", "jsonValid", "labelAccuracy")
JUDGE_METRICS = ("judgeScore", "judgeWinRate")
# Range of a metric's per-example values (judgeScore is 1-10; the others 0-1), for the planning sd.
SPAN = {"judgeScore": 9.0}
DEFAULT_MIN_AGREEMENT = JudgeSpec.model_fields["min_agreement"].default


@dataclass
class SetScores:
    """One evaluated set, aligned per example: metric -> value (a metric may be missing on some)."""

    name: str  # "test" | "regression" | "general"
    candidate: list[dict[str, float]]
    baseline: list[dict[str, float]]


@dataclass
class _Check:
    kind: str       # improvement | minimum | nonInferiority
    metric: str
    scores: SetScores
    threshold: float

    @property
    def title(self) -> str:
        kind = {"improvement": "improvement", "minimum": "minimum", "nonInferiority": "non-inferiority"}[self.kind]
        return f"{self.metric} {kind} on {self.scores.name}"


def _pairs(scores: SetScores, metric: str) -> tuple[list[float], list[float]]:
    pairs = [(c[metric], b[metric]) for c, b in zip(scores.candidate, scores.baseline, strict=True)
             if metric in c and metric in b]
    return [c for c, _ in pairs], [b for _, b in pairs]


def _values(scores: SetScores, metric: str) -> list[float]:
    return [c[metric] for c in scores.candidate if metric in c]


def _is_pass_fail(metric: str, *value_lists: list[float]) -> bool:
    return metric in PASS_FAIL and all(value in (0.0, 1.0) for values in value_lists for value in values)


def _measured(scores: SetScores, metric: str) -> bool:
    return bool(_pairs(scores, metric)[0])


def _checks(gate: GateSpec, test: SetScores, regression: SetScores | None,
            general: SetScores | None) -> list[_Check]:
    improvements = {gate.primary_metric: gate.min_improvement.get(gate.primary_metric, 0.0), **gate.min_improvement}
    checks = [_Check("improvement", metric, test, threshold) for metric, threshold in improvements.items()]
    checks += [_Check("minimum", metric, test, threshold) for metric, threshold in gate.min_score.items()]
    margin = -gate.non_inferiority_margin
    if regression is not None:
        metric = gate.primary_metric if _measured(regression, gate.primary_metric) else "rougeL"
        checks.append(_Check("nonInferiority", metric, regression, margin))
    if general is not None:
        checks.append(_Check("nonInferiority", "rougeL", general, margin))
    return checks


def _outcome(check: _Check, bootstrap: BootstrapSpec) -> tuple[TestOutcome | None, list[float]]:
    """The test's outcome (None: not measured) and the values its power is planned on."""
    if check.kind == "minimum":
        values = _values(check.scores, check.metric)
        if not values:
            return None, []
        if _is_pass_fail(check.metric, values):
            return binomial_minimum(values, check.threshold, bootstrap.confidence), values
        return bootstrap_minimum(values, check.threshold, bootstrap), values
    candidate, baseline = _pairs(check.scores, check.metric)
    differences = [c - b for c, b in zip(candidate, baseline)]
    if not candidate:
        return None, []
    if check.threshold == 0 and _is_pass_fail(check.metric, candidate, baseline):
        return mcnemar_improvement(candidate, baseline, bootstrap), differences
    return paired_bootstrap_test(candidate, baseline, check.threshold, bootstrap), differences


def _wanted(check: _Check, gate: GateSpec) -> tuple[float, str]:
    """The effect the spec asks this check to be able to show, and the spec field that asks it."""
    if check.kind == "nonInferiority":
        return gate.non_inferiority_margin, "nonInferiorityMargin"
    if check.kind == "improvement" and check.threshold > 0:
        return check.threshold, "minImprovement"
    return gate.effect_of_interest, "effectOfInterest"


def _power_warning(check: _Check, n: int, effect: float | None, sd: float, wanted: float, wanted_name: str,
                   alpha: float) -> str | None:
    """Why this n cannot show what the spec asks. For non-inferiority, `effect` is the smallest margin the
    check shows with 80% power when candidate and baseline are truly equal."""
    rows = f"{n} {check.scores.name} row{'s' if n != 1 else ''}"
    if effect is None:
        return f"{check.title}: {rows} {'is' if n == 1 else 'are'} too few to test anything"
    if effect <= wanted:
        return None
    if check.kind != "nonInferiority":
        return (f"{check.title}: {rows} detect {effect:+.2f} with 80% power; {wanted:+.2f} ({wanted_name}) "
                f"needs about {rows_needed(wanted, sd, alpha)}")
    shown = f"{check.title}: {rows} show no regression with 80% power only for a margin of {effect:.2f} or more"
    if wanted <= 0:
        return f"{shown}; {wanted_name} 0 cannot be shown at any n unless the candidate is better"
    return f"{shown}; {wanted:.2f} ({wanted_name}) needs about {rows_needed(wanted, sd, alpha)}"


def _test(check: _Check, gate: GateSpec, bootstrap: BootstrapSpec, alpha: float) -> GateTest:
    outcome, planning_values = _outcome(check, bootstrap)
    if outcome is None:
        missing = "the candidate" if check.kind == "minimum" else "both candidate and baseline"
        return GateTest(check=check.title, metric=check.metric, set=check.scores.name, kind=check.kind,
                        method="not tested", estimate=None, threshold=check.threshold, n=0, passed=False,
                        detail=f"{check.metric} not measured on {check.scores.name}: no example has it for {missing}")
    test = GateTest(check=check.title, metric=check.metric, set=check.scores.name, kind=check.kind,
                    method=outcome.method, estimate=outcome.estimate, threshold=check.threshold, n=outcome.n,
                    p_value=outcome.p_value, passed=False, detail=outcome.detail)
    # Non-inferiority is planned like an improvement over -margin: the detectable effect is then the smallest
    # margin it shows when nothing changed (H0 diff <= -margin, true diff 0).
    sd = planning_sd(planning_values, SPAN.get(check.metric, 1.0))
    test.detectable_effect = detectable_effect(outcome.n, sd, alpha)
    wanted, wanted_name = _wanted(check, gate)
    test.warning = _power_warning(check, outcome.n, test.detectable_effect, sd, wanted, wanted_name, alpha)
    return test


def _judge_agreement(judge: JudgeStats | None, min_agreement: float, alpha: float) -> GateTest:
    """Not a hypothesis test but a requirement: the gate relies on judge metrics only when the judge is trusted."""
    test = GateTest(check="judge self-agreement", metric="selfAgreement", set="test", kind="judgeAgreement",
                    method="Wilson interval", estimate=None, threshold=min_agreement, n=0,
                    passed=judge is not None and judge.trusted)
    if judge is None or not judge.configured:
        test.detail = "no judge configured"
    elif judge.self_agreement is None or judge.repeated == 0:
        test.detail = judge.note or "self-agreement not measured (judge.agreementSample is 0)"
    else:
        agreed = round(judge.self_agreement * judge.repeated)
        low, high = proportion_confint(agreed, judge.repeated, alpha=2 * alpha, method="wilson")
        test.estimate = Score(value=judge.self_agreement, low=min(float(low), judge.self_agreement),
                              high=max(float(high), judge.self_agreement))
        test.n = judge.repeated
        test.detail = judge.note or f"{agreed} of {judge.repeated} repeated judgments agreed"
    return test


def gate_tests(gate: GateSpec, bootstrap: BootstrapSpec, test: SetScores, regression: SetScores | None,
               general: SetScores | None, judge: JudgeStats | None,
               min_agreement: float = DEFAULT_MIN_AGREEMENT) -> tuple[list[GateTest], list[str]]:
    """The gate's tests, in order (judge requirement first when a judge metric is gated, then improvement,
    minimum and non-inferiority checks), and the warnings about power. `min_agreement` is
    spec.evaluation.judge.minAgreement."""
    alpha = (1 - bootstrap.confidence) / 2
    checks = _checks(gate, test, regression, general)
    tests = [_test(check, gate, bootstrap, alpha) for check in checks]
    requirement: list[GateTest] = []
    judge_trusted = judge is not None and judge.trusted
    if any(check.metric in JUDGE_METRICS for check in checks):
        requirement.append(_judge_agreement(judge, min_agreement, alpha))
        if not judge_trusted:
            reason = requirement[0].detail
            for gate_test in tests:
                if gate_test.metric in JUDGE_METRICS:
                    gate_test.detail = f"judge not trusted: {reason}; {gate_test.detail}"
    family = [t for t in tests if t.p_value is not None and (judge_trusted or t.metric not in JUDGE_METRICS)]
    for gate_test, p_holm in zip(family, holm([t.p_value for t in family], alpha)):
        gate_test.p_holm = p_holm
        gate_test.passed = p_holm < alpha
    warnings = [t.warning for t in tests if t.warning]
    return requirement + tests, warnings
