"""The training run: data -> hold-out loss before -> optimise (resumable) -> best adapter on disk."""

from __future__ import annotations

import logging
import math
import random
import shutil
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from tuneloop.api.workloads import Evaluation, Preview, TrainerProgress, TrainerResult, TrainerWorkload
from tuneloop_trainer import data as data_module
from tuneloop_trainer.batches import make_batch, packed_batch, summed_loss
from tuneloop_trainer.checkpoints import CheckpointStore, LoopState
from tuneloop_trainer.data import Example, TokenizedExample
from tuneloop_trainer.distributed import (
    World, any_flag, barrier, init_world, shutdown, sum_float, sum_gradients, sum_int,
)
from tuneloop_trainer.model import causal_lm, count_parameters, load_model, load_tokenizer
from tuneloop_trainer.prepare import PreparedData, prepare
from tuneloop_trainer.progress import ProgressReporter
from tuneloop_trainer.tracking import MetricsLogger

log = logging.getLogger("tuneloop_trainer")

SCHEDULER_NAMES = {
    "cosine": "cosine",
    "linear": "linear",
    "constant": "constant_with_warmup",
    "warmup-stable-decay": "warmup_stable_decay",
}


class Preempted(RuntimeError):
    """SIGTERM (or SIGINT) arrived; a checkpoint was saved and a restart resumes from it."""


class LossDiverged(RuntimeError):
    """The loss became NaN/inf or exploded; the last good checkpoint is kept."""


def micro_batches(examples: list[TokenizedExample], size: int, seed: int, epoch: int) -> list[list[TokenizedExample]]:
    """The epoch's examples in a seeded order, cut into micro-batches; same seed, same order."""
    order = list(range(len(examples)))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return [[examples[i] for i in order[start:start + size]] for start in range(0, len(order), size)]


def steps_per_epoch(examples: int, micro_batch_size: int, accumulation: int, world_size: int = 1) -> int:
    return math.ceil(math.ceil(examples / micro_batch_size) / (accumulation * world_size))


@torch.no_grad()
def hold_out_loss(model: torch.nn.Module, examples: list[TokenizedExample], size: int, packing: bool,
                  pad_token_id: int, device: torch.device) -> float:
    """Mean cross-entropy per answer token over the hold-out examples."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), size):
        batch = make_batch(examples[start:start + size], packing, pad_token_id).to(device)
        total += float(summed_loss(causal_lm(model), batch))
        count += batch.target_tokens
    model.train()
    return total / max(count, 1)


@torch.no_grad()
def packing_is_exact(model: torch.nn.Module, examples: list[TokenizedExample], device: torch.device) -> bool:
    """Does this model keep packed examples apart? Two examples scored packed and one by one must agree."""
    if len(examples) < 2:
        return True
    pair = sorted(examples, key=lambda e: len(e.input_ids))[:2]
    together = float(summed_loss(causal_lm(model), packed_batch(pair).to(device)))
    apart = sum(float(summed_loss(causal_lm(model), packed_batch([e]).to(device))) for e in pair)
    return abs(together - apart) <= 1e-2 * max(abs(apart), 1e-6)


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


def make_optimizer(params: list[torch.nn.Parameter], workload: TrainerWorkload) -> torch.optim.Optimizer:
    training = workload.training
    choice = training.optimizer
    if choice == "auto":
        choice = "paged-adamw-8bit" if torch.cuda.is_available() and _has_bitsandbytes() else "adamw"
    if choice == "paged-adamw-8bit":
        if not torch.cuda.is_available():
            raise ValueError("spec.training.optimizer: paged-adamw-8bit needs CUDA; use adamw or auto")
        import bitsandbytes

        return bitsandbytes.optim.PagedAdamW8bit(params, lr=training.learning_rate, weight_decay=training.weight_decay,
                                                 betas=(0.9, training.adam_beta2))
    return torch.optim.AdamW(params, lr=training.learning_rate, weight_decay=training.weight_decay,
                             betas=(0.9, training.adam_beta2))


def _has_bitsandbytes() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:
        return False
    return True


def make_scheduler(optimizer: torch.optim.Optimizer, workload: TrainerWorkload, total_steps: int):
    from transformers import get_scheduler

    training = workload.training
    extra = {}
    if training.lr_scheduler == "warmup-stable-decay":
        extra = {"scheduler_specific_kwargs": {"num_decay_steps": max(1, total_steps // 5)}}
    return get_scheduler(SCHEDULER_NAMES[training.lr_scheduler], optimizer,
                         num_warmup_steps=int(training.warmup_ratio * total_steps),
                         num_training_steps=total_steps, **extra)


@contextmanager
def stop_requests() -> Iterator[dict[str, bool]]:
    """SIGTERM (a preempted pod) and SIGINT (Ctrl-C) ask the loop to checkpoint and stop."""
    flag = {"stop": False}

    def request(signum, frame):
        log.warning("received %s: saving a checkpoint and stopping", signal.Signals(signum).name)
        flag["stop"] = True

    previous = {sig: signal.signal(sig, request) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def save_output(model: torch.nn.Module, tokenizer: Any, target: Path) -> None:
    """Write safetensors weights, config and tokenizer; the folder appears only when complete."""
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)


def save_merged(workload: TrainerWorkload, adapter_dir: Path, tokenizer: Any, target: Path) -> None:
    """Base model (bf16, unquantised) + adapter folded into one safetensors model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(workload.model_path, dtype=torch.bfloat16)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    save_output(merged, tokenizer, target)


