"""Greedy answers from the base model, the candidate and the champion, with as few model loads as possible.

Adapters (a folder with adapter_config.json) are attached to one base model under their own names
and switched with set_adapter; the base model answers with the adapters disabled. A folder that is
a whole model (a full fine-tune) is loaded on its own. Prompts are rendered with the tokenizer's
chat template exactly as the trainer rendered them (tuneloop.workload_data.chat.render_prompt).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from tuneloop.workload_data.chat import load_tokenizer, stop_token_ids
from tuneloop.workload_output import ProgressLog

log = logging.getLogger("tuneloop_evaluator")


def inference_dtype() -> torch.dtype:
    """bf16 (fp16) on a GPU; fp32 on a CPU.

    Measured with SmolLM2-135M on CPU: in bf16, a left-padded prompt's greedy answer often differs
    from the same prompt's answer alone (3 of 6 equal), so scores would depend on which prompts
    share a batch; in fp32 all 6 were equal, and batched generation was only ~15% slower.
    """
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def is_adapter(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file()


def _load_causal_lm(folder: Path | str, device: str) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=inference_dtype(), attn_implementation="sdpa")
    return model.to(device).eval()


class AnswerModels:
    """The base model plus named variants (adapters or whole models), answering batches of chat prompts."""

    def __init__(self, model_path: str):
        self.model_path = model_path
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = load_tokenizer(model_path)
        self.tokenizer.padding_side = "left"  # decoder-only generation appends to the right
        self.model: Any = _load_causal_lm(model_path, self.device)  # a PeftModel once an adapter is added
        self.whole_models: dict[str, Any] = {}
        self.adapters: list[str] = []

    def add(self, name: str, folder: Path) -> None:
        """Make `name` answerable: an adapter over the base model, or a whole model of its own."""
        if not is_adapter(folder):
            if not (folder / "config.json").is_file():
                raise FileNotFoundError(f"{folder}: neither an adapter (adapter_config.json) nor a model (config.json)")
            log.info("%s is a whole model (no adapter_config.json): loading it separately", folder)
            self.whole_models[name] = _load_causal_lm(folder, self.device)
            return
        from peft import PeftModel

        if not self.adapters:
            self.model = PeftModel.from_pretrained(self.model, folder, adapter_name=name)
        else:
            self.model.load_adapter(folder, adapter_name=name)
        self.model.eval()
        self.adapters.append(name)

    def _selected(self, name: str | None) -> tuple[Any, Any]:
        """(model to generate with, context it must run in) for a variant; None is the base model."""
        if name in self.whole_models:
            return self.whole_models[name], nullcontext()
        if name is None:
            return self.model, (self.model.disable_adapter() if self.adapters else nullcontext())
        if name not in self.adapters:
            raise KeyError(f"no model variant named {name!r}; loaded: {self.adapters + list(self.whole_models)}")
        self.model.set_adapter(name, inference_mode=True)
        return self.model, nullcontext()

    @torch.no_grad()
    def answers(self, name: str | None, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
        """Greedy answers in prompt order; prompts are batched by length to waste little on padding."""
        model, context = self._selected(name)
        order = sorted(range(len(prompts)), key=lambda index: len(prompts[index]))
        answers: list[str] = [""] * len(prompts)
        stop_ids = stop_token_ids(self.tokenizer, self.model)
        progress = ProgressLog(log, "evaluation: generating answers", len(prompts), f" ({name or 'base model'})")
        with context:
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                encoded = self.tokenizer([prompts[index] for index in batch], return_tensors="pt", padding=True,
                                         add_special_tokens=False).to(self.device)
                output = model.generate(
                    **encoded, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                    pad_token_id=self.tokenizer.pad_token_id, eos_token_id=stop_ids, use_cache=True,
                )
                new_tokens = output[:, encoded["input_ids"].shape[1]:]
                for index, tokens in zip(batch, new_tokens):
                    answers[index] = self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
                progress.advance(len(batch))
        progress.finish()
        return answers
