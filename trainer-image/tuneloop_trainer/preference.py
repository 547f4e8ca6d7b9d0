"""The preference stage of objective dpo, kto and sft-then-dpo: spec.training and spec.method.preference as TRL's
DPOConfig/KTOConfig, the trainer built on Tuneloop's peft model, and the held-out measurements before and after.

TRL runs the loss. With `ref_model=None` and a peft model, TRL 1.16 copies the trainable adapter "default" into a
frozen adapter "ref" and computes the reference log-probabilities with it (trl/trainer/dpo_trainer.py,
`use_adapter`); without a "ref" adapter it disables the adapters instead. So:
- reference "base" (dpo, kto): the copy is dropped, and the reference is the base model with the adapter disabled;
- reference "sft" (sft-then-dpo): "default" holds the SFT stage's adapter, which goes on training, and "ref" is
  its frozen copy: the SFT adapter loaded a second time.
"ref" is removed after the stage; the adapter saved is "default" alone, as for sft.

TRL's fused LM head computes the log-probabilities as TRL ships it. On a CPU it projects every position (prompt
and padding too) in fp32 and also computes entropy, mean logit and top-1 for its logs. Measured on 2 shared cores:
the tiny test model's DPO step (4 pairs) ~75 ms, a third of it in the head; SmolLM2-135M (LoRA r16 on the
attention projections, 2 pairs of ~100 tokens) ~4.5 s, half of it in the head. Scoring only answer positions
there (as sft.py's CpuSFTTrainer does for SFT) is the speed-up left.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import torch

from tuneloop.api.workloads import TrainerWorkload
from tuneloop.workload_data.preferences import PreferenceRow
from tuneloop_trainer.model import BitDropout
from tuneloop_trainer.sft import stage_arguments, steps_per_epoch

REFERENCE_ADAPTER = "ref"  # the name TRL gives the frozen copy of the trained adapter

PreferenceLoss = Literal["dpo", "kto"]


def preference_loss(objective: str) -> PreferenceLoss:
    """The loss of the preference stage: dpo for dpo and sft-then-dpo, kto for kto."""
    return "kto" if objective == "kto" else "dpo"


def unpaired(rows: list[PreferenceRow]) -> list[PreferenceRow]:
    """KTO rows: a kto row as it is; a pair as two rows, chosen desirable and rejected undesirable."""
    out = []
    for row in rows:
        if row.chosen is None:
            out.append(row)
            continue
        out.append(PreferenceRow(line=row.line, prompt_messages=row.prompt_messages, completion=row.chosen,
                                 label=True))
        out.append(PreferenceRow(line=row.line, prompt_messages=row.prompt_messages, completion=row.rejected,
                                 label=False))
    return out


def trl_rows(rows: list[PreferenceRow], loss: PreferenceLoss, seed: int) -> list[dict[str, Any]]:
    """The rows as TRL's conversational dataset. KTOTrainer reads its rows in order (the KL term pairs each
    row with its batch neighbours' answers), so they are shuffled here, seeded, once."""
    if loss == "dpo":
        return [row.trl_row() for row in rows]
    rows = unpaired(rows)
    random.Random(seed).shuffle(rows)
    return [row.trl_row() for row in rows]


def preference_steps(workload: TrainerWorkload, train_rows: list[PreferenceRow], world_size: int = 1) -> int:
    """Optimizer steps of the preference stage, as the Trainer counts them."""
    training = workload.training
    rows = len(unpaired(train_rows)) if preference_loss(workload.method.objective) == "kto" else len(train_rows)
    return workload.method.preference.epochs * steps_per_epoch(
        rows, training.micro_batch_size, training.gradient_accumulation_steps, world_size)


def preference_config(workload: TrainerWorkload, output_dir: Path, total_steps: int, world_size: int = 1) -> Any:
    """spec.training (batch, accumulation, schedule, warmup, seed, checkpoints, optimizer, precision, gradient
    checkpointing, maxSeqLength) and spec.method.preference (learning rate, epochs, beta, KTO weights), as sft.py's
    sft_config reads them; no evaluation during the stage (measured before and after instead)."""
    training, method, preference = workload.training, workload.method, workload.method.preference
    loss = preference_loss(method.objective)
    if loss == "kto" and training.micro_batch_size < 2:
        raise ValueError("spec.training.microBatchSize: objective kto needs at least 2 rows per micro-batch (its KL "
                         "term compares each row with its neighbours' answers)")
    cuda = torch.cuda.is_available()
    save_steps = training.checkpoints.every_steps
    common = dict(
        **stage_arguments(workload, output_dir, total_steps, preference.epochs, preference.learning_rate),
        max_length=training.max_seq_length,
        beta=preference.beta,
        include_num_input_tokens_seen="non_padding",
        logging_steps=1, logging_nan_inf_filter=False, report_to="none", disable_tqdm=True,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
        save_total_limit=training.checkpoints.keep_last, save_only_model=False,
        eval_strategy="no",
        ddp_find_unused_parameters=False,
        ddp_backend=None if cuda or world_size == 1 else "gloo",
        dataloader_num_workers=0, dataloader_pin_memory=cuda,
    )
    if loss == "kto":
        from trl import KTOConfig

        return KTOConfig(**common, desirable_weight=preference.desirable_weight,
                         undesirable_weight=preference.undesirable_weight)
    from trl import DPOConfig

    return DPOConfig(**common)