def run(workload: TrainerWorkload, reporter: ProgressReporter) -> TrainerResult:
    world = init_world()
    try:
        return Training(workload, reporter if world.is_main else ProgressReporter(None, quiet=True), world).run()
    finally:
        shutdown(world)


class Training:
    def __init__(self, workload: TrainerWorkload, reporter: ProgressReporter, world: World):
        self.workload, self.reporter, self.world = workload, reporter, world
        self.training = workload.training
        self.output_dir = Path(workload.output_dir)
        self.started = time.monotonic()
        self.loop_seconds, self.loop_tokens = 0.0, 0  # optimisation steps run by this process, for tokens/s

    def run(self) -> TrainerResult:
        workload, training, world = self.workload, self.training, self.world
        torch.manual_seed(training.seed)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.reporter.stage("validating-data")
        tokenizer = load_tokenizer(workload.model_path)
        data = prepare(workload, tokenizer)
        if world.is_main:
            data_module.write_jsonl(self.output_dir / "hold-out.jsonl", data.hold_out_rows)

        model = load_model(workload.model_path, workload.method, training)
        device = next(model.parameters()).device
        trainable, total = count_parameters(model)
        log.info("model %s: %s, %.2fM of %.1fM parameters trainable, weights %s on %s, %d process(es)",
                 workload.model_path, workload.method.type, trainable / 1e6, total / 1e6,
                 next(model.parameters()).dtype, device, world.size)
        self.packing = training.packing
        if self.packing and not packing_is_exact(model, data.train, device):
            log.warning("this model lets packed examples see each other; training with padded batches instead")
            self.packing = False

        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_optimizer(params, workload)
        per_epoch = steps_per_epoch(len(data.train), training.micro_batch_size,
                                    training.gradient_accumulation_steps, world.size)
        total_steps = per_epoch * training.epochs
        scheduler = make_scheduler(optimizer, workload, total_steps)
        store = CheckpointStore(self.output_dir, training.checkpoints.keep_last)
        state, resumed_from = self.resume(store, model, optimizer, scheduler, data)

        pad_id = tokenizer.pad_token_id
        preview_rows = data.hold_out_rows[: workload.preview_examples] if data.stats.format != "text" else []
        if state.hold_out_loss_before is None:
            state.base_answers = generate_answers(model, tokenizer, preview_rows, device) if world.is_main else []
            state.hold_out_loss_before = self.evaluate(model, data, pad_id, device)
        log.info("hold-out loss before training: %.4f", state.hold_out_loss_before)

        metrics = MetricsLogger(workload.tracking if world.is_main else None,
                                {**self.params_to_log(data), "total_steps": total_steps})
        self.reporter.stage("training")
        stopped_early = False
        try:
            stopped_early = self.loop(model, optimizer, scheduler, params, store, state, data, metrics,
                                      per_epoch, total_steps, pad_id, device)
        except BaseException:
            metrics.close("FAILED")
            raise
        finally:
            self.reporter.close()

        if training.early_stopping.enabled:
            best = store.restore_best(model)
            if best is not None:
                log.info("output is the best checkpoint, step %d (hold-out loss %.4f)", best, state.best_loss)
        loss_after = self.evaluate(model, data, pad_id, device)
        log.info("hold-out loss after training: %.4f (before %.4f)", loss_after, state.hold_out_loss_before)
        metrics.log(state.step, hold_out_loss_final=loss_after)

        result = TrainerResult(
            succeeded=True, dataset=data.stats, cleaning=data.cleaning, replay_rows=data.replay_rows,
            hold_out_loss_before=state.hold_out_loss_before, hold_out_loss_after=loss_after,
            train_loss=sum(state.recent_losses) / max(len(state.recent_losses), 1),
            steps=state.step, tokens_trained=state.tokens_seen,
            tokens_per_second=self.loop_tokens / max(self.loop_seconds, 1e-9),
            resumed_from_step=resumed_from, stopped_early=stopped_early, best_step=state.best_step,
            evaluations=[Evaluation.model_validate(e) for e in state.evaluations],
            mlflow_run_id=metrics.run_id,
        )
        if world.is_main:
            tuned = generate_answers(model, tokenizer, preview_rows, device)
            result.previews = [
                Preview(prompt=row.prompt_messages[-1]["content"], reference=row.reference, base=base, tuned=answer)
                for row, base, answer in zip(preview_rows, state.base_answers, tuned)
            ]
            self.reporter.stage("saving")
            adapter_dir = self.output_dir / ("model" if workload.method.type == "full" else "adapter")
            save_output(model, tokenizer, adapter_dir)
            result.adapter_path = str(adapter_dir)
            result.hold_out_path = str(self.output_dir / "hold-out.jsonl")
            if workload.merge_adapter and workload.method.type != "full":
                save_merged(workload, adapter_dir, tokenizer, self.output_dir / "merged")
                result.merged_path = str(self.output_dir / "merged")
        barrier(world)
        metrics.close()
        result.seconds = time.monotonic() - self.started
        return result

    def params_to_log(self, data: PreparedData) -> dict[str, Any]:
        workload = self.workload
        flat = {"base_model": workload.model_path, "method": workload.method.type,
                "dataset_sha256": data.stats.sha256, "train_rows": data.stats.train_rows,
                "world_size": self.world.size}
        for section, model in (("lora", workload.method.lora), ("training", workload.training)):
            for key, value in model.to_wire().items():
                if not isinstance(value, dict):
                    flat[f"{section}.{key}"] = value
        return flat

    def evaluate(self, model, data: PreparedData, pad_id: int, device: torch.device) -> float:
        return hold_out_loss(model, data.hold_out, self.training.micro_batch_size, self.packing, pad_id, device)

    def resume(self, store: CheckpointStore, model, optimizer, scheduler, data: PreparedData) -> tuple[LoopState, int | None]:
        latest = store.latest()
        if latest is None:
            return LoopState(dataset_sha256=data.stats.sha256), None
        state = store.restore(latest, model, optimizer, scheduler)
        if state.dataset_sha256 != data.stats.sha256:
            log.warning("checkpoint %s was trained on other data (sha256 %s); starting over", latest,
                        (state.dataset_sha256 or "?")[:12])
            return LoopState(dataset_sha256=data.stats.sha256), None
        log.info("resuming from %s (step %d, epoch %d)", latest, state.step, state.epoch)
        return state, state.step

    def loop(self, model, optimizer, scheduler, params, store: CheckpointStore, state: LoopState,
             data: PreparedData, metrics: MetricsLogger, per_epoch: int, total_steps: int, pad_id: int,
             device: torch.device) -> bool:
        """Optimise until the last epoch ends or early stopping triggers; True when it stopped early."""
        training, world = self.training, self.world
        per_step = training.gradient_accumulation_steps * world.size
        self.reporter.start(total_steps)
        loop_started, tokens_at_start, step_at_start = time.monotonic(), state.tokens_seen, state.step
        with stop_requests() as stop:
            while state.epoch < training.epochs:
                batches = micro_batches(data.train, training.micro_batch_size, training.seed, state.epoch)
                while state.batch_in_epoch < len(batches):
                    group = batches[state.batch_in_epoch:state.batch_in_epoch + per_step]
                    mine = [make_batch(examples, self.packing, pad_id) for examples in group[world.rank::world.size]]
                    step_targets = sum_int(world, sum(batch.target_tokens for batch in mine), device)
                    losses = []  # read once per step: no host synchronisation per micro-batch
                    for batch in mine:
                        loss = summed_loss(causal_lm(model), batch.to(device)) / step_targets
                        loss.backward()
                        losses.append(loss.detach())
                    sum_gradients(world, params)
                    local_loss = float(torch.stack(losses).double().sum()) if losses else 0.0
                    step_loss = sum_float(world, local_loss, device)
                    self.check_divergence(step_loss, state)
                    torch.nn.utils.clip_grad_norm_(params, training.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)

                    state.step += 1
                    state.batch_in_epoch += per_step
                    state.tokens_seen += sum_int(world, sum(batch.tokens for batch in mine), device)
                    state.lowest_loss = step_loss if state.lowest_loss is None else min(state.lowest_loss, step_loss)
                    state.recent_losses = (state.recent_losses + [step_loss])[-per_epoch:]
                    elapsed = time.monotonic() - loop_started
                    self.loop_seconds, self.loop_tokens = elapsed, state.tokens_seen - tokens_at_start
                    speed = self.loop_tokens / max(elapsed, 1e-9)
                    self.reporter.step(TrainerProgress(
                        stage="training", step=state.step, total_steps=total_steps, epoch=state.step / per_epoch,
                        loss=step_loss, tokens_per_second=speed,
                        eta_seconds=elapsed / (state.step - step_at_start) * (total_steps - state.step),
                    ))
                    metrics.log(state.step, step=state.step, loss=step_loss, learning_rate=scheduler.get_last_lr()[0],
                                tokens_per_second=speed, epoch=state.step / per_epoch)

                    if training.early_stopping.enabled and state.step % training.early_stopping.eval_every_steps == 0:
                        if self.evaluate_and_decide(model, store, state, data, metrics, pad_id, device):
                            return True
                    if training.checkpoints.every_steps and state.step % training.checkpoints.every_steps == 0:
                        self.checkpoint(store, model, optimizer, scheduler, state)
                    if any_flag(world, stop["stop"], device):
                        self.checkpoint(store, model, optimizer, scheduler, state)
                        raise Preempted(f"stopped by a signal at step {state.step}; "
                                        "the next run resumes from its checkpoint")
                state.epoch += 1
                state.batch_in_epoch = 0
        return False

    def check_divergence(self, step_loss: float, state: LoopState) -> None:
        spike = self.training.loss_spike_factor
        if not math.isfinite(step_loss):
            raise LossDiverged(f"training loss became {step_loss} at step {state.step + 1}; "
                               "the last good checkpoint is kept")
        if state.lowest_loss is not None and step_loss > spike * max(state.lowest_loss, 1e-3):
            raise LossDiverged(f"training loss exploded to {step_loss:.4g} at step {state.step + 1} "
                               f"(more than {spike}x the lowest, {state.lowest_loss:.4g}); "
                               "lower spec.training.learningRate; the last good checkpoint is kept")

    def checkpoint(self, store: CheckpointStore, model, optimizer, scheduler, state: LoopState) -> None:
        if self.world.is_main:
            store.save(model, optimizer, scheduler, state)
        barrier(self.world)

    def evaluate_and_decide(self, model, store: CheckpointStore, state: LoopState, data: PreparedData,
                            metrics: MetricsLogger, pad_id: int, device: torch.device) -> bool:
        """Measure hold-out loss, keep the best weights; True when patience has run out."""
        rule = self.training.early_stopping
        loss = self.evaluate(model, data, pad_id, device)
        state.evaluations.append({"step": state.step, "holdOutLoss": loss})
        metrics.log(state.step, hold_out_loss=loss)
        if state.best_loss is None or loss < state.best_loss - rule.min_delta:
            state.best_loss, state.best_step = loss, state.step
            state.evaluations_without_improvement = 0
            if self.world.is_main:
                store.save_best(model, state.step, loss)
            barrier(self.world)
        else:
            state.evaluations_without_improvement += 1
        log.info("step %d hold-out loss %.4f (best %.4f at step %d)", state.step, loss, state.best_loss,
                 state.best_step)
        if state.evaluations_without_improvement >= rule.patience:
            log.info("early stopping at step %d: no improvement in %d evaluations", state.step, rule.patience)
            return True
        return False
