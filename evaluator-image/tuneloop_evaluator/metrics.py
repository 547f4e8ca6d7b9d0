"""Per-example scores of one answer against its reference (metric names as in tuneloop.api.evaluation).

Text metrics apply to every task; the structured ones (jsonValid, fieldAccuracy, labelAccuracy)
only when every reference is a JSON object, because only then "the answer's fields" means anything.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

_NOT_JSON = object()
_MISSING = object()


def normalise(text: str) -> str:
    """Strip, collapse runs of whitespace, case-fold."""
    return " ".join(text.split()).casefold()


def parse_json(text: str) -> Any:
    """The JSON value the text is, or _NOT_JSON."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return _NOT_JSON


def canonical_json(value: Any) -> str:
    """One spelling per JSON value: sorted keys, no spaces; true and 1 stay different."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def exact_match(answer: str, reference: str) -> float:
    """1.0 when equal as JSON values (if both are JSON), else equal after normalise()."""
    answer_value, reference_value = parse_json(answer), parse_json(reference)
    if answer_value is not _NOT_JSON and reference_value is not _NOT_JSON:
        return float(canonical_json(answer_value) == canonical_json(reference_value))
    return float(normalise(answer) == normalise(reference))


class _UnicodeWords:
    """rouge-score's default tokenizer keeps only [a-z0-9]; this one keeps letters of every script."""

    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"\w+", text.casefold())


@lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=_UnicodeWords())


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F1 over word tokens (rouge-score)."""
    return float(_rouge_scorer().score(reference, answer)["rougeL"].fmeasure)


def _field_equal(answer: dict[str, Any], reference: dict[str, Any], key: str) -> bool:
    value = answer.get(key, _MISSING)
    return value is not _MISSING and canonical_json(value) == canonical_json(reference[key])


def field_accuracy(answer_value: Any, reference: dict[str, Any]) -> float:
    """Share of the reference's top-level fields the answer has with the same value."""
    if not reference:
        return float(answer_value == {})
    if not isinstance(answer_value, dict):
        return 0.0
    return sum(_field_equal(answer_value, reference, key) for key in reference) / len(reference)


def label_accuracy(answer_value: Any, reference: dict[str, Any], label_fields: list[str]) -> float:
    """1.0 when the answer gets every label field right."""
    if not isinstance(answer_value, dict):
        return 0.0
    return float(all(_field_equal(answer_value, reference, key) for key in label_fields))


@dataclass
class TaskShape:
    """What can be measured on this task, decided once from all the references."""

    structured: bool
    label_fields: list[str] = field(default_factory=list)

    @property
    def metrics(self) -> list[str]:
        names = ["exactMatch", "rougeL"]
        if self.structured:
            names += ["jsonValid", "fieldAccuracy"] + (["labelAccuracy"] if self.label_fields else [])
        return names


def task_shape(references: list[str], label_fields: list[str]) -> TaskShape:
    """Structured when every reference is a JSON object; label fields must then be in every one.

    Raises ValueError naming the first reference that lacks a label field: a label that is
    missing on both sides would otherwise count as right.
    """
    values = [parse_json(reference) for reference in references]
    structured = bool(values) and all(isinstance(value, dict) for value in values)
    if not structured:
        return TaskShape(structured=False)
    for index, value in enumerate(values):
        missing = [name for name in label_fields if name not in value]
        if missing:
            raise ValueError(f"evaluation.structured.labelFields: reference {index + 1} has no field "
                             f"{', '.join(missing)} (its fields: {', '.join(value) or 'none'})")
    return TaskShape(structured=True, label_fields=list(label_fields))


def score_answer(answer: str, reference: str, shape: TaskShape) -> dict[str, float]:
    """Every metric of the task shape for one answer."""
    scores = {"exactMatch": exact_match(answer, reference), "rougeL": rouge_l(answer, reference)}
    if shape.structured:
        reference_value = json.loads(reference)
        answer_value = parse_json(answer)
        scores["jsonValid"] = float(answer_value is not _NOT_JSON)
        scores["fieldAccuracy"] = field_accuracy(answer_value, reference_value)
        if shape.label_fields:
            scores["labelAccuracy"] = label_accuracy(answer_value, reference_value, shape.label_fields)
    return scores
