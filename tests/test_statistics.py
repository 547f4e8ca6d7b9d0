"""The gate's statistics on inputs whose answers are known: exact tests against hand-computed
binomial sums, bootstrap p-values against their intervals, Holm, power, and degenerate inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tuneloop.api.evaluation import BootstrapSpec
from tuneloop_evaluator.bootstrap import BCA_MAX_VALUES, bootstrap_difference, bootstrap_mean
from tuneloop_evaluator.statistics import (
    binomial_minimum, bootstrap_minimum, detectable_effect, holm, mcnemar_improvement, paired_bootstrap_test,
    planning_sd, rows_needed,
)

SPEC = BootstrapSpec(samples=2000, confidence=0.95, seed=3)
ALPHA = (1 - SPEC.confidence) / 2


def paired_pass_fail(wins: int, losses: int, both_pass: int, both_fail: int) -> tuple[list[float], list[float]]:
    candidate = [1.0] * wins + [0.0] * losses + [1.0] * both_pass + [0.0] * both_fail
    baseline = [0.0] * wins + [1.0] * losses + [1.0] * both_pass + [0.0] * both_fail
    return candidate, baseline


def test_mcnemar_p_is_the_one_sided_binomial_tail_of_the_discordant_pairs():
    candidate, baseline = paired_pass_fail(wins=10, losses=1, both_pass=12, both_fail=7)
    outcome = mcnemar_improvement(candidate, baseline, SPEC)
    # P(X >= 10) for X ~ Binomial(11, 1/2) = (C(11,10) + C(11,11)) / 2^11
    assert outcome.p_value == pytest.approx(12 / 2048)
    assert outcome.discordant == (10, 1)
    assert outcome.detail == "discordant pairs 10 for / 1 against"
    assert outcome.estimate.value == pytest.approx(9 / 30) and outcome.estimate.low > 0
    assert outcome.p_value < ALPHA


@pytest.mark.parametrize("wins, losses", [(0, 0), (5, 5), (1, 6)])
def test_mcnemar_does_not_pass_a_tie_or_a_worse_candidate(wins, losses):
    candidate, baseline = paired_pass_fail(wins, losses, both_pass=10, both_fail=10)
    assert mcnemar_improvement(candidate, baseline, SPEC).p_value > 0.3


def test_a_bootstrap_test_passes_exactly_when_the_interval_lower_bound_clears_the_threshold():
    rng = np.random.default_rng(0)
    baseline = rng.random(40)
    # Skewed differences: here BCa's lower bound sits well above the percentile one (0.031 vs 0.026).
    candidate = baseline + 3 * rng.exponential(0.1, 40) ** 2
    low = paired_bootstrap_test(candidate, baseline, 0.0, SPEC).estimate.low
    below = paired_bootstrap_test(candidate, baseline, low - 0.002, SPEC)
    above = paired_bootstrap_test(candidate, baseline, low + 0.002, SPEC)
    assert below.method == "paired bootstrap (BCa)"
    assert below.p_value < ALPHA < above.p_value
    assert paired_bootstrap_test(candidate, baseline, low, SPEC).p_value == pytest.approx(ALPHA, abs=0.003)


def test_a_minimum_on_a_continuous_metric_agrees_with_its_interval():
    values = np.random.default_rng(1).random(50)
    low = bootstrap_mean(values, SPEC).low
    assert bootstrap_minimum(values, low - 0.005, SPEC).p_value < ALPHA
    assert bootstrap_minimum(values, low + 0.005, SPEC).p_value > ALPHA


def test_exact_binomial_minimum_and_its_clopper_pearson_interval():
    values = [1.0] * 24 + [0.0] * 6
    outcome = binomial_minimum(values, 0.5, SPEC.confidence)
    # P(X >= 24) for X ~ Binomial(30, 1/2)
    assert outcome.p_value == pytest.approx(sum(math.comb(30, k) for k in range(24, 31)) / 2 ** 30)
    assert outcome.estimate.value == 0.8 and 0.5 < outcome.estimate.low < 0.8 < outcome.estimate.high < 1
    assert outcome.method == "exact binomial" and outcome.detail == "24 of 30 pass"
    assert binomial_minimum(values, 0.7, SPEC.confidence).p_value > ALPHA  # 0.8 of 30 does not prove > 0.7


def test_holm_adjusts_a_family_of_p_values():
    assert holm([0.001, 0.02], ALPHA) == pytest.approx([0.002, 0.02])
    assert holm([0.02, 0.02], ALPHA) == pytest.approx([0.04, 0.04])  # each passes alone, neither together
    assert holm([], ALPHA) == []


def test_detectable_effect_shrinks_as_rows_grow_and_rows_needed_inverts_it():
    effects = [detectable_effect(n, 0.5, ALPHA) for n in (10, 30, 100, 2000)]
    assert effects == sorted(effects, reverse=True)
    assert effects[1] == pytest.approx(0.265, abs=0.005)   # ~2.8 * 0.5 / sqrt(30)
    needed = rows_needed(0.1, 0.5, ALPHA)
    assert detectable_effect(needed, 0.5, ALPHA) <= 0.1 < detectable_effect(needed - 1, 0.5, ALPHA)
    assert detectable_effect(1, 0.5, ALPHA) is None


def test_planning_sd_is_floored_when_no_disagreement_was_seen():
    assert planning_sd([0.0] * 30) == pytest.approx(math.sqrt(3 / 30))
    assert planning_sd([0.0] * 30, span=9.0) == pytest.approx(9 * math.sqrt(3 / 30))
    differences = [1.0, -1.0] * 15
    assert planning_sd(differences) == pytest.approx(np.std(differences, ddof=1))


def test_intervals_are_reproducible_for_a_seed():
    rng = np.random.default_rng(2)
    candidate, baseline = rng.random(30), rng.random(30)
    first = bootstrap_difference(candidate, baseline, SPEC)
    assert bootstrap_difference(candidate, baseline, SPEC) == first
    assert bootstrap_difference(candidate, baseline, SPEC.model_copy(update={"seed": 4})) != first


@pytest.mark.parametrize("candidate, baseline", [([1.0], [0.0]), ([0.7] * 5, [0.2] * 5), ([0.5] * 3, [0.5] * 3)])
def test_values_that_do_not_vary_give_a_point_interval_and_an_exact_sign_test(candidate, baseline):
    outcome = paired_bootstrap_test(candidate, baseline, 0.0, SPEC)
    difference = candidate[0] - baseline[0]
    assert outcome.estimate.model_dump() == pytest.approx({"value": difference, "low": difference, "high": difference})
    assert outcome.method == "exact sign test"
    assert outcome.p_value == (0.5 ** len(candidate) if difference > 0 else 1.0)
    assert bootstrap_mean(candidate, SPEC).low == candidate[0]


def test_one_example_never_passes_anything():
    assert mcnemar_improvement([1.0], [0.0], SPEC).p_value == 0.5
    assert binomial_minimum([1.0], 0.5, SPEC.confidence).p_value == 0.5
    assert bootstrap_minimum([0.9], 0.5, SPEC).p_value == 0.5


def test_many_rows_use_the_percentile_interval_and_say_so():
    rng = np.random.default_rng(5)
    n = BCA_MAX_VALUES + 1
    outcome = paired_bootstrap_test(rng.random(n) + 0.05, rng.random(n), 0.0, SPEC)
    assert outcome.method == "paired bootstrap (percentile)" and "percentile interval" in outcome.detail
    assert outcome.estimate.low < outcome.estimate.value < outcome.estimate.high


def test_inputs_the_tests_cannot_take_are_refused_clearly():
    with pytest.raises(ValueError, match="equal lengths"):
        bootstrap_difference([1.0, 0.0], [1.0], SPEC)
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_mean([], SPEC)
    with pytest.raises(ValueError, match="0 or 1"):
        mcnemar_improvement([0.5], [1.0], SPEC)
