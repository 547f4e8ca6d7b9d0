"""examples/compare_objectives.py's verdict: both candidates against the champion on the same rows, and the
two against each other (its full run, two trainings on SmolLM2, is in the README with its figures)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import compare_objectives  # noqa: E402


def records(tmp_path: Path, name: str, right: list[bool], references: list[str]) -> str:
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps({
        "set": "test", "index": index, "reference": reference,
        "candidate": {"scores": {"exactMatch": 1.0 if ok else 0.0}}, "baseline": {"scores": {"exactMatch": 0.0}}},
    ) + "\n" for index, (ok, reference) in enumerate(zip(right, references))))
    return f"file://{path}"


def test_head_to_head_counts_the_rows_where_only_one_candidate_is_right(tmp_path):
    references = [f"ticket {index}" for index in range(8)]
    sft = compare_objectives.records_of_test_set({"evaluation": {"recordsUri": records(
        tmp_path, "sft", [True, True, True, False, False, False, True, False], references)}})
    dpo = compare_objectives.records_of_test_set({"evaluation": {"recordsUri": records(
        tmp_path, "dpo", [True, False, False, False, True, True, True, True], references)}})

    verdict = compare_objectives.head_to_head(sft, dpo, "exactMatch")

    assert "sft-then-dpo alone right on 3, sft alone right on 2" in verdict
    assert "exact McNemar p = 1.000" in verdict


def test_two_evaluations_of_different_rows_are_not_compared(tmp_path):
    sft = compare_objectives.records_of_test_set({"evaluation": {"recordsUri": records(
        tmp_path, "sft", [True, False], ["a", "b"])}})
    dpo = compare_objectives.records_of_test_set({"evaluation": {"recordsUri": records(
        tmp_path, "dpo", [True, False], ["a", "c"])}})

    assert compare_objectives.head_to_head(sft, dpo, "exactMatch").startswith("not comparable")
