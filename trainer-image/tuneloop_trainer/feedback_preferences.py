"""Preference rows from reviewers' feedback: DPO pairs and KTO rows, beside the snapshot's SFT rows.

A pair says "for this conversation, the correction is better than what was served": one per
correction that differs from the served answer, and only for a correction whose SFT row survived
cleaning, so an exact or near duplicate dropped there is not trained on twice here. A KTO row says
"this completion is desirable (or not) here": a verdict or a rating judges the served answer
(accept, 4 or 5: desirable; reject, 1 or 2: undesirable; 3: no row), a correction is desirable and
the answer it replaced is not (a correction equal to the answer confirms it). Each
(conversation, completion) gives one KTO row; when reviews disagree about one, it gives none.

The served answers, and the conversations of rows without a correction, were never seen by the SFT
cleaning: they are normalised and redacted here with the same code and kinds, and their redactions
counted. Everything else comes from the cleaned SFT rows as written.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tuneloop.api.finetunejob import CleaningSpec
from tuneloop.workload_data.rows import Example
from tuneloop_trainer.cleaning import normalize_text, redact_text

Messages = list[dict[str, str]]
DESIRABLE_RATING, UNDESIRABLE_RATING = 4, 2


@dataclass
class PreferenceRows:
    pairs: list[dict[str, Any]] = field(default_factory=list)
    kto: list[dict[str, Any]] = field(default_factory=list)
    redactions: Counter[str] = field(default_factory=Counter)  # in texts the SFT cleaning did not see
    contradicted: int = 0  # (conversation, completion)s left out: reviews disagreed about them


class TextCleaner:
    """The SFT cleaning's text steps (normalise, then redact), for one text at a time."""

    def __init__(self, spec: CleaningSpec, counts: Counter[str]):
        self.spec, self.counts = spec, counts

    def __call__(self, text: str) -> str:
        if self.spec.normalize:
            text = normalize_text(text)
        if self.spec.pii.redact:
            text = redact_text(text, self.spec.pii.kinds, self.counts)
        return text


def served_judgement(record: dict[str, Any]) -> list[bool]:
    """What the reviewer's verdict and rating say of the served answer (both, when both are given)."""
    labels = []
    if record.get("verdict") in ("accept", "reject"):
        labels.append(record["verdict"] == "accept")
    rating = record.get("rating")
    if rating is not None and rating >= DESIRABLE_RATING:
        labels.append(True)
    elif rating is not None and rating <= UNDESIRABLE_RATING:
        labels.append(False)
    return labels


def conversation_key(messages: Messages, completion: str) -> tuple:
    return tuple((message["role"], message["content"]) for message in messages), completion


def preference_rows(records: list[dict[str, Any]], conversations: dict[int, Messages], kept: list[Example],
                    spec: CleaningSpec) -> PreferenceRows:
    """`conversations`: each record's conversation as the SFT row puts it (system prompt included),
    before cleaning; `kept`: the cleaned SFT rows (line = the record's id), in id order."""
    out = PreferenceRows()
    clean_text = TextCleaner(spec, out.redactions)
    cleaned_sft = {row.line: row.messages for row in kept if row.messages}
    labels: dict[tuple, bool | None] = {}  # None: reviews disagree
    order: list[tuple[tuple, Messages, str]] = []

    def judge(messages: Messages, completion: str, label: bool) -> None:
        key = conversation_key(messages, completion)
        if key not in labels:
            labels[key] = label
            order.append((key, messages, completion))
        elif labels[key] != label:
            labels[key] = None

    for record in records:
        sft = cleaned_sft.get(record["id"])
        if sft is not None:
            prompt, correction = sft[:-1], sft[-1]["content"]
        elif record.get("correction") is None:  # never cleaned: a verdict or a rating alone
            prompt = [{**message, "content": clean_text(message["content"])} for message in conversations[record["id"]]]
            correction = None
            if not all(message["content"] for message in prompt):
                continue
        else:
            continue  # its SFT row was dropped by cleaning: nothing of it is trained on
        answer = clean_text(record["answer"])
        if not answer:
            continue
        for label in served_judgement(record):
            judge(prompt, answer, label)
        if correction is None:
            continue
        if correction == answer:
            judge(prompt, answer, True)
        else:
            out.pairs.append({"messages": prompt, "chosen": correction, "rejected": answer})
            judge(prompt, correction, True)
            judge(prompt, answer, False)

    for key, messages, completion in order:
        if labels[key] is None:
            out.contradicted += 1
        else:
            out.kto.append({"messages": messages, "completion": completion, "label": labels[key]})
    return out
