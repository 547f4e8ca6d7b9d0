"""The training run: data -> validation loss before -> the objective's stages, each resumable -> the adapter on
disk. Objective sft: TRL's SFTTrainer. dpo, kto: TRL's DPOTrainer or KTOTrainer on a new adapter (preference.py).
sft-then-dpo: SFT, then DPO going on with the same adapter against the SFT adapter as reference.

Every objective reports the same validation loss (dataset.uri's validation rows, SFT-shaped) before and after, so
the number means one thing across jobs; a preference stage adds its own measurements (TrainerResult.preference).
Progress counts the steps of all stages together: sft-then-dpo's total is SFT steps + preference steps."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tuneloop.api.finetunejob import PreferenceResults
from tuneloop.api.workloads import Evaluation, Preview, TrainerResult, TrainerWorkload
from tuneloop.registry import metric_names
from tuneloop.registry.lineage import BASE_MODEL_TAG, DATASET_SHA256_TAG
from tuneloop.registry.runs import DatasetInput, MetricsLogger
from tuneloop.registry.test_rows import log_test_rows
from tuneloop.workload_data.chat import load_tokenizer, render_prompt
from tuneloop.workload_data.rows import Example, write_jsonl
from tuneloop_trainer.callbacks import (
    PREFERENCE_METRICS,
    CompleteCheckpoints,
    DivergenceGuard,
    EvaluationProgress,
    LossDiverged,
    Progress,
    StopOnSignal,
)
from tuneloop_trainer.checkpoints import (
    complete_checkpoints,
    missing_files,
    remove_all,
    remove_incomplete,
    step_of,
)
from tuneloop_trainer.efficiency import Efficiency, ModelFlops, this_device
from tuneloop_trainer.model import count_parameters, load_model, with_default_system_prompt
from tuneloop_trainer.preference import (
    drop_reference,
    measure,
    own_forward,
    preference_loss,
    preference_steps,
    preference_trainer,
)
from tuneloop_trainer.prepare import PreparedData, prepare
from tuneloop_trainer.progress import ProgressReporter
from tuneloop_trainer.sft import as_dataset, sft_config, sft_trainer_class, steps_per_epoch

TEST_FILE = "test.jsonl"  # the test split, written for the evaluator and logged to the run
SFT_STAGE_FILE = "sft-stage.json"  # sft-then-dpo: the SFT stage is done (its adapter is in sft-adapter/)
PREFERENCE_BEFORE_FILE = "preference-before.json"
SFT_OBJECTIVES = ("sft", "sft-then-dpo")

log = logging.getLogger("tuneloop_trainer")
__all__ = ["LossDiverged", "Preempted", "Training", "run"]


class Preempted(RuntimeError):
    """SIGTERM (or SIGINT) arrived; a checkpoint was saved and a restart resumes from it."""


class Saved:
    """A record kept beside the checkpoints, valid only for the data it was made from: a resumed run does not
    measure (or train) it again."""

    dataset_sha256: str

    @classmethod
    def load(cls, path: Path, sha256: str):
        try:
            saved = cls(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None
        return saved if saved.dataset_sha256 == sha256 else None

    def save(self, path: Path) -> None:
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(json.dumps(asdict(self)), encoding="utf-8")
        os.replace(partial, path)


@dataclass
class BeforeTraining(Saved):
    """Measured once per dataset."""

    dataset_sha256: str
    validation_loss: float
    base_answers: list[str] = field(default_factory=list)


@dataclass
class StageOutcome(Saved):
    """What a training stage (SFT or preference) did, for the result. sft-then-dpo keeps its SFT stage's in
    `sft-stage.json`, beside the SFT adapter."""

    dataset_sha256: str
    steps: int
    train_loss: float  # the mean over the last epoch's steps
    tokens_trained: int
    tokens_timed: int  # tokens and seconds of the steps this process ran, for tokens/s
    seconds_timed: float
    resumed_from_step: int | None = None
    stopped_early: bool = False
    best_step: int | None = None
    evaluations: list[dict[str, float]] = field(default_factory=list)
    restored: bool = False  # finished by an earlier attempt

    @classmethod
    def of(cls, trainer, progress: Progress, sha256: str, epochs: int, resumed_from: int | None,
           **more: Any) -> "StageOutcome":
        state = trainer.state
        per_epoch = max(state.max_steps // max(epochs, 1), 1)
        losses = [entry["loss"] for entry in state.log_history if "loss" in entry][-per_epoch:]
        return cls(sha256, steps=state.global_step, train_loss=sum(losses) / max(len(losses), 1),
                   tokens_trained=int(state.num_input_tokens_seen), tokens_timed=progress.tokens,
                   seconds_timed=progress.seconds, resumed_from_step=resumed_from, **more)


@dataclass
class PreferenceMeasured(Saved):
    """The preference stage measured on its held-out rows (preference.Measurement); the one before the stage is
    kept, keyed by the preference rows, the reference and the loss."""

    dataset_sha256: str
    loss: float
    margin: float | None = None
    accuracy: float | None = None

    def metrics(self) -> dict[str, float | None]:
        return {metric_names.PREFERENCE_VALIDATION_LOSS: self.loss, metric_names.PREFERENCE_MARGIN: self.margin,
                metric_names.PREFERENCE_ACCURACY: self.accuracy}

    def describe(self) -> str:
        margin = "" if self.margin is None else f", margin {self.margin:+.3f}, chosen preferred {self.accuracy:.0%}"
        return f"loss {self.loss:.4f}{margin}"


def resumed_from(sft: StageOutcome | None, preference: StageOutcome | None) -> int | None:
    """The step (counted over both stages) this attempt started from; None when it started from scratch."""
    if preference is not None and preference.resumed_from_step is not None:
        return (sft.steps if sft else 0) + preference.resumed_from_step
    if sft is not None and sft.restored:
        return sft.steps
    return sft.resumed_from_step if sft else None


@torch.no_grad()
def generate_answers(model: torch.nn.Module, tokenizer: Any, examples: list[Example]) -> list[str]:
    """Greedy answers, as the evaluator will produce them."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    answers = []
    for example in examples:
        prompt = render_prompt(tokenizer, example)
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
        budget = len(tokenizer(example.reference, add_special_tokens=False)["input_ids"]) + 32
        output = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=min(budget, 256), do_sample=False,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, use_cache=True,
        )
        answers.append(tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True).strip())
    model.train(was_training)
    return answers


