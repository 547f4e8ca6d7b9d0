"""What the operator hands a workload (trainer, evaluator) and what the workload hands back.

Workloads are command-line programs that read one spec file and write one result file; they
know nothing of Kubernetes, so the local runner and the pods run the same code with these
models as the contract.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tuneloop.api.common import WireModel
from tuneloop.api.finetunejob import DatasetSpec, DatasetStats, MethodSpec, TrainingSpec


class TrainerWorkload(WireModel):
    job: str = Field(description="namespace/name of the FineTuneJob, for logs.")
    model_path: str = Field(description="Local folder of the base model (Hugging Face format).")
    dataset_path: str = Field(description="Local path of the JSONL dataset.")
    dataset: DatasetSpec
    method: MethodSpec
    training: TrainingSpec
    output_dir: str = Field(description="Adapter, tokenizer and hold-out split are written here.")
    preview_examples: int = 3


class TrainerProgress(WireModel):
    stage: Literal["validating-data", "training", "saving"]
    step: int = 0
    total_steps: int = 0
    epoch: float = 0
    loss: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None


class Preview(WireModel):
    prompt: str
    reference: str
    base: str
    tuned: str


class TrainerResult(WireModel):
    succeeded: bool
    reason: str | None = Field(None, description="CamelCase reason when the run failed, e.g. InvalidData.")
    message: str | None = None
    dataset: DatasetStats | None = None
    hold_out_loss_before: float | None = None
    hold_out_loss_after: float | None = None
    train_loss: float | None = None
    steps: int | None = None
    tokens_trained: int | None = None
    tokens_per_second: float | None = None
    seconds: float | None = None
    adapter_path: str | None = None
    hold_out_path: str | None = None
    previews: list[Preview] = Field(default_factory=list)
