"""What Tuneloop adds to the transformers Trainer's loop, as TrainerCallbacks.

- `Progress`: the progress file and log lines (ProgressReporter) and MLflow metrics every step:
  loss, learning rate, tokens/s and an ETA that count from where this process started (a resumed
  run's first steps are not the whole run's); the validation loss at every evaluation. A stage of a two-stage
  run (sft-then-dpo) counts its steps after the stages before it and before those after it (in the progress and
  as the MLflow step: one step axis for the run), and logs its curves under its own metric names (StageMetrics).
- `StopOnSignal`: SIGTERM (a preempted pod) or SIGINT asks for a checkpoint and a stop at the end
  of the current step; every process of a distributed run agrees before stopping.
- `DivergenceGuard`: a non-finite step loss, or one above `loss_spike_factor` x the lowest so far,
  stops the run (LossDiverged); the checkpoints written before it stay. A preference stage's losses head for 0,
  so it measures spikes against its starting loss (ln 2 for DPO) at least.
- `CompleteCheckpoints`: marks each checkpoint complete once it is on disk (checkpoints.py).
- `EvaluationProgress`: progress lines during a long validation loss pass.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from transformers import TrainerCallback
from transformers.trainer_utils import has_length

from tuneloop.workload_output import ProgressLog

from tuneloop.api.workloads import TrainerProgress
from tuneloop.registry import metric_names
from tuneloop.registry.runs import MetricsLogger
from tuneloop_trainer.checkpoints import PREFIX, mark_complete
from tuneloop_trainer.progress import ProgressReporter

log = logging.getLogger("tuneloop_trainer")


class EvaluationProgress(TrainerCallback):
    """Log lines while the validation loss is measured (the base model's pass before training can take
    minutes): at most one every few seconds, none for a pass that ends sooner."""

    def __init__(self) -> None:
        self.progress: ProgressLog | None = None

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if not state.is_world_process_zero:
            return
        if self.progress is None:
            total = len(eval_dataloader) if eval_dataloader is not None and has_length(eval_dataloader) else 0
            self.progress = ProgressLog(log, "validation loss: batch", total)
        self.progress.advance()

    def on_evaluate(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.finish()
        self.progress = None


class LossDiverged(RuntimeError):
    """The loss became NaN/inf or exploded; the last good checkpoint is kept."""


@dataclass(frozen=True)
class StageMetrics:
    """The MLflow keys a training stage's curves go under."""

    train_loss: str = metric_names.TRAIN_LOSS
    validation_loss: str = metric_names.VALIDATION_LOSS
    learning_rate: str = metric_names.LEARNING_RATE
    grad_norm: str = metric_names.GRAD_NORM
    tokens_per_second: str = metric_names.TOKENS_PER_SECOND
    epoch: str = metric_names.EPOCH
    trainer_logs: dict[str, str] = field(default_factory=dict)  # the trainer's own log keys -> metric


SFT_METRICS = StageMetrics()
PREFERENCE_METRICS = StageMetrics(
    metric_names.PREFERENCE_TRAIN_LOSS, metric_names.PREFERENCE_VALIDATION_LOSS,
    metric_names.PREFERENCE_LEARNING_RATE, metric_names.PREFERENCE_GRAD_NORM,
    metric_names.PREFERENCE_TOKENS_PER_SECOND, metric_names.PREFERENCE_EPOCH, metric_names.PREFERENCE_TRL_METRICS)


