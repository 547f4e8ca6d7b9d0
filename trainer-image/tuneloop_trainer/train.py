"""The training run: data -> hold-out loss before -> optimise -> hold-out loss after -> adapter on disk."""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from tuneloop.api.finetunejob import DatasetStats
from tuneloop.api.workloads import Preview, TrainerProgress, TrainerResult, TrainerWorkload
from tuneloop_trainer import data as data_module
from tuneloop_trainer.batches import make_batch, summed_loss
from tuneloop_trainer.data import DataError, Example, TokenizedExample
from tuneloop_trainer.model import causal_lm, count_parameters, load_model, load_tokenizer
from tuneloop_trainer.progress import ProgressReporter

log = logging.getLogger("tuneloop_trainer")

SCHEDULER_NAMES = {
    "cosine": "cosine",
    "linear": "linear",
    "constant": "constant_with_warmup",
    "warmup-stable-decay": "warmup_stable_decay",
}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def micro_batches(examples: list[TokenizedExample], size: int, seed: int, epoch: int) -> list[list[TokenizedExample]]:
    """The epoch's examples in a seeded order, cut into micro-batches; same seed, same order."""
    order = list(range(len(examples)))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return [[examples[i] for i in order[start:start + size]] for start in range(0, len(order), size)]


def steps_per_epoch(examples: int, micro_batch_size: int, accumulation: int) -> int:
    return math.ceil(math.ceil(examples / micro_batch_size) / accumulation)


@torch.no_grad()
def hold_out_loss(model: torch.nn.Module, examples: list[TokenizedExample], workload: TrainerWorkload,
                  pad_token_id: int, device: torch.device) -> float:
    """Mean cross-entropy per answer token over the hold-out examples."""
    model.eval()
    total, count = 0.0, 0
    size = workload.training.micro_batch_size
    for start in range(0, len(examples), size):
        batch = make_batch(examples[start:start + size], workload.training.packing, pad_token_id).to(device)
        total += float(summed_loss(causal_lm(model), batch))
        count += batch.target_tokens
    model.train()
    return total / max(count, 1)


@torch.no_grad()
def generate_answers(model: torch.nn.Module, tokenizer: Any, examples: list[Example], device: torch.device) -> list[str]:
    """Greedy answers, as the evaluator will produce them."""
    model.eval()
    answers = []
    for example in examples:
        prompt = data_module.render_prompt(tokenizer, example)
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
        budget = len(tokenizer(example.reference, add_special_tokens=False)["input_ids"]) + 32
        output = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=min(budget, 256), do_sample=False,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, use_cache=True,
        )
        answers.append(tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True).strip())
    model.train()
    return answers


def save_output(model: torch.nn.Module, tokenizer: Any, target: Path) -> None:
    """Write safetensors weights, config and tokenizer; the folder appears only when complete."""
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)


