"""Per-example metrics and bootstrap confidence intervals on known inputs."""

from __future__ import annotations

import numpy as np
import pytest

from tuneloop.api.evaluation import BootstrapSpec
from tuneloop_evaluator.bootstrap import bootstrap_difference, bootstrap_mean
from tuneloop_evaluator.metrics import (
    exact_match, field_accuracy, label_accuracy, rouge_l, score_answer, task_shape,
)

TICKET = '{"acct":"NL-48213","cat":"BIL","act":"REFUND","pri":"P1"}'


@pytest.mark.parametrize("answer, reference, expected", [
    ("Paris", "Paris", 1.0),
    ("  paris\n", "Paris", 1.0),
    ("The  quick\tbrown fox", "the quick brown FOX", 1.0),
    ("Straße", "STRASSE", 1.0),  # case-folding, not lower()
    ("Paris.", "Paris", 0.0),
    ('{"pri": "P1", "acct": "NL-48213", "act": "REFUND", "cat": "BIL"}', TICKET, 1.0),  # key order, spaces
    ('{"acct":"NL-48213","cat":"BIL","act":"REFUND","pri":"p1"}', TICKET, 0.0),  # JSON values stay exact
    ('{"n": true}', '{"n": 1}', 0.0),
    ("[1, 2]", "[1,2]", 1.0),
])
def test_exact_match_normalises(answer, reference, expected):
    assert exact_match(answer, reference) == expected


def test_rouge_l_is_the_f1_of_the_longest_common_subsequence():
    # LCS 5 of 5 answer tokens and 6 reference tokens: P = 1, R = 5/6, F1 = 10/11.
    assert rouge_l("the cat on the mat", "the cat sat on the mat") == pytest.approx(10 / 11)
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert rouge_l("dogs bark", "the cat sat on the mat") == 0.0
    assert rouge_l("Grüße aus München", "grüße aus münchen") == 1.0  # letters beyond ASCII count


def test_structured_metrics_compare_fields():
    reference = {"acct": "NL-48213", "cat": "BIL", "act": "REFUND", "pri": "P1"}
    assert field_accuracy({"acct": "NL-48213", "cat": "BIL", "act": "CLOSE"}, reference) == 0.5
    assert field_accuracy({**reference, "extra": 1}, reference) == 1.0
    assert field_accuracy(["not", "an", "object"], reference) == 0.0
    assert label_accuracy({"cat": "BIL", "pri": "P1"}, reference, ["cat", "pri"]) == 1.0
    assert label_accuracy({"cat": "BIL", "pri": "P2"}, reference, ["cat", "pri"]) == 0.0


def test_score_answer_on_a_structured_task():
    shape = task_shape([TICKET, '{"acct":"MD-1","cat":"ACC","act":"UPDATE","pri":"P3"}'], ["cat", "pri"])
    assert shape.structured and shape.metrics == ["exactMatch", "rougeL", "jsonValid", "fieldAccuracy",
                                                  "labelAccuracy"]
    good = score_answer('{"acct":"NL-48213","cat":"BIL","act":"CLOSE","pri":"P1"}', TICKET, shape)
    assert good == {"exactMatch": 0.0, "rougeL": pytest.approx(good["rougeL"]), "jsonValid": 1.0,
                    "fieldAccuracy": 0.75, "labelAccuracy": 1.0}
    assert 0.5 < good["rougeL"] < 1.0
    broken = score_answer('{"acct":"NL-48213",', TICKET, shape)
    assert (broken["jsonValid"], broken["fieldAccuracy"], broken["labelAccuracy"]) == (0.0, 0.0, 0.0)


def test_free_text_tasks_have_only_text_metrics():
    shape = task_shape(["Paris", '{"a": 1}'], ["cat"])
    assert not shape.structured and shape.metrics == ["exactMatch", "rougeL"]
    assert set(score_answer("Paris", "Paris", shape)) == {"exactMatch", "rougeL"}


def test_a_label_field_missing_from_a_reference_is_an_error():
    with pytest.raises(ValueError, match="reference 2 has no field pri"):
        task_shape([TICKET, '{"acct":"MD-1","cat":"ACC"}'], ["cat", "pri"])


SPEC = BootstrapSpec(samples=2000, confidence=0.95, seed=7)


def test_bootstrap_interval_contains_the_mean():
    values = np.random.default_rng(0).random(40)
    score = bootstrap_mean(values, SPEC)
    assert score.value == pytest.approx(values.mean())
    assert score.low < score.value < score.high
    # About 1.96 standard errors either side for a mean of 40 uniform values.
    assert score.high - score.low == pytest.approx(2 * 1.96 * values.std() / np.sqrt(40), rel=0.2)


def test_a_wider_confidence_gives_a_wider_interval():
    values = [0, 1] * 15
    narrow = bootstrap_mean(values, BootstrapSpec(samples=2000, confidence=0.8))
    wide = bootstrap_mean(values, BootstrapSpec(samples=2000, confidence=0.99))
    assert wide.low < narrow.low and wide.high > narrow.high


def test_paired_difference_of_identical_lists_is_exactly_zero():
    values = [0.1, 0.9, 0.4, 0.4, 1.0]
    assert bootstrap_difference(values, values, SPEC).model_dump() == {"value": 0.0, "low": 0.0, "high": 0.0}


def test_a_clear_improvement_has_a_positive_lower_bound():
    baseline = [0.0] * 15 + [1.0] * 5
    candidate = [1.0] * 15 + [1.0] * 5
    difference = bootstrap_difference(candidate, baseline, SPEC)
    assert difference.value == 0.75 and difference.low > 0


def test_pairing_narrows_the_interval():
    # Hard and easy prompts differ a lot; the candidate is always a little better on the same prompt.
    rng = np.random.default_rng(1)
    difficulty = rng.random(30)
    baseline, candidate = difficulty, difficulty + 0.05
    paired = bootstrap_difference(candidate, baseline, SPEC)
    assert paired.low == pytest.approx(0.05) and paired.high == pytest.approx(0.05)
    unpaired_low = bootstrap_mean(candidate, SPEC).low - bootstrap_mean(baseline, SPEC).high
    assert unpaired_low < 0 < paired.low


def test_bootstrap_is_reproducible_by_seed():
    values = np.random.default_rng(3).random(25)
    assert bootstrap_mean(values, SPEC) == bootstrap_mean(values, SPEC)
    other = bootstrap_mean(values, BootstrapSpec(samples=2000, confidence=0.95, seed=8))
    assert other != bootstrap_mean(values, SPEC) and other.value == bootstrap_mean(values, SPEC).value


def test_one_example_gives_a_point_interval_and_no_examples_an_error():
    assert bootstrap_mean([0.3], SPEC).model_dump() == {"value": 0.3, "low": 0.3, "high": 0.3}
    with pytest.raises(ValueError):
        bootstrap_mean([], SPEC)
    with pytest.raises(ValueError, match="equal lengths"):
        bootstrap_difference([1.0], [1.0, 0.0], SPEC)


def test_many_resamples_of_many_examples_fit_in_memory_chunks():
    values = np.random.default_rng(4).random(5000)
    score = bootstrap_mean(values, BootstrapSpec(samples=5000, confidence=0.95))
    assert score.low < score.value < score.high
