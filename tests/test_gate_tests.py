"""The gate's family of tests as a user sees it: which checks exist, which pass, and why."""

from __future__ import annotations

import numpy as np
import pytest

from tuneloop.api.evaluation import BootstrapSpec, GateSpec, JudgeStats
from tuneloop_evaluator.gate_tests import SetScores, gate_tests

BOOTSTRAP = BootstrapSpec(samples=2000, confidence=0.95, seed=1)
ALPHA = 0.025
TRUSTED = JudgeStats(configured=True, model="judge", repeated=20, self_agreement=0.9, trusted=True)
UNTRUSTED = JudgeStats(configured=True, model="judge", repeated=20, self_agreement=0.4, trusted=False,
                       note="self-agreement 0.40 below judge.minAgreement 0.6")


def exact_match_set(wins: int, losses: int, both_pass: int, both_fail: int, name: str = "test") -> SetScores:
    candidate = [1.0] * wins + [0.0] * losses + [1.0] * both_pass + [0.0] * both_fail
    baseline = [0.0] * wins + [1.0] * losses + [1.0] * both_pass + [0.0] * both_fail
    return SetScores(name, [{"exactMatch": c, "rougeL": 0.5 + 0.4 * c} for c in candidate],
                     [{"exactMatch": b, "rougeL": 0.5 + 0.4 * b} for b in baseline])


def rouge_set(name: str, shift: float, n: int = 40, noise: float = 0.1, seed: int = 5) -> SetScores:
    baseline = np.round(np.linspace(0.2, 0.6, n), 3)
    candidate = np.round(baseline + shift + np.random.default_rng(seed).normal(0, noise, n), 3)
    return SetScores(name, [{"rougeL": float(c), "fieldAccuracy": float(c)} for c in candidate],
                     [{"rougeL": float(b), "fieldAccuracy": float(b)} for b in baseline])


def by_check(tests):
    return {test.check: test for test in tests}


def test_a_clearly_better_candidate_passes_on_exact_mcnemar():
    tests, _ = gate_tests(GateSpec(), BOOTSTRAP, exact_match_set(wins=10, losses=1, both_pass=12, both_fail=7),
                          None, None, None)
    [test] = tests
    assert (test.check, test.kind, test.set, test.method) == ("exactMatch improvement on test", "improvement",
                                                              "test", "exact McNemar")
    assert test.p_value == pytest.approx(12 / 2048)  # P(X >= 10), X ~ Binomial(11, 1/2)
    assert test.p_holm == test.p_value and test.passed
    assert test.detail == "discordant pairs 10 for / 1 against" and test.n == 30


def test_a_tie_fails():
    tests, _ = gate_tests(GateSpec(), BOOTSTRAP, exact_match_set(wins=4, losses=4, both_pass=12, both_fail=10),
                          None, None, None)
    assert not tests[0].passed and tests[0].p_value > 0.5


def test_holm_fails_a_marginal_metric_that_passes_alone():
    scores = rouge_set("test", shift=0.0575)  # p about 0.019: between alpha/2 and alpha
    [alone], _ = gate_tests(GateSpec(primary_metric="rougeL"), BOOTSTRAP, scores, None, None, None)
    assert ALPHA / 2 < alone.p_value < ALPHA and alone.passed
    together, _ = gate_tests(GateSpec(primary_metric="rougeL", min_improvement={"fieldAccuracy": 0.0}),
                             BOOTSTRAP, scores, None, None, None)
    assert [test.metric for test in together] == ["rougeL", "fieldAccuracy"]
    assert all(test.p_value == alone.p_value and test.p_holm == pytest.approx(2 * alone.p_value)
               and not test.passed for test in together)


def test_a_threshold_above_zero_on_a_pass_fail_metric_uses_the_paired_bootstrap():
    scores = exact_match_set(wins=15, losses=0, both_pass=10, both_fail=5)
    [test], _ = gate_tests(GateSpec(min_improvement={"exactMatch": 0.2}), BOOTSTRAP, scores, None, None, None)
    assert test.method == "paired bootstrap (BCa)" and test.threshold == 0.2
    assert test.passed == (test.estimate.low > 0.2)