def run(workload: TrainerWorkload, reporter: ProgressReporter) -> TrainerResult:
    started = time.monotonic()
    training = workload.training
    seed_everything(training.seed)
    output_dir = Path(workload.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    reporter.stage("validating-data")
    dataset = data_module.load_jsonl(Path(workload.dataset_path), workload.dataset.format,
                                     workload.dataset.system_prompt)
    if dataset.format == "text" and workload.preview_examples:
        log.info("text rows have no prompt/answer split: no previews")
    train_rows, hold_out_rows = data_module.split_hold_out(
        dataset.examples, workload.dataset.hold_out_fraction, workload.dataset.seed)
    hold_out_path = output_dir / "hold-out.jsonl"
    data_module.write_jsonl(hold_out_path, hold_out_rows)

    tokenizer = load_tokenizer(workload.model_path)
    train_set = [data_module.tokenize(tokenizer, row, training.max_seq_length) for row in train_rows]
    hold_out_set = [data_module.tokenize(tokenizer, row, training.max_seq_length) for row in hold_out_rows]
    for row, tokenized in zip(train_rows, train_set):
        if tokenized.trained_tokens == 0:
            raise DataError(f"{dataset.path}:{row.line}: no answer tokens left within maxSeqLength "
                            f"{training.max_seq_length}; raise spec.training.maxSeqLength or shorten the row")
    truncated = sum(example.truncated for example in train_set)
    if truncated:
        log.warning("%d training rows were longer than maxSeqLength %d and were truncated",
                    truncated, training.max_seq_length)
    stats = DatasetStats(
        rows=len(dataset.examples), train_rows=len(train_set), hold_out_rows=len(hold_out_set),
        train_tokens=sum(len(example.input_ids) for example in train_set), format=dataset.format,
        sha256=dataset.sha256,
    )
    log.info("dataset %s: %d rows (%s), %d train / %d hold-out, %d train tokens, sha256 %s",
             dataset.path, stats.rows, stats.format, stats.train_rows, stats.hold_out_rows, stats.train_tokens,
             stats.sha256[:12])

    model = load_model(workload.model_path, workload.method, training)
    device = next(model.parameters()).device
    trainable, total = count_parameters(model)
    log.info("model %s: %s, %.2fM of %.1fM parameters trainable, weights %s on %s", workload.model_path,
             workload.method.type, trainable / 1e6, total / 1e6, next(model.parameters()).dtype, device)
    pad_id = tokenizer.pad_token_id

    preview_rows = hold_out_rows[: workload.preview_examples] if dataset.format != "text" else []
    base_answers = generate_answers(model, tokenizer, preview_rows, device)
    loss_before = hold_out_loss(model, hold_out_set, workload, pad_id, device)
    log.info("hold-out loss before training: %.4f", loss_before)

    reporter.stage("training")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=training.learning_rate, weight_decay=training.weight_decay)
    per_epoch = steps_per_epoch(len(train_set), training.micro_batch_size, training.gradient_accumulation_steps)
    total_steps = per_epoch * training.epochs
    from transformers import get_scheduler

    scheduler_kwargs = {}
    if training.lr_scheduler == "warmup-stable-decay":
        scheduler_kwargs = {"scheduler_specific_kwargs": {"num_decay_steps": max(1, total_steps // 5)}}
    scheduler = get_scheduler(
        SCHEDULER_NAMES[training.lr_scheduler], optimizer,
        num_warmup_steps=int(training.warmup_ratio * total_steps), num_training_steps=total_steps,
        **scheduler_kwargs,
    )

    model.train()
    reporter.start(total_steps)
    step, tokens_seen, recent_losses = 0, 0, []
    train_started = time.monotonic()
    for epoch in range(training.epochs):
        batches = micro_batches(train_set, training.micro_batch_size, training.seed, epoch)
        for group_start in range(0, len(batches), training.gradient_accumulation_steps):
            group = [make_batch(examples, training.packing, pad_id)
                     for examples in batches[group_start:group_start + training.gradient_accumulation_steps]]
            group_targets = sum(batch.target_tokens for batch in group)
            group_loss = 0.0
            for batch in group:
                loss = summed_loss(causal_lm(model), batch.to(device)) / group_targets
                loss.backward()
                group_loss += float(loss.detach())
                tokens_seen += batch.tokens
            if not math.isfinite(group_loss):
                raise FloatingPointError(f"training loss became {group_loss} at step {step + 1}")
            torch.nn.utils.clip_grad_norm_(params, training.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            recent_losses = (recent_losses + [group_loss])[-per_epoch:]
            elapsed = time.monotonic() - train_started
            reporter.step(TrainerProgress(
                stage="training", step=step, total_steps=total_steps, epoch=step / per_epoch, loss=group_loss,
                tokens_per_second=tokens_seen / elapsed, eta_seconds=elapsed / step * (total_steps - step),
            ))
    reporter.close()
    train_seconds = time.monotonic() - train_started

    loss_after = hold_out_loss(model, hold_out_set, workload, pad_id, device)
    log.info("hold-out loss after training: %.4f (before %.4f)", loss_after, loss_before)
    tuned_answers = generate_answers(model, tokenizer, preview_rows, device)

    reporter.stage("saving")
    adapter_dir = output_dir / ("model" if workload.method.type == "full" else "adapter")
    save_output(model, tokenizer, adapter_dir)
    return TrainerResult(
        succeeded=True,
        dataset=stats,
        hold_out_loss_before=loss_before,
        hold_out_loss_after=loss_after,
        train_loss=sum(recent_losses) / max(len(recent_losses), 1),
        steps=step,
        tokens_trained=tokens_seen,
        tokens_per_second=tokens_seen / max(train_seconds, 1e-9),
        seconds=time.monotonic() - started,
        adapter_path=str(adapter_dir),
        hold_out_path=str(hold_out_path),
        previews=[
            Preview(prompt=row.prompt_messages[-1]["content"], reference=row.reference, base=base, tuned=tuned)
            for row, base, tuned in zip(preview_rows, base_answers, tuned_answers)
        ],
    )