def without_dropout(model: torch.nn.Module) -> None:
    """TRL turns nn.Dropout off (policy and reference must see the same network); CPU runs' BitDropout too."""
    for module in model.modules():
        if isinstance(module, BitDropout):
            module.p = 0.0


def preference_trainer(workload: TrainerWorkload, model: Any, tokenizer: Any, train: list[PreferenceRow],
                       validation: list[PreferenceRow], output_dir: Path, callbacks: list, reference: str,
                       world_size: int = 1) -> Any:
    """DPOTrainer or KTOTrainer on the peft model; reference "base" or "sft" (see the module docstring)."""
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    loss, seed = preference_loss(workload.method.objective), workload.training.seed
    config = preference_config(workload, output_dir, preference_steps(workload, train, world_size), world_size)
    if loss == "kto":
        from trl import KTOTrainer as trainer_class
    else:
        from trl import DPOTrainer as trainer_class
    without_dropout(model)
    trainer = trainer_class(model=model, args=config, train_dataset=Dataset.from_list(trl_rows(train, loss, seed)),
                            eval_dataset=Dataset.from_list(trl_rows(validation, loss, seed)),
                            processing_class=tokenizer, callbacks=callbacks)
    if reference == "base" and REFERENCE_ADAPTER in trainer.model.peft_config:
        trainer.model.delete_adapter(REFERENCE_ADAPTER)
    for printer in (PrinterCallback, ProgressCallback):  # callbacks.Progress reports instead
        trainer.remove_callback(printer)
    return trainer


@contextmanager
def own_forward(model: Any) -> Iterator[None]:
    """The model's forward as it was before: TRL's preference trainers patch it with their fused LM head (with the
    outputs their metrics read), and the SFT trainer that measures the final validation loss needs its own."""
    patched = model.get_base_model() if hasattr(model, "get_base_model") else model
    had, before = "forward" in vars(patched), vars(patched).get("forward")
    try:
        yield
    finally:
        if had:
            patched.forward = before
        else:
            vars(patched).pop("forward", None)


def drop_reference(model: Any) -> None:
    """The frozen reference adapter is no part of the output."""
    if REFERENCE_ADAPTER in getattr(model, "peft_config", {}):
        model.delete_adapter(REFERENCE_ADAPTER)


@dataclass
class Measurement:
    """The preference stage's loss on the held-out preference rows; for dpo also the policy's margin
    log p(chosen) - log p(rejected) (answer tokens summed; not TRL's beta-scaled reward margin, which is relative
    to the reference) averaged over the pairs, and the share of pairs where it is positive."""

    loss: float
    margin: float | None = None
    accuracy: float | None = None


@torch.no_grad()
def policy_margins(trainer: Any) -> list[float]:
    """Per held-out pair, log p(chosen) - log p(rejected) under the model being trained: TRL's own batches
    (chat template, truncation, completion mask) and fused log-probabilities, as its loss reads them."""
    model = trainer.model
    was_training = model.training
    model.eval()
    margins: list[float] = []
    try:
        for batch in trainer.get_eval_dataloader():
            batch = {key: value.to(trainer.args.device) for key, value in batch.items()}
            labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
            with trainer.autocast_smart_context_manager():
                output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                               fused_lm_head=True, use_cache=False)
            chosen, rejected = output.log_probs.float().sum(dim=1).chunk(2)
            margins.extend((chosen - rejected).tolist())
    finally:
        model.train(was_training)
    return margins


def measure(trainer: Any, loss: PreferenceLoss) -> Measurement:
    """TRL's evaluation loss on the held-out rows; for dpo the policy margins as well."""
    measured = Measurement(loss=float(trainer.evaluate()["eval_loss"]))
    if loss == "dpo":
        margins = policy_margins(trainer)
        if margins:
            measured.margin = sum(margins) / len(margins)
            measured.accuracy = sum(margin > 0 for margin in margins) / len(margins)
    return measured