def test_a_small_test_set_warns_that_it_cannot_detect_the_effect_of_interest():
    small = exact_match_set(wins=6, losses=2, both_pass=12, both_fail=10)
    [test], warnings = gate_tests(GateSpec(), BOOTSTRAP, small, None, None, None)
    assert test.detectable_effect > 0.1
    assert warnings == [test.warning]
    assert test.warning.startswith(f"exactMatch improvement on test: 30 test rows detect +{test.detectable_effect:.2f}"
                                   " with 80% power; +0.10 (effectOfInterest) needs about ")
    assert int(test.warning.rsplit(" ", 1)[1]) > 30
    large = exact_match_set(wins=400, losses=130, both_pass=800, both_fail=670)
    [large_test], large_warnings = gate_tests(GateSpec(), BOOTSTRAP, large, None, None, None)
    assert large_test.detectable_effect < test.detectable_effect and large_test.warning is None
    assert large_warnings == []


def test_a_min_improvement_is_the_effect_the_warning_asks_for():
    scores = rouge_set("test", shift=0.3)
    [test], warnings = gate_tests(GateSpec(primary_metric="rougeL", min_improvement={"rougeL": 0.02}),
                                  BOOTSTRAP, scores, None, None, None)
    assert test.detectable_effect > 0.02 and "+0.02 (minImprovement) needs about" in warnings[0]


def test_regression_beyond_the_margin_fails_the_non_inferiority_check_and_within_it_passes():
    gate = GateSpec(primary_metric="rougeL", non_inferiority_margin=0.05)
    worse, _ = gate_tests(gate, BOOTSTRAP, rouge_set("test", 0.2), rouge_set("regression", -0.15, n=200), None, None)
    check = by_check(worse)["rougeL non-inferiority on regression"]
    assert check.kind == "nonInferiority" and check.threshold == -0.05 and not check.passed
    same, _ = gate_tests(gate, BOOTSTRAP, rouge_set("test", 0.2), rouge_set("regression", 0.0, n=200, noise=0.03),
                         rouge_set("general", 0.0, n=200, noise=0.03, seed=6), None)
    assert [t.check for t in same] == ["rougeL improvement on test", "rougeL non-inferiority on regression",
                                       "rougeL non-inferiority on general"]
    assert all(t.passed for t in same)
    guardrail = by_check(same)["rougeL non-inferiority on regression"]
    assert 0 < guardrail.detectable_effect < 0.05 and guardrail.warning is None  # 200 rows can show a 0.05 margin


def test_a_regression_set_too_small_for_the_margin_says_what_margin_it_can_show_and_how_many_rows_are_needed():
    # 30 of the champion's rows, 2 won and 2 lost: no change, yet no way to show it within a 0.05 margin.
    small = exact_match_set(wins=2, losses=2, both_pass=20, both_fail=6, name="regression")
    tests, warnings = gate_tests(GateSpec(), BOOTSTRAP, exact_match_set(10, 1, 12, 7), small, None, None)
    guardrail = by_check(tests)["exactMatch non-inferiority on regression"]
    assert not guardrail.passed and guardrail.estimate.value == 0
    margin = guardrail.detectable_effect
    assert 0.05 < margin < 0.5
    assert guardrail.line().endswith(f"; shown at 80% power for a margin of {margin:.3f} or more")
    assert guardrail.warning in warnings
    assert guardrail.warning.startswith(
        f"exactMatch non-inferiority on regression: 30 regression rows show no regression with 80% power only "
        f"for a margin of {margin:.2f} or more; 0.05 (nonInferiorityMargin) needs about ")
    needed = int(guardrail.warning.rsplit(" ", 1)[1])
    assert needed > 30
    # A set of that size, with the same share of discordant rows, shows the 0.05 margin and does not warn.
    share = needed / 30
    large = exact_match_set(wins=round(2 * share), losses=round(2 * share), both_pass=round(20 * share),
                            both_fail=round(6 * share), name="regression")
    tests, _ = gate_tests(GateSpec(), BOOTSTRAP, exact_match_set(10, 1, 12, 7), large, None, None)
    large_guardrail = by_check(tests)["exactMatch non-inferiority on regression"]
    assert large_guardrail.detectable_effect <= 0.05 and large_guardrail.warning is None
    assert large_guardrail.passed
    # A wider margin that 30 rows can show: no warning.
    tests, warnings = gate_tests(GateSpec(non_inferiority_margin=0.3), BOOTSTRAP, exact_match_set(10, 1, 12, 7),
                                 small, None, None)
    assert by_check(tests)["exactMatch non-inferiority on regression"].warning is None
    assert not any("non-inferiority" in warning for warning in warnings)


