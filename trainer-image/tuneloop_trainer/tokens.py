"""Conversations as token ids, with loss labels only on what the model learns to say."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneloop.workload_data.rows import Example

IGNORE_INDEX = -100


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def tokenize(tokenizer: Any, example: Example, max_length: int) -> TokenizedExample:
    """Token ids and labels; labels are IGNORE_INDEX everywhere but the assistant's answers."""
    if example.text is not None:
        ids = tokenizer(example.text + (tokenizer.eos_token or ""), add_special_tokens=False)["input_ids"]
        return TokenizedExample(ids[:max_length], list(ids[:max_length]), truncated=len(ids) > max_length)
    messages = example.messages or []
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    answer_spans = []
    for index, message in enumerate(messages):
        if message["role"] == "assistant":
            start = len(tokenizer.apply_chat_template(messages[:index], tokenize=False, add_generation_prompt=True))
            end = len(tokenizer.apply_chat_template(messages[: index + 1], tokenize=False))
            answer_spans.append((start, end))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    labels = [
        token if any(start <= begin < end for start, end in answer_spans) else IGNORE_INDEX
        for token, (begin, _) in zip(ids, offsets)
    ]
    truncated = len(ids) > max_length
    return TokenizedExample(ids[:max_length], labels[:max_length], truncated=truncated)
