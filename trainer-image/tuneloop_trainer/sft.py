"""A FineTuneJob's training spec as TRL's SFTConfig, in one function.

TRL's SFTTrainer (transformers' Trainer + accelerate) runs the loop: micro-batches from a seeded
sampler, gradient accumulation, clipping, the learning-rate schedule, DDP or FSDP2 under torchrun,
checkpoints with every RNG state and the exact data position, early stopping on validation loss
with the best checkpoint kept, and TRL's fused LM head (the output layer only on answer tokens,
in tiles, never the full logits). Packing is TRL's padding-free collation: a micro-batch's
examples in one row whose position ids restart per example, so no token attends across an
example boundary and nothing is computed on padding.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import torch

from tuneloop.api.finetunejob import EarlyStoppingSpec
from tuneloop.api.workloads import TrainerWorkload
from tuneloop_trainer.model import gradient_checkpointing, weight_dtype

SCHEDULER_NAMES = {
    "cosine": "cosine",
    "linear": "linear",
    "constant": "constant_with_warmup",
    "warmup-stable-decay": "warmup_stable_decay",
}


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def optimizer_name(workload: TrainerWorkload) -> str:
    choice = workload.training.optimizer
    if choice == "auto":
        choice = "paged-adamw-8bit" if torch.cuda.is_available() and has_module("bitsandbytes") else "adamw"
    if choice == "paged-adamw-8bit":
        if not torch.cuda.is_available():
            raise ValueError("spec.training.optimizer: paged-adamw-8bit needs CUDA; use adamw or auto")
        return "paged_adamw_8bit"
    return "adamw_torch"


def steps_per_epoch(examples: int, micro_batch_size: int, accumulation: int, world_size: int = 1) -> int:
    """As the Trainer counts them: every process takes its micro-batches, the last step may be short."""
    batches = math.ceil(examples / (micro_batch_size * world_size))
    return max(math.ceil(batches / accumulation), 1)


VALIDATION_POINTS = 10  # validation loss measurements along a run without early stopping: the validation curve


def validation_every_steps(stopping: EarlyStoppingSpec, total_steps: int) -> int:
    """Early stopping's own period, else a period that draws the validation curve with ~10 points."""
    return stopping.eval_every_steps if stopping.enabled else max(1, math.ceil(total_steps / VALIDATION_POINTS))


