"""Does a GGUF file answer like the merged model it was written from? Both answer the first test rows
greedily, from prompts rendered exactly as the evaluator renders them (tuneloop.workload_data); the
GGUF file is read back with transformers (`gguf_file=`), which dequantises it to float32, so what is
measured is the loss of the file's types, not of a runtime.

Two figures: same_answers, the share of rows whose answers are identical, and token_agreement, the
share of the merged model's answer tokens that the GGUF model, fed the same prompt and the same earlier
answer tokens, predicts too (teacher-forced top-1). The second is the gate (GgufSpec.expected_agreement):
one early token that differs changes the whole rest of a greedy answer, so same_answers swings far more
with a file's type than the model's behaviour does. Measurements behind the thresholds: docs/export.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tuneloop.api.export import GgufAgreement
from tuneloop.workload_data.chat import render_prompt, stop_token_ids
from tuneloop.workload_data.rows import DataError, load_dataset

log = logging.getLogger("tuneloop_trainer.export")
BATCH_SIZE = 8


@dataclass
class Answer:
    prompt_ids: list[int]
    answer_ids: list[int]  # up to and including the stop token
    text: str


def check_prompts(test_path: str, system_prompt: str | None, rows: int, tokenizer: Any) -> list[str]:
    """The first `rows` prompts of the test split, rendered as the evaluator renders them."""
    examples = [example for example in load_dataset(Path(test_path), "auto", system_prompt).examples
                if example.messages][:rows]
    if not examples:
        raise DataError(f"{test_path}: no prompt/answer rows to check the GGUF file on")
    return [render_prompt(tokenizer, example) for example in examples]


@torch.no_grad()
def greedy_answers(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int) -> list[Answer]:
    """Greedy answers in prompt order, batched by prompt length with left padding."""
    stop_ids = stop_token_ids(tokenizer, model)
    tokenizer.padding_side = "left"
    order = sorted(range(len(prompts)), key=lambda index: len(prompts[index]))
    answers: list[Answer | None] = [None] * len(prompts)
    for start in range(0, len(order), BATCH_SIZE):
        batch = order[start:start + BATCH_SIZE]
        encoded = tokenizer([prompts[index] for index in batch], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(model.device)
        output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=stop_ids)
        width = encoded["input_ids"].shape[1]
        for row, index in enumerate(batch):
            prompt_ids = encoded["input_ids"][row][encoded["attention_mask"][row].bool()].tolist()
            new = output[row, width:].tolist()
            stop = next((position for position, token in enumerate(new) if token in stop_ids), None)
            answer_ids = new if stop is None else new[:stop + 1]
            answers[index] = Answer(prompt_ids, answer_ids,
                                    tokenizer.decode(answer_ids, skip_special_tokens=True).strip())
    return [answer for answer in answers if answer is not None]


@torch.no_grad()
def agreeing_tokens(model: Any, answers: list[Answer], pad_token_id: int) -> int:
    """How many answer tokens `model` predicts (top-1) given the prompt and the answer tokens before them."""
    agreeing = 0
    for start in range(0, len(answers), BATCH_SIZE):
        batch = [answer for answer in answers[start:start + BATCH_SIZE] if answer.answer_ids]
        if not batch:
            continue
        sequences = [answer.prompt_ids + answer.answer_ids for answer in batch]
        width = max(len(sequence) for sequence in sequences)
        ids = torch.tensor([sequence + [pad_token_id] * (width - len(sequence)) for sequence in sequences])
        mask = torch.tensor([[1] * len(sequence) + [0] * (width - len(sequence)) for sequence in sequences])
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
        for row, answer in enumerate(batch):  # right padding: positions and predictions are the unpadded ones
            first = len(answer.prompt_ids) - 1
            predicted = logits[row, first:first + len(answer.answer_ids)].argmax(dim=-1).tolist()
            agreeing += sum(ours == theirs for ours, theirs in zip(predicted, answer.answer_ids))
    return agreeing


def load_gguf_model(gguf_file: Path, device: str) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    return model.to(device).eval()


def compare(merged: Any, tokenizer: Any, gguf_file: Path, prompts: list[str], max_new_tokens: int,
            expected: float) -> GgufAgreement:
    """The merged model's answers against the GGUF file's, on the same prompts."""
    reference = greedy_answers(merged, tokenizer, prompts, max_new_tokens)
    exported = load_gguf_model(gguf_file, str(merged.device))
    answers = greedy_answers(exported, tokenizer, prompts, max_new_tokens)
    same = sum(ours.text == theirs.text for ours, theirs in zip(reference, answers, strict=True))
    agreeing = agreeing_tokens(exported, reference, tokenizer.pad_token_id)
    total = sum(len(answer.answer_ids) for answer in reference)
    token_agreement = agreeing / total if total else 1.0
    for ours, theirs in zip(reference, answers):
        if ours.text != theirs.text:
            log.info("differs: merged %r / gguf %r", ours.text[:120], theirs.text[:120])
            break
    return GgufAgreement(rows=len(prompts), same_answers=round(same / len(prompts), 4),
                         token_agreement=round(token_agreement, 4), expected=expected,
                         passed=token_agreement >= expected)
