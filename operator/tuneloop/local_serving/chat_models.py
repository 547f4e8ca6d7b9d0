"""A run's base model and tuned model (base + adapter) loaded once, answering conversations greedily.

One copy of the base weights serves both: the evaluator's AnswerModels attaches the adapter with
peft and turns it off for the base model's answers. Prompts are built as the evaluator builds its
hold-out prompts: the run's system prompt first when the conversation has none (as the dataset
rows got it), then the base model tokenizer's chat template with the generation prompt. So an
answer here is the answer the evaluator scored for the same prompt.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from tuneloop.local_serving.run_model import BASE, TUNED, ServedRun
from tuneloop.offline_env import go_offline

ROLES = ("system", "user", "assistant")
log = logging.getLogger("tuneloop.local_serving")
MAX_BATCH = 8  # the evaluator's default batch size


class EvaluatorNotInstalled(Exception):
    pass


class ContextTooLong(ValueError):
    pass


@dataclass(frozen=True)
class Answer:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop", or "length" when the answer used all of max_new_tokens
    # The token counts re-tokenize the prompt and the answer: the evaluator's generation returns text only.


def with_system_prompt(messages: list[dict[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    """The conversation as training saw it: the run's system prompt first, unless it brings its own."""
    if system_prompt and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system_prompt}, *messages]
    return list(messages)


@dataclass
class _Request:
    variant: str
    messages: list[dict[str, str]]
    max_new_tokens: int
    future: Future = field(default_factory=Future)
    prompt: str = ""
    prompt_tokens: int = 0


class ChatModels:
    """`base` and `tuned` for one run.

    One worker thread generates: switching the adapter on and off changes the one shared model, and
    the tokenizer is not safe to share between threads. Requests that arrive while it generates wait
    in a queue and are then answered together, a batch per (model, max_new_tokens): the evaluator
    batches the same way, and in fp32 a batched answer is the answer alone (generation.py).
    """

    def __init__(self, run: ServedRun, max_batch: int = MAX_BATCH):
        go_offline()
        try:
            from tuneloop_evaluator.generation import AnswerModels
        except ImportError as error:
            raise EvaluatorNotInstalled("answering needs the evaluator's packages (torch, transformers, peft): "
                                        "pip install 'tuneloop[evaluator]'") from error
        self.run = run
        self.max_batch = max_batch
        self.models = AnswerModels(str(run.model_path))
        self.models.add(TUNED, run.adapter_path)
        self.context_tokens: int | None = getattr(self.models.model.config, "max_position_embeddings", None)
        self.queue: queue.Queue[_Request] = queue.Queue()
        threading.Thread(target=self._work, name="generation", daemon=True).start()

    def answer(self, variant: str, messages: list[dict[str, str]], max_new_tokens: int) -> Answer:
        """Greedy answer of `base` or `tuned` to the conversation (the last message is the one to answer).
        ContextTooLong when the conversation and the answer would not fit in the model's context."""
        if variant not in (BASE, TUNED):
            raise KeyError(f"no model {variant!r}: {BASE} or {TUNED}")
        request = _Request(variant, messages, max_new_tokens)
        self.queue.put(request)
        return request.future.result()

    def _work(self) -> None:
        while True:
            waiting = [self.queue.get()]
            while len(waiting) < self.max_batch and not self.queue.empty():
                waiting.append(self.queue.get_nowait())
            groups: dict[tuple[str, int], list[_Request]] = {}
            for request in waiting:
                try:
                    self._prepare(request)
                except Exception as error:  # handed to the caller, who reports it
                    request.future.set_exception(error)
                    continue
                groups.setdefault((request.variant, request.max_new_tokens), []).append(request)
            for (variant, max_new_tokens), batch in groups.items():
                started = time.monotonic()
                try:
                    self._generate(variant, batch, max_new_tokens)
                except Exception as error:
                    for request in batch:
                        if not request.future.done():
                            request.future.set_exception(error)
                    continue
                log.info("%s answered %d request(s) together in %.1fs", variant, len(batch), time.monotonic() - started)

    def _prepare(self, request: _Request) -> None:
        tokenizer = self.models.tokenizer
        request.prompt = tokenizer.apply_chat_template(with_system_prompt(request.messages, self.run.system_prompt),
                                                       tokenize=False, add_generation_prompt=True)
        request.prompt_tokens = len(tokenizer(request.prompt, add_special_tokens=False)["input_ids"])
        if self.context_tokens and request.prompt_tokens + request.max_new_tokens > self.context_tokens:
            raise ContextTooLong(f"the conversation is {request.prompt_tokens} tokens (with the system prompt); with "
                                 f"max_tokens {request.max_new_tokens} it exceeds the model's context of "
                                 f"{self.context_tokens} tokens")

    def _generate(self, variant: str, batch: list[_Request], max_new_tokens: int) -> None:
        texts = self.models.answers(None if variant == BASE else TUNED, [request.prompt for request in batch],
                                    max_new_tokens, batch_size=len(batch))
        for request, text in zip(batch, texts, strict=True):
            completion_tokens = len(self.models.tokenizer(text, add_special_tokens=False)["input_ids"])
            request.future.set_result(Answer(text, request.prompt_tokens, completion_tokens,
                                             "length" if completion_tokens >= max_new_tokens else "stop"))
