"""One-sided tests for the gate (H0: the true value <= threshold), Holm's correction, and power.

Pass/fail metrics are tested exactly (McNemar on the discordant pairs, binomial for a minimum);
continuous ones with the bootstrap, whose p-value inverts the BCa interval: alone at level alpha, a
bootstrap test passes exactly when the interval's lower bound at confidence 1 - 2 * alpha clears the
threshold. The exact tests agree with their intervals nearly so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from scipy.special import ndtr, ndtri
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from tuneloop.api.evaluation import BootstrapSpec, Score
from tuneloop_evaluator.bootstrap import Resampled, bootstrap_difference, resample_difference, resample_mean

POWER = 0.8
# With no disagreement seen in n rows, up to 3/n may still disagree (the rule of three: a 95% upper
# bound). A planning standard deviation never goes below that of such a difference: span * sqrt(3/n).
RULE_OF_THREE = 3.0


@dataclass(frozen=True)
class TestOutcome:
    """One one-sided test: the estimate with its interval, the p-value, and what it rests on."""

    estimate: Score
    p_value: float
    n: int
    method: str
    detail: str
    discordant: tuple[int, int] | None = None   # McNemar: pairs for the candidate, pairs against


def _bootstrap_p_value(resampled: Resampled, threshold: float) -> float:
    """P-value of H0 mean <= threshold: the level at which the one-sided BCa (or percentile) lower bound
    would equal the threshold, from the same resampled means."""
    means = resampled.means
    share = (np.count_nonzero(means < threshold) + np.count_nonzero(means <= threshold)) / (2 * len(means))
    # The resamples resolve nothing finer than about one in len(means).
    share = min(max(share, 0.5 / len(means)), 1 - 0.5 / len(means))
    if resampled.method != "BCa":
        return share
    bias, acceleration = resampled.bias, resampled.acceleration
    shifted = float(ndtri(share)) - bias
    denominator = 1 + acceleration * shifted
    if denominator <= 0:  # outside the range where BCa's map is monotone: the percentile p-value
        return share
    return float(ndtr(shifted / denominator - bias))


def _constant_p_value(resampled: Resampled, threshold: float) -> float:
    """All values equal, so the bootstrap has nothing to resample: the exact sign test. Under H0 (median
    <= threshold) all n values land above the threshold with probability at most 0.5^n."""
    n = len(resampled.values)
    if resampled.score.value <= threshold:
        return 1.0
    return float(stats.binomtest(n, n, 0.5, alternative="greater").pvalue)


def _bootstrap_outcome(resampled: Resampled, threshold: float, name: str, what: str,
                       spec: BootstrapSpec) -> TestOutcome:
    n = len(resampled.values)
    if resampled.means is None:
        return TestOutcome(resampled.score, _constant_p_value(resampled, threshold), n, "exact sign test",
                           f"all {n} {what} equal {resampled.score.value:+.3f}: nothing to resample")
    detail = f"{n} {what}, {spec.samples} resamples"
    if resampled.method != "BCa":
        detail += " (percentile interval: BCa undefined or too costly here)"
    return TestOutcome(resampled.score, _bootstrap_p_value(resampled, threshold), n,
                       f"{name} ({resampled.method})", detail)


def mcnemar_improvement(candidate: Sequence[float], baseline: Sequence[float], spec: BootstrapSpec) -> TestOutcome:
    """Exact McNemar for paired pass/fail values (1 pass, 0 fail), H0: candidate <= baseline.

    Only discordant pairs carry information; under H0 each favours the candidate with probability at
    most 1/2, so the one-sided p is binomtest(for, for + against, 0.5, "greater"). The estimate is the
    mean difference with its paired bootstrap interval."""
    candidate_array, baseline_array = _binary(candidate), _binary(baseline)
    if len(candidate_array) != len(baseline_array) or len(candidate_array) == 0:
        raise ValueError(f"McNemar needs equal, non-empty lists, got {len(candidate_array)} and {len(baseline_array)}")
    wins = int(np.count_nonzero(candidate_array > baseline_array))
    losses = int(np.count_nonzero(candidate_array < baseline_array))
    p_value = float(stats.binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue) if wins + losses else 1.0
    return TestOutcome(bootstrap_difference(candidate_array, baseline_array, spec), p_value, len(candidate_array),
                       "exact McNemar", f"discordant pairs {wins} for / {losses} against", (wins, losses))


def paired_bootstrap_test(candidate: Sequence[float], baseline: Sequence[float], threshold: float,
                          spec: BootstrapSpec) -> TestOutcome:
    """H0: mean(candidate - baseline) <= threshold, from the paired bootstrap of the differences."""
    return _bootstrap_outcome(resample_difference(candidate, baseline, spec), threshold, "paired bootstrap",
                              "paired differences", spec)


def bootstrap_minimum(values: Sequence[float], threshold: float, spec: BootstrapSpec) -> TestOutcome:
    """H0: mean(values) <= threshold, for a continuous metric, from the bootstrap of the mean."""
    return _bootstrap_outcome(resample_mean(values, spec), threshold, "bootstrap", "values", spec)


def binomial_minimum(values: Sequence[float], threshold: float, confidence: float) -> TestOutcome:
    """Exact binomial test of H0: pass rate <= threshold, for pass/fail values; the estimate's interval is
    Clopper-Pearson at `confidence`, which inverts the same test."""
    array = _binary(values)
    if len(array) == 0:
        raise ValueError("the binomial test needs at least one value")
    passes, n = int(array.sum()), len(array)
    p_value = stats.binomtest(passes, n, min(max(threshold, 0.0), 1.0), alternative="greater").pvalue
    interval = stats.binomtest(passes, n).proportion_ci(confidence_level=confidence, method="exact")
    rate = passes / n
    estimate = Score(value=rate, low=min(float(interval.low), rate), high=max(float(interval.high), rate))
    return TestOutcome(estimate, float(p_value), n, "exact binomial", f"{passes} of {n} pass")


def holm(p_values: Sequence[float], alpha: float) -> list[float]:
    """Holm-adjusted p-values of a family of tests: each test passes when its adjusted p is below alpha."""
    if not p_values:
        return []
    return [float(p) for p in multipletests(list(p_values), alpha=alpha, method="holm")[1]]


def planning_sd(values: Sequence[float], span: float = 1.0) -> float:
    """Standard deviation to plan power with: the observed one (of the paired differences, or of the values
    for a minimum), never below span * sqrt(3 / n), what a few unseen disagreements would give."""
    array = np.asarray(values, dtype=float)
    n = len(array)
    observed = float(array.std(ddof=1)) if n > 1 else 0.0
    floor = span * math.sqrt(min(1.0, RULE_OF_THREE / max(n, 1)))
    return max(observed, floor)


def detectable_effect(n: int, sd: float, alpha: float) -> float | None:
    """Smallest true effect (difference over the threshold) a one-sided test at level alpha detects with 80%
    power at n paired rows (t-test approximation); None below 2 rows, where nothing is detectable."""
    if n < 2:
        return None
    standardised = TTestPower().solve_power(nobs=n, alpha=alpha, power=POWER, alternative="larger")
    return float(standardised) * sd


def rows_needed(effect: float, sd: float, alpha: float) -> int:
    """Rows for a one-sided test at level alpha to detect `effect` with 80% power (t-test approximation)."""
    if effect <= 0:
        raise ValueError(f"effect must be positive, got {effect}")
    if sd <= 0:
        return 2
    nobs = TTestPower().solve_power(effect_size=effect / sd, alpha=alpha, power=POWER, alternative="larger")
    return max(2, math.ceil(float(nobs)))


def _binary(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if not np.isin(array, (0.0, 1.0)).all():
        raise ValueError("pass/fail values must be 0 or 1")
    return array