def loadable(folder: Path) -> str | None:
    """Why a complete checkpoint cannot be resumed from (None: it can): every file is opened as the
    Trainer will open it, the tensors memory-mapped rather than read."""
    from safetensors import safe_open

    missing = missing_files(folder)
    if missing is not None:
        return missing
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as opened:
                    opened.keys()
            elif path.suffix in (".pt", ".pth", ".bin"):
                torch.load(path, map_location="cpu", weights_only=False, mmap=True)
            elif path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
        except Exception as error:  # truncated, corrupt, unreadable: whatever it is, not this one
            return f"{path.name}: {type(error).__name__}: {error}"
    return None


def save_output(trainer: Any, tokenizer: Any, target: Path) -> None:
    """Safetensors weights, config and tokenizer; the folder appears only when complete. Every process
    takes part (an FSDP model is gathered); the first one writes."""
    partial = target.with_name(f".{target.name}.partial")
    if trainer.is_world_process_zero():
        shutil.rmtree(partial, ignore_errors=True)
    trainer.save_model(str(partial))
    if trainer.is_world_process_zero():
        (partial / "training_args.bin").unlink(missing_ok=True)  # a pickle of the Trainer's arguments
        tokenizer.save_pretrained(partial)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)


def run(workload: TrainerWorkload, reporter: ProgressReporter) -> TrainerResult:
    main = os.environ.get("RANK", "0") == "0"
    return Training(workload, reporter if main else ProgressReporter(None, quiet=True)).run()