def stage_arguments(workload: TrainerWorkload, output_dir: Path, total_steps: int, epochs: int,
                    learning_rate: float) -> dict[str, Any]:
    """The Trainer arguments every training stage (SFT, DPO, KTO) takes from spec.training: seeds, batches,
    accumulation, the learning-rate schedule, optimizer, precision and gradient checkpointing."""
    training, method = workload.training, workload.method
    scheduler_kwargs = {}
    if training.lr_scheduler == "warmup-stable-decay":
        scheduler_kwargs = {"num_decay_steps": max(1, total_steps // 5)}
    # Base weights are bf16 where the device has it, trainable weights fp32 (model.weight_dtype). On CUDA
    # the matrix products run under bf16 autocast; on a CPU the LoRA path stays fp32 and autocast would
    # only add casts.
    bf16_autocast = torch.cuda.is_available() and weight_dtype(training, method) == torch.bfloat16
    return dict(
        output_dir=str(output_dir),
        seed=training.seed, data_seed=training.seed,
        num_train_epochs=epochs,
        per_device_train_batch_size=training.micro_batch_size,
        per_device_eval_batch_size=training.micro_batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        learning_rate=learning_rate,
        lr_scheduler_type=SCHEDULER_NAMES[training.lr_scheduler], lr_scheduler_kwargs=scheduler_kwargs,
        warmup_steps=training.warmup_ratio,  # a float below 1: that share of the steps
        weight_decay=training.weight_decay, adam_beta2=training.adam_beta2, max_grad_norm=training.max_grad_norm,
        optim=optimizer_name(workload),
        bf16=bf16_autocast, fp16=False,
        gradient_checkpointing=gradient_checkpointing(training),
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )


def sft_config(workload: TrainerWorkload, output_dir: Path, train_examples: int, world_size: int = 1) -> Any:
    from trl import SFTConfig

    training, method = workload.training, workload.method
    cuda = torch.cuda.is_available()
    total_steps = steps_per_epoch(train_examples, training.micro_batch_size, training.gradient_accumulation_steps,
                                  world_size) * training.epochs
    stopping = training.early_stopping
    save_steps = training.checkpoints.every_steps
    if stopping.enabled:  # the best checkpoint is one of those evaluated: save when evaluating
        save_steps = stopping.eval_every_steps
    fsdp: dict[str, Any] = {}
    if method.type == "full" and cuda and world_size > 1:
        fsdp = {"fsdp": "full_shard auto_wrap",
                "fsdp_config": {"fsdp_version": 2, "reshard_after_forward": True,
                                "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "state_dict_type": "FULL_STATE_DICT",
                                "cpu_ram_efficient_loading": True}}
    return SFTConfig(
        **stage_arguments(workload, output_dir, total_steps, training.epochs, training.learning_rate),
        use_liger_kernel=cuda and has_module("liger_kernel"),
        # The data: our own tokenisation, truncation to maxSeqLength and answer-only labels (tokens.py);
        # packing as padding-free rows.
        dataset_kwargs={"skip_prepare_dataset": True}, max_length=None,
        packing=False, padding_free=training.packing,
        include_num_input_tokens_seen="all" if training.packing else "non_padding",
        # Progress, MLflow and divergence read every step's loss, NaN included.
        logging_steps=1, logging_nan_inf_filter=False, report_to="none", disable_tqdm=True,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
        save_total_limit=training.checkpoints.keep_last, save_only_model=False,
        eval_strategy="steps", eval_steps=validation_every_steps(stopping, total_steps),
        load_best_model_at_end=stopping.enabled, metric_for_best_model="eval_loss" if stopping.enabled else None,
        greater_is_better=False,
        ddp_find_unused_parameters=False if method.type != "full" else None,
        ddp_backend=None if cuda or world_size == 1 else "gloo",
        dataloader_num_workers=0, dataloader_pin_memory=cuda, remove_unused_columns=True,
        **fsdp,
    )


def as_dataset(examples: list) -> Any:
    """Tokenized examples (ids and answer-only labels) as the datasets.Dataset the Trainer reads."""
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": [e.input_ids for e in examples], "labels": [e.labels for e in examples]})


def answer_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the logits are needed (positions whose next token is an answer token) and those tokens."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100
    return keep, labels[:, 1:][keep[:, :-1]]


def sft_trainer_class() -> type:
    """TRL's SFTTrainer; on CPUs with the loss Tuneloop measured faster there.

    TRL's fused LM head projects answer tokens in fp32 tiles and computes entropy and top-1 metrics
    for its logs: right for GPU memory, but on a 2-core CPU it was 60% of a SmolLM2 LoRA step (the
    bf16 head upcast per tile, three passes over the vocabulary, benchmarks/README.md). On CPUs the
    model's own forward (under DDP or peft as the Trainer wraps it) computes logits only at answer
    positions (`logits_to_keep` as a mask), in the model's dtype, and the loss is cross-entropy in fp32:
    the same sum, divided by the same token count.
    """
    from trl import SFTTrainer

    if torch.cuda.is_available():
        return SFTTrainer

    class CpuSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if return_outputs or self.compute_loss_func is not None or self.label_smoother is not None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            inputs = dict(inputs)
            keep, targets = answer_positions(inputs.pop("labels"))
            logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets,
                                                     reduction="sum")
            count = targets.numel() if num_items_in_batch is None else num_items_in_batch
            loss = loss / torch.as_tensor(count).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            if self.model.training:
                self._total_train_tokens += int(inputs["input_ids"].numel())
                self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            return loss

    return CpuSFTTrainer

