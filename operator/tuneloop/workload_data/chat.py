"""The base model's tokenizer and the prompt its chat template renders: the trainer learns the answers
to these prompts, and the evaluator asks them, so both render them here."""

from __future__ import annotations

from typing import Any

from tuneloop.workload_data.rows import Example


def load_tokenizer(model_path: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise ValueError(f"{model_path}: the tokenizer has no chat template; use an instruct model or text rows")
    return tokenizer


def stop_token_ids(tokenizer: Any, model: Any) -> list[int]:
    """Where a greedy answer ends: the tokenizer's end-of-sequence token and any the model's generation config
    adds (an instruct model's end-of-turn token)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(token for token in ids if token is not None)


def render_prompt(tokenizer: Any, example: Example) -> str:
    """The text the model sees before it answers (chat template with the generation prompt)."""
    return tokenizer.apply_chat_template(example.prompt_messages, tokenize=False, add_generation_prompt=True)