class Training:
    def __init__(self, workload: TrainerWorkload, reporter: ProgressReporter):
        self.workload, self.reporter = workload, reporter
        self.training = workload.training
        self.output_dir = Path(workload.output_dir)
        self.checkpoints = self.output_dir / "checkpoints"
        self.preference_checkpoints = self.output_dir / "checkpoints-preference"
        self.sft_adapter = self.output_dir / "sft-adapter"  # sft-then-dpo: the SFT stage's adapter, its reference
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.started = time.monotonic()

    def run(self) -> TrainerResult:
        """prepare -> before -> [SFT] -> [DPO or KTO] -> validation loss after -> previews -> adapter on disk."""
        workload, training = self.workload, self.training
        from transformers import set_seed

        set_seed(training.seed)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.reporter.stage("preparing-data")
        tokenizer = load_tokenizer(workload.model_path)
        data = prepare(workload, tokenizer)
        model = load_model(workload.model_path, workload.method, training)
        trainable, total = count_parameters(model)
        flops = ModelFlops.of(model)  # before a preference stage adds its reference adapter
        log.info("model %s: %s, %.2fM of %.1fM parameters trainable, weights %s on %s, %d process(es)",
                 workload.model_path, workload.method.type, trainable / 1e6, total / 1e6,
                 next(model.parameters()).dtype, next(model.parameters()).device, self.world_size)

        main = os.environ.get("RANK", "0") == "0"
        if main:
            write_jsonl(self.output_dir / TEST_FILE, data.test_rows)
        has_sft = workload.method.objective in SFT_OBJECTIVES
        sft_steps = training.epochs * steps_per_epoch(
            len(data.train), training.micro_batch_size, training.gradient_accumulation_steps,
            self.world_size) if has_sft else 0
        preference_total = preference_steps(workload, data.preferences.train, self.world_size) \
            if data.preferences is not None else 0
        metrics = MetricsLogger(workload.tracking if main else None,
                                {**self.params_to_log(data), "total_steps": sft_steps + preference_total},
                                tags={DATASET_SHA256_TAG: data.stats.sha256}, dataset=self.dataset_input(data))
        if main and workload.tracking is not None and metrics.run_id:
            # A later candidate's evaluation reads them back as its regression set, should this one become champion.
            log_test_rows(workload.tracking, metrics.run_id, self.output_dir / TEST_FILE)
        # The SFT trainer also measures the SFT-shaped validation loss (before and after) of the other objectives.
        stop, progress = StopOnSignal(), Progress(self.reporter, metrics, steps_after=preference_total)
        trainer = self.trainer(model, tokenizer, data, [progress, stop, DivergenceGuard(training.loss_spike_factor),
                                                         CompleteCheckpoints(), EvaluationProgress(),
                                                         *self.early_stopping()])
        preview_rows = data.validation_rows[: workload.preview_examples] if data.stats.format != "text" else []
        before = self.before_training(trainer, tokenizer, data, preview_rows)
        log.info("validation loss before training: %.4f", before.validation_loss)
        # The validation curve starts at the base model, also when that loss was measured by an earlier attempt.
        metrics.log(0, {metric_names.VALIDATION_LOSS: before.validation_loss})
        self.reporter.stage("training")
        sft = preference = preference_results = None
        try:
            with stop.installed():
                if has_sft:
                    sft = self.sft_stage(trainer, progress, stop, tokenizer, data)
                if data.preferences is not None:
                    preference, preference_results = self.preference_stage(
                        model, tokenizer, data, stop, metrics, steps_before=sft.steps if sft else 0,
                        reference="sft" if sft else "base")
        except Preempted:
            metrics.close("KILLED")
            raise
        except BaseException:
            metrics.close("FAILED")
            raise
        finally:
            self.reporter.close()

        stages = [stage for stage in (sft, preference) if stage is not None]
        steps = sum(stage.steps for stage in stages)
        if preference is not None:  # the SFT-shaped validation loss of the final adapter, at the run's last step
            trainer.remove_callback(progress)
            loss_after = trainer.evaluate()["eval_loss"]
            metrics.log(steps, {metric_names.VALIDATION_LOSS: loss_after})
        else:
            loss_after = trainer.evaluate()["eval_loss"]
        log.info("validation loss after training: %.4f (before %.4f)", loss_after, before.validation_loss)
        efficiency = self.efficiency(flops, sft, preference)
        log.info("training: %s", efficiency.describe())
        metrics.log(steps, efficiency.metrics())

        result = TrainerResult(
            succeeded=True, dataset=data.stats, cleaning=data.cleaning, replay_rows=data.replay_rows,
            validation_loss_before=before.validation_loss, validation_loss_after=loss_after,
            train_loss=stages[-1].train_loss,  # the stage whose adapter is the output
            steps=steps, tokens_trained=sum(stage.tokens_trained for stage in stages),
            **asdict(efficiency),
            resumed_from_step=resumed_from(sft, preference),
            stopped_early=sft.stopped_early if sft else False,
            best_step=sft.best_step if sft else None,
            evaluations=[Evaluation(**entry) for entry in sft.evaluations] if sft else [],
            mlflow_run_id=metrics.run_id,
            preference=preference_results,
        )
        if main:
            tuned = generate_answers(trainer.model, tokenizer, preview_rows)
            result.previews = [
                Preview(prompt=row.prompt_messages[-1]["content"], reference=row.reference, base=base, tuned=answer)
                for row, base, answer in zip(preview_rows, before.base_answers, tuned)
            ]
            self.reporter.stage("saving")
        adapter_dir = self.output_dir / ("model" if workload.method.type == "full" else "adapter")
        if workload.dataset.system_prompt:
            tokenizer.chat_template = with_default_system_prompt(tokenizer.chat_template,
                                                                 workload.dataset.system_prompt)
        save_output(trainer, tokenizer, adapter_dir)
        result.adapter_path = str(adapter_dir)
        result.test_path = str(self.output_dir / TEST_FILE)
        metrics.close()
        result.seconds = time.monotonic() - self.started
        return result

    def efficiency(self, flops: ModelFlops, sft: "StageOutcome | None",
                   preference: "StageOutcome | None") -> Efficiency:
        """Over the steps this process timed (a restored SFT stage: the earlier attempt's); the preference stage's
        tokens also pay for the reference model's forward."""
        timed = [(stage, flops.per_token(reference_forward=stage is preference))
                 for stage in (sft, preference) if stage is not None]
        device, devices = this_device(self.world_size)
        return Efficiency.of(tokens=sum(stage.tokens_timed for stage, _ in timed),
                             seconds=sum(stage.seconds_timed for stage, _ in timed),
                             flops=sum(stage.tokens_timed * per_token for stage, per_token in timed),
                             device=device, devices=devices, configured_peak=self.workload.gpu_peak_tflops)

    def sft_stage(self, trainer, progress: Progress, stop: StopOnSignal, tokenizer, data: PreparedData,
                  ) -> "StageOutcome":
        """SFT, resumable. Before a preference stage (sft-then-dpo) its adapter and outcome are kept:
        `sft-adapter/` (the preference stage's reference) and `sft-stage.json`; a restart that finds both goes
        straight to the preference stage."""
        two_stages = self.workload.method.objective != "sft"
        record = self.output_dir / SFT_STAGE_FILE
        if two_stages:
            done = StageOutcome.load(record, data.stats.sha256)
            if done is not None and self.sft_adapter.is_dir():  # save_output makes the folder appear complete
                log.info("the SFT stage was finished by an earlier attempt (%d steps); its adapter: %s",
                         done.steps, self.sft_adapter)
                done.restored = True
                return done
        resumed_from = self.train(trainer, self.checkpoints)
        state = trainer.state
        if stop.stopped:
            raise Preempted(f"stopped by a signal at step {state.global_step}; "
                            "the next run resumes from its checkpoint")
        best_step = step_of(Path(state.best_model_checkpoint)) if state.best_model_checkpoint else None
        if best_step is not None:
            log.info("output is the best checkpoint, step %d (validation loss %.4f)", best_step, state.best_metric)
        outcome = StageOutcome.of(
            trainer, progress, data.stats.sha256, self.training.epochs, resumed_from,
            stopped_early=self.training.early_stopping.enabled and state.global_step < state.max_steps,
            best_step=best_step,
            evaluations=[{"step": entry["step"], "validation_loss": entry["eval_loss"]}
                         for entry in state.log_history if "eval_loss" in entry and entry.get("step")])
        if two_stages:
            save_output(trainer, tokenizer, self.sft_adapter)
            # A new SFT adapter is a new reference: what the preference stage measured or saved before is void.
            if trainer.is_world_process_zero():
                remove_all(self.preference_checkpoints)
                (self.output_dir / PREFERENCE_BEFORE_FILE).unlink(missing_ok=True)
                outcome.save(record)
        return outcome

    def preference_stage(self, model, tokenizer, data: PreparedData, stop: StopOnSignal, metrics: MetricsLogger,
                         steps_before: int, reference: str) -> "tuple[StageOutcome, PreferenceResults]":
        """DPO or KTO on the held-out-measured preference rows, resumable from `checkpoints-preference/`."""
        workload, preferences = self.workload, data.preferences
        loss = preference_loss(workload.method.objective)
        started = time.monotonic()
        if reference == "sft":  # the SFT adapter goes on training; TRL copies it as the frozen reference "ref"
            model.load_adapter(str(self.sft_adapter), adapter_name="default", is_trainable=True)
        progress = Progress(self.reporter, metrics, PREFERENCE_METRICS, steps_before=steps_before)
        with own_forward(model):
            trainer = preference_trainer(workload, model, tokenizer, preferences.train, preferences.validation,
                                         self.preference_checkpoints,
                                         [progress, stop, CompleteCheckpoints(), EvaluationProgress()], reference,
                                         self.world_size)
            key = f"{preferences.stats.sha256}:{data.stats.sha256 if reference == 'sft' else ''}:{loss}"
            before = self.preference_before(trainer, loss, key)
            log.info("preference stage (%s, reference %s) before: %s", loss, reference, before.describe())
            metrics.log(steps_before, before.metrics())
            # Its losses head for 0 (DPO starts at ln 2): spikes count against the starting loss at least.
            trainer.add_callback(DivergenceGuard(self.training.loss_spike_factor, floor=before.loss,
                                                 stage="preference stage",
                                                 learning_rate_field="spec.method.preference.learningRate"))
            resumed_from = self.train(trainer, self.preference_checkpoints)
            state = trainer.state
            if stop.stopped:
                raise Preempted(f"stopped by a signal at step {steps_before + state.global_step} (preference stage "
                                f"step {state.global_step}); the next run resumes from its checkpoint")
            after = PreferenceMeasured(key, **asdict(measure(trainer, loss)))
            metrics.log(steps_before + state.global_step, after.metrics())
            outcome = StageOutcome.of(trainer, progress, preferences.stats.sha256,
                                      workload.method.preference.epochs, resumed_from)
        drop_reference(model)
        results = PreferenceResults(
            objective=loss, reference=reference, beta=workload.method.preference.beta, steps=outcome.steps,
            loss_before=before.loss, loss_after=after.loss, margin_before=before.margin, margin_after=after.margin,
            accuracy_before=before.accuracy, accuracy_after=after.accuracy, seconds=time.monotonic() - started)
        log.info("preference stage: %s", results.summary())
        return outcome, results

    def preference_before(self, trainer, loss: str, key: str) -> "PreferenceMeasured":
        """The preference loss (and dpo margin) on the held-out preference rows at the start of the stage,
        measured once: a resumed stage's model is no longer the one it started with."""
        path = self.output_dir / PREFERENCE_BEFORE_FILE
        saved = PreferenceMeasured.load(path, key)
        if saved is not None:
            return saved
        if complete_checkpoints(self.preference_checkpoints):
            log.warning("the checkpoints in %s were trained on other data; starting over", self.preference_checkpoints)
            remove_all(self.preference_checkpoints)
        before = PreferenceMeasured(key, **asdict(measure(trainer, loss)))
        if trainer.is_world_process_zero():
            before.save(path)
        return before

    def trainer(self, model, tokenizer, data: PreparedData, callbacks: list) -> Any:
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        config = sft_config(self.workload, self.checkpoints, len(data.train), self.world_size)
        trainer = sft_trainer_class()(model=model, args=config, train_dataset=as_dataset(data.train),
                                      eval_dataset=as_dataset(data.validation), processing_class=tokenizer,
                                      callbacks=callbacks)
        for printer in (PrinterCallback, ProgressCallback):  # callbacks.Progress reports instead
            trainer.remove_callback(printer)
        return trainer

    def early_stopping(self) -> list:
        rule = self.training.early_stopping
        if not rule.enabled:
            return []
        from transformers import EarlyStoppingCallback

        return [EarlyStoppingCallback(early_stopping_patience=rule.patience, early_stopping_threshold=rule.min_delta)]

    def before_training(self, trainer, tokenizer, data: PreparedData, preview_rows: list[Example]) -> BeforeTraining:
        """The base model's validation loss and preview answers (the adapter starts as a no-op), measured once."""
        path = self.output_dir / "before-training.json"
        saved = BeforeTraining.load(path, data.stats.sha256)
        if saved is not None:
            return saved
        if complete_checkpoints(self.checkpoints):
            log.warning("the checkpoints in %s were trained on other data; starting over", self.checkpoints)
            remove_all(self.checkpoints)
        log.info("the base model's validation loss (%d rows) and %d preview answers, before training",
                 len(data.validation), len(preview_rows))
        answers = generate_answers(trainer.model, tokenizer, preview_rows) if trainer.is_world_process_zero() else []
        before = BeforeTraining(data.stats.sha256, trainer.evaluate()["eval_loss"], answers)
        if trainer.is_world_process_zero():
            before.save(path)
        return before

    def train(self, trainer, root: Path) -> int | None:
        """Train from the newest checkpoint under `root` that can be loaded (a broken one is set aside), or from
        the start; the step resumed from."""
        remove_incomplete(root)
        for checkpoint in reversed(complete_checkpoints(root)):
            problem = loadable(checkpoint)
            if problem is None:
                log.info("resuming from %s (step %d)", checkpoint, step_of(checkpoint))
                trainer.train(resume_from_checkpoint=str(checkpoint))
                return step_of(checkpoint)
            log.warning("checkpoint %s cannot be loaded (%s); removing it and trying the one before", checkpoint,
                        problem)
            if trainer.is_world_process_zero():
                shutil.rmtree(checkpoint, ignore_errors=True)
        trainer.train()
        return None

    def dataset_input(self, data: PreparedData) -> DatasetInput:
        uri = self.workload.dataset.uri
        return DatasetInput(name=Path(uri).name or uri, source=uri, sha256=data.stats.sha256, profile={
            "rows": data.stats.rows, "train_rows": data.stats.train_rows, "validation_rows": data.stats.validation_rows,
            "test_rows": data.stats.test_rows,
            "train_tokens": data.stats.train_tokens, "format": data.stats.format})

    def params_to_log(self, data: PreparedData) -> dict[str, Any]:
        workload = self.workload
        tracking_tags = workload.tracking.tags if workload.tracking else {}
        # The model as the spec named it (catalog name or URI), not the folder it was loaded from.
        flat = {"base_model": tracking_tags.get(BASE_MODEL_TAG, workload.model_path), "method": workload.method.type,
                "objective": workload.method.objective,
                "dataset_sha256": data.stats.sha256, "train_rows": data.stats.train_rows,
                "world_size": self.world_size}
        sections = [("lora", workload.method.lora), ("training", workload.training)]
        if data.preferences is not None:
            sections.append(("preference", workload.method.preference))
            flat.update({"preferences_sha256": data.preferences.stats.sha256,
                         "preference_train_rows": data.preferences.stats.train_rows})
        for section, model in sections:
            for key, value in model.to_wire().items():
                if not isinstance(value, dict):
                    flat[f"{section}.{key}"] = value
        return flat