class Progress(TrainerCallback):
    def __init__(self, reporter: ProgressReporter, metrics: MetricsLogger, names: StageMetrics = SFT_METRICS,
                 steps_before: int = 0, steps_after: int = 0):
        self.reporter, self.metrics, self.names = reporter, metrics, names
        self.steps_before, self.steps_after = steps_before, steps_after  # of the run's other stages
        self.started_at: float | None = None
        self.first_step = self.first_tokens = 0
        self.seconds, self.tokens = 0.0, 0  # optimizer steps run by this process, for tokens/s

    def total_steps(self, state) -> int:
        return self.steps_before + state.max_steps + self.steps_after

    def on_train_begin(self, args, state, control, **kwargs):
        self.reporter.start(self.total_steps(state))

    def on_step_begin(self, args, state, control, **kwargs):
        if self.started_at is None:  # after a resume: counted from the step this process starts at
            self.started_at, self.first_step, self.first_tokens = time.monotonic(), state.global_step, \
                state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs or self.started_at is None:
            return
        self.seconds = time.monotonic() - self.started_at
        self.tokens = state.num_input_tokens_seen - self.first_tokens
        speed = self.tokens / max(self.seconds, 1e-9)
        done = state.global_step - self.first_step
        epoch = state.epoch or 0.0
        step, total = self.steps_before + state.global_step, self.total_steps(state)
        self.reporter.step(TrainerProgress(
            stage="training", step=step, total_steps=total, epoch=epoch, loss=logs["loss"],
            tokens_per_second=speed, eta_seconds=self.seconds / max(done, 1) * (total - step)))
        names = self.names
        self.metrics.log(step, {
            names.train_loss: logs["loss"], names.learning_rate: logs.get("learning_rate"),
            names.tokens_per_second: speed, names.epoch: epoch, names.grad_norm: logs.get("grad_norm"),
            **{metric: logs.get(key) for key, metric in names.trainer_logs.items()}})

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        """Every evaluation of the validation split, the one before training (step 0) and the final one
        included: the validation curve beside the training loss."""
        if metrics and "eval_loss" in metrics:
            self.metrics.log(self.steps_before + state.global_step, {self.names.validation_loss: metrics["eval_loss"]})

    def on_train_end(self, args, state, control, **kwargs):
        self.reporter.close()


class StopOnSignal(TrainerCallback):
    def __init__(self) -> None:
        self.requested = False  # by a signal to this process
        self.stopped = False  # by any process of the run: a checkpoint was asked for

    def request(self, signum, frame) -> None:
        log.warning("received %s: saving a checkpoint and stopping", signal.Signals(signum).name)
        self.requested = True

    @contextmanager
    def installed(self) -> Iterator["StopOnSignal"]:
        previous = {sig: signal.signal(sig, self.request) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def on_step_end(self, args, state, control, **kwargs):
        if self.anyone_requested(args):
            self.stopped = True
            control.should_save = True
            control.should_training_stop = True

    def anyone_requested(self, args) -> bool:
        """A SIGTERM reaches pods one by one: a process that stopped alone would leave the others waiting."""
        if args.world_size == 1:
            return self.requested
        import torch
        import torch.distributed as dist

        flag = torch.tensor([int(self.requested)], device=args.device)
        dist.all_reduce(flag)
        return bool(flag.item())


class DivergenceGuard(TrainerCallback):
    def __init__(self, spike_factor: float, floor: float = 1e-3, stage: str = "training",
                 learning_rate_field: str = "spec.training.learningRate"):
        self.spike_factor, self.floor = spike_factor, floor  # spikes count against max(lowest, floor)
        self.stage, self.learning_rate_field = stage, learning_rate_field  # for the messages
        self.lowest: float | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        if not math.isfinite(loss):
            raise LossDiverged(f"{self.stage} loss became {loss} at step {state.global_step}; "
                               "the last good checkpoint is kept")
        if self.lowest is not None and loss > self.spike_factor * max(self.lowest, self.floor):
            baseline = f"the lowest, {self.lowest:.4g}" if self.lowest >= self.floor else f"{self.floor:.4g}"
            raise LossDiverged(f"{self.stage} loss exploded to {loss:.4g} at step {state.global_step} "
                               f"(more than {self.spike_factor}x {baseline}); "
                               f"lower {self.learning_rate_field}; the last good checkpoint is kept")
        self.lowest = loss if self.lowest is None else min(self.lowest, loss)


class CompleteCheckpoints(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{PREFIX}{state.global_step}"
            if folder.is_dir():
                mark_complete(folder)
                log.info("checkpoint saved: %s", folder)