def test_non_inferiority_falls_back_to_rouge_when_the_primary_metric_is_not_on_the_regression_set():
    regression = SetScores("regression", [{"rougeL": 0.8}] * 20, [{"rougeL": 0.8}] * 20)
    tests, _ = gate_tests(GateSpec(), BOOTSTRAP, exact_match_set(10, 0, 12, 8), regression, None, None)
    assert by_check(tests)["rougeL non-inferiority on regression"].method == "exact sign test"


def test_a_metric_that_was_not_measured_fails_and_says_so():
    tests, _ = gate_tests(GateSpec(min_improvement={"labelAccuracy": 0.0}, min_score={"jsonValid": 0.5}),
                          BOOTSTRAP, exact_match_set(10, 0, 12, 8), None, None, None)
    checks = by_check(tests)
    assert checks["exactMatch improvement on test"].passed
    label, json_valid = checks["labelAccuracy improvement on test"], checks["jsonValid minimum on test"]
    assert not label.passed and label.p_value is None and label.n == 0
    assert label.detail == "labelAccuracy not measured on test: no example has it for both candidate and baseline"
    assert not json_valid.passed and "jsonValid not measured on test" in json_valid.detail


def judged_set(wins: int = 24) -> SetScores:
    win_values = [1.0] * wins + [0.0] * (30 - wins)
    candidate = [{"exactMatch": 1.0, "judgeWinRate": w, "judgeScore": 8.0 + w} for w in win_values]
    baseline = [{"exactMatch": 0.0, "judgeScore": 5.0} for _ in win_values]
    return SetScores("test", candidate, baseline)


def test_judge_metrics_count_only_when_the_judge_is_trusted():
    gate = GateSpec(min_score={"judgeWinRate": 0.5})
    trusted, _ = gate_tests(gate, BOOTSTRAP, judged_set(), None, None, TRUSTED)
    assert [t.kind for t in trusted] == ["judgeAgreement", "improvement", "minimum"]
    assert all(t.passed for t in trusted)
    agreement = trusted[0]
    assert agreement.estimate.value == 0.9 and agreement.estimate.low < 0.9 < agreement.estimate.high
    assert agreement.threshold == 0.6 and agreement.n == 20 and agreement.p_value is None

    untrusted, _ = gate_tests(gate, BOOTSTRAP, judged_set(), None, None, UNTRUSTED, min_agreement=0.7)
    agreement, exact, win_rate = untrusted
    assert not agreement.passed and agreement.threshold == 0.7
    assert agreement.detail == "self-agreement 0.40 below judge.minAgreement 0.6"
    assert exact.passed  # the exact-match check does not depend on the judge
    assert not win_rate.passed and win_rate.p_holm is None
    assert win_rate.detail.startswith("judge not trusted: self-agreement 0.40")


def test_a_gated_judge_metric_without_a_judge_fails():
    tests, _ = gate_tests(GateSpec(primary_metric="judgeScore"), BOOTSTRAP, judged_set(), None, None, None)
    agreement, score = tests
    assert not agreement.passed and agreement.detail == "no judge configured"
    assert not score.passed and score.detail.startswith("judge not trusted: no judge configured")


def test_a_judge_win_rate_minimum_is_a_one_sample_bootstrap():
    gate = GateSpec(min_score={"judgeWinRate": 0.5})
    tests, _ = gate_tests(gate, BOOTSTRAP, judged_set(wins=16), None, None, TRUSTED)
    win_rate = by_check(tests)["judgeWinRate minimum on test"]
    assert win_rate.method == "bootstrap (BCa)" and win_rate.n == 30
    assert not win_rate.passed  # 16 wins of 30 do not show a win rate above one half


def test_degenerate_sets_do_not_crash():
    one = SetScores("test", [{"exactMatch": 1.0, "rougeL": 1.0}], [{"exactMatch": 0.0, "rougeL": 0.0}])
    tests, warnings = gate_tests(GateSpec(min_improvement={"rougeL": 0.0}, min_score={"rougeL": 0.5}),
                                 BOOTSTRAP, one, one, None, None)
    assert not any(t.passed for t in tests)
    assert warnings and all("1 test row is too few to test anything" in w for w in warnings)
    empty = SetScores("test", [{}, {}], [{}, {}])
    tests, _ = gate_tests(GateSpec(), BOOTSTRAP, empty, None, None, None)
    assert not tests[0].passed and "not measured" in tests[0].detail
