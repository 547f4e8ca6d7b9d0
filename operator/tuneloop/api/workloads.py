"""What the operator hands a workload (trainer, evaluator) and what the workload hands back.

Workloads are command-line programs that read one spec file and write one result file; they
know nothing of Kubernetes, so the local runner and the pods run the same code with these
models as the contract.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tuneloop.api.augmentation import AugmentationStats
from tuneloop.api.common import WireModel, check_http_url
from tuneloop.api.evaluation import Comparison, EvaluationSpec, GateTest, JudgeStats
from tuneloop.api.export import ExportedFile, ExportFormat, GgufAgreement, GgufSpec
from tuneloop.api.fields import EnvName
from tuneloop.api.finetunejob import (
    CleaningSpec,
    CleaningStats,
    DataReportSummary,
    DatasetSpec,
    DatasetStats,
    FineTuneJobStatus,
    MethodSpec,
    PreferenceResults,
    TrainingSpec,
)
from tuneloop.feedback.limits import MAX_PAGE_SIZE


class Tracking(WireModel):
    """Where the trainer logs metrics and parameters (MLflow); absent: no tracking."""

    tracking_uri: str
    experiment: str = "tuneloop"
    run_name: str | None = None
    tags: dict[str, str] = Field(default_factory=dict, description=(
        "Lineage tags the run carries (FineTuneJob, base model by catalog name, tuneloop version)."))


class TrainerWorkload(WireModel):
    job: str = Field(description="namespace/name of the FineTuneJob, for logs.")
    model_path: str = Field(description="Local folder of the base model (Hugging Face format).")
    dataset_path: str = Field(description="Local path of the JSONL or Parquet dataset.")
    replay_path: str | None = Field(None, description="Local path of the replay dataset, when the spec has one.")
    preferences_path: str | None = Field(None, description="Local path of dataset.preferences' file, when set.")
    synthetic_path: str | None = Field(None, description=(
        "Local path of the augment stage's synthetic rows (JSONL), added to the training split only."))
    dataset: DatasetSpec
    method: MethodSpec
    training: TrainingSpec
    output_dir: str = Field(description="Adapter, tokenizer and test split are written here.")
    preview_examples: int = 3
    tracking: Tracking | None = None
    registered_model: str | None = Field(None, description=(
        "Registered model whose champion's test rows are kept out of training (contamination check)."))
    gpu_peak_tflops: float | None = Field(None, gt=0, description=(
        "The operator's gpuPeakTflops: one GPU's peak dense bf16 TFLOPS, for MFU; unset: looked up by the GPU's "
        "name."))


class DataCheckWorkload(TrainerWorkload):
    """The trainer's workload, read by the CPU-only first stage that checks every row before any GPU."""

    world_size: int = Field(1, ge=1, description="Training processes (GPUs x nodes), for the step estimate.")

    @classmethod
    def of(cls, trainer: TrainerWorkload, world_size: int) -> "DataCheckWorkload":
        return cls.model_validate({**trainer.model_dump(), "world_size": world_size})


class AugmentWorkload(TrainerWorkload):
    """The trainer's workload, read by the augment stage: it splits the rows as training will and asks the
    teacher (dataset.augment) for rows like the training split's, into output_dir/synthetic/."""

    teacher_key_env: EnvName | None = Field(None, description=(
        "Environment variable holding the teacher's API key: dataset.augment.teacher.apiKeyEnv locally, the "
        "Secret's variable in a cluster."))


class AugmentResult(WireModel):
    succeeded: bool
    reason: str | None = Field(None, description="TeacherUnavailable, InvalidData, InvalidModel, InvalidWorkload "
                                                 "or AugmentFailed.")
    message: str | None = None
    synthetic_path: str | None = Field(None, description="The synthetic rows written (JSONL), when any.")
    stats: AugmentationStats | None = None
    seconds: float | None = None


class ExportWorkload(WireModel):
    """Merge the gated adapter into its base model, write what spec.output.export asks, and check a GGUF file
    against the merged model on the test rows."""

    job: str = Field(description="namespace/name of the FineTuneJob, for logs.")
    model_path: str = Field(description="Local folder of the base model.")
    adapter_path: str = Field(description="Local folder of the adapter (full fine-tuning: of the trained model).")
    method: MethodSpec
    test_path: str = Field(description="JSONL test split the trainer wrote.")
    dataset: DatasetSpec = Field(description="Format and system prompt, so prompts match training.")
    formats: list[ExportFormat] = Field(min_length=1, description="merged and/or gguf.")
    gguf: GgufSpec = Field(default_factory=GgufSpec)
    max_new_tokens: int = Field(256, ge=1, le=8192, description="Answer length limit of the agreement check.")
    output_dir: str = Field(description="export/merged and export/<name>-<type>.gguf go here.")
    converter: str | None = Field(None, description=(
        "llama.cpp's convert_hf_to_gguf.py; default: $TUNELOOP_GGUF_CONVERTER (set in the trainer image)."))


class ExportResult(WireModel):
    succeeded: bool
    reason: str | None = Field(None, description="ConverterMissing, UnsupportedModel, InvalidModel, "
                                                 "InvalidWorkload or ExportFailed.")
    message: str | None = None
    files: list[ExportedFile] = Field(default_factory=list, description="uri = the local path written.")
    agreement: GgufAgreement | None = None
    seconds: float | None = None


class DataCheckResult(WireModel):
    succeeded: bool
    reason: str | None = Field(None, description="InvalidData, InvalidModel (no usable tokenizer), "
                                                 "InvalidWorkload or DataCheckFailed.")
    message: str | None = None
    bad_rows: int | None = Field(None, description="Rows that failed the checks, when any did.")
    dataset: DatasetStats | None = None
    cleaning: CleaningStats | None = None
    report: DataReportSummary | None = None
    seconds: float | None = None


class TrainerProgress(WireModel):
    stage: Literal["preparing-data", "training", "saving"]
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


class Evaluation(WireModel):
    step: int
    validation_loss: float


class TrainerResult(WireModel):
    succeeded: bool
    reason: str | None = Field(None, description="CamelCase reason when the run failed, e.g. InvalidData.")
    message: str | None = None
    dataset: DatasetStats | None = None
    cleaning: CleaningStats | None = None
    replay_rows: int | None = None
    validation_loss_before: float | None = None
    validation_loss_after: float | None = None
    train_loss: float | None = None
    steps: int | None = None
    tokens_trained: int | None = None
    tokens_per_second: float | None = None
    flops_per_token: float | None = Field(None, description=(
        "Model FLOPs per trained token: 6N for full fine-tuning, 4N frozen + 6N trainable for an adapter, plus 2N "
        "for a preference stage's reference forward (averaged over the stages by tokens); attention left out."))
    achieved_tflops: float | None = Field(None, description="Model TFLOPS achieved in training, all devices.")
    peak_tflops: float | None = Field(None, description="One device's peak dense bf16 TFLOPS; none on a CPU or an "
                                                        "unknown GPU.")
    mfu: float | None = Field(None, description="Model FLOPs utilisation: achievedTflops / (peakTflops x devices).")
    device: str | None = Field(None, description='What trained, e.g. "NVIDIA H200" or "cpu".')
    devices: int | None = Field(None, description="GPUs that trained, all nodes; 0 on a CPU.")
    seconds: float | None = None
    resumed_from_step: int | None = None
    stopped_early: bool = False
    best_step: int | None = None
    evaluations: list[Evaluation] = Field(default_factory=list)
    adapter_path: str | None = None
    mlflow_run_id: str | None = None
    test_path: str | None = None
    previews: list[Preview] = Field(default_factory=list)
    preference: PreferenceResults | None = Field(None, description="The dpo/kto stage, for those objectives.")


JUDGE_API_KEY_ENV = "TUNELOOP_JUDGE_API_KEY"
TEACHER_API_KEY_ENV = "TUNELOOP_TEACHER_API_KEY"


class EvaluatorWorkload(WireModel):
    """Generate and score test answers for the candidate and its baseline (and regression and general sets)."""

    job: str = Field(description="namespace/name of the FineTuneJob, for logs.")
    model_path: str = Field(description="Local folder of the base model.")
    adapter_path: str = Field(description="Local folder of the candidate adapter.")
    test_path: str = Field(description="JSONL test split the trainer wrote.")
    dataset: DatasetSpec = Field(description="Format and system prompt, so prompts match training.")
    evaluation: EvaluationSpec
    general_set_path: str | None = None
    output_dir: str = Field(description="Per-example records and the fetched champion go here.")
    tracking: Tracking | None = Field(None, description="MLflow: where the champion is looked up and the "
                                                        "evaluation table is logged.")
    registered_model: str | None = Field(None, description="Registered model whose champion is the baseline.")
    training_run_id: str | None = Field(None, description="The trainer's MLflow run; the evaluation joins it.")


class EvaluatorResult(WireModel):
    succeeded: bool
    reason: str | None = Field(None, description="e.g. JudgeUnavailable, InvalidData, ChampionUnavailable.")
    message: str | None = None
    baseline: str = "base"
    baseline_version: str | None = None
    test: Comparison | None = None
    regression: Comparison | None = None
    regressed_rows: int | None = None
    general: Comparison | None = None
    tests: list[GateTest] = Field(default_factory=list, description="The gate's tests, Holm-corrected.")
    warnings: list[str] = Field(default_factory=list)
    judge: JudgeStats = Field(default_factory=lambda: JudgeStats(configured=False))
    records_path: str | None = None
    seconds: float | None = None


class RegisterWorkload(WireModel):
    """Register the adapter as a new MLflow model version, idempotently (looked up by job uid first)."""

    job: str
    job_uid: str
    tracking: Tracking
    model_name: str
    adapter_path: str
    training_run_id: str | None = None
    records_path: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    job_status: FineTuneJobStatus | None = Field(None, description=(
        "The job's status when registration starts: data, training and evaluation, for the run's description."))
    exports: list[ExportedFile] = Field(default_factory=list, description=(
        "Checked exports to log as artifacts of the registered version (uri = a local path), with their sha256."))
    set_challenger: bool = False
    set_champion: bool = False
    expected_champion: str | None = Field(None, description=(
        "Version that was champion when the candidate was evaluated; champion moves only if it still is."))
    retry_seconds: float = Field(120, description="Keep retrying an unreachable MLflow this long.")


class RegisterResult(WireModel):
    succeeded: bool
    reason: str | None = Field(None, description="RegistryUnavailable (retried), AdapterMissing, "
                                                 "RegistrationFailed or InvalidWorkload.")
    message: str | None = None
    model_name: str | None = None
    version: str | None = None
    uri: str | None = None
    aliases: list[str] = Field(default_factory=list)
    run_id: str | None = None
    already_registered: bool = False
    exports: list[ExportedFile] = Field(default_factory=list, description=(
        "The exports logged with the version; uri = their MLflow artifact URI (runs:/<run id>/export/...)."))


FEEDBACK_TOKEN_ENV = "TUNELOOP_FEEDBACK_TOKEN"


class SnapshotWorkload(WireModel):
    """Turn one model's feedback rows with afterId < id <= upToId into a cleaned JSONL training set."""

    feedback_url: str = Field(description="Base URL of the feedback service, e.g. http://tuneloop-feedback:8080.")
    token_env: str = Field(FEEDBACK_TOKEN_ENV, description="Environment variable that holds the service's token.")
    model: str = Field(description="Served model name whose corrections are taken.")
    after_id: int = Field(0, ge=0, description="Last id of the previous snapshot; 0: from the first row.")
    up_to_id: int | None = Field(None, ge=0, description=(
        "Last id to take; unset: the last id the service reports when the snapshot starts. Never beyond that "
        "id, so that the next snapshot, starting after it, misses nothing."))
    output_dir: str = Field(description="The JSONL file goes here as corrections-<sha256 prefix>.jsonl.")
    cleaning: CleaningSpec = Field(default_factory=CleaningSpec, description=(
        "The FineTuneJob's cleaning settings; the length filter is left to training (it needs the tokenizer)."))
    system_prompt: str | None = Field(None, description="Put first in every row that has no system message.")
    page_size: int = Field(500, ge=1, le=MAX_PAGE_SIZE)
    timeout_seconds: float = Field(30, gt=0, description="Per HTTP request.")
    retry_seconds: float = Field(120, ge=0, description="Keep retrying an unreachable or failing service this long.")

    _url = field_validator("feedback_url")(check_http_url)

    @model_validator(mode="after")
    def _range(self) -> "SnapshotWorkload":
        if self.up_to_id is not None and self.up_to_id < self.after_id:
            raise ValueError(f"upToId {self.up_to_id} is below afterId {self.after_id}")
        return self


class SnapshotFile(WireModel):
    """One file a snapshot wrote, named by the first 12 hex digits of its content hash."""

    path: str
    sha256: str
    rows: int


class SnapshotResult(WireModel):
    succeeded: bool
    reason: str | None = Field(None, description="InvalidWorkload, TokenMissing, Unauthorized, FeedbackUnavailable "
                                                 "(retried), InvalidRange or SnapshotFailed.")
    message: str | None = None
    rows: int = Field(0, description="Rows written.")
    fetched: int = Field(0, description="Feedback rows read from the service.")
    dropped_duplicates: int = Field(0, description="Exact and near duplicates removed by cleaning.")
    redactions: dict[str, int] = Field(default_factory=dict, description="Personal data replaced, per kind.")
    cleaning: CleaningStats | None = None
    sha256: str | None = Field(None, description="Of the file's bytes; unset when no file was written.")
    path: str | None = None
    after_id: int | None = None
    up_to_id: int | None = Field(None, description="Where this snapshot ended: the next one's afterId.")
    pairs: SnapshotFile | None = Field(None, description=(
        "Preference pairs (prompt, chosen = correction, rejected = served answer), one per kept correction that "
        "differs from the answer: pairs-<sha256 prefix>.jsonl."))
    kto: SnapshotFile | None = Field(None, description=(
        "KTO rows (prompt, completion, label) from verdicts, ratings and corrections: kto-<sha256 prefix>.jsonl."))


TERMINATION_MESSAGE_LIMIT = 4096


def _rounded(value: object, digits: int = 4) -> object:
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {key: _rounded(item, digits) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item, digits) for item in value]
    return value


def compact_result(result: WireModel, limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
    """The result as it fits a container termination message (the full one stays on the volume):
    previews and per-evaluation losses go first, then float precision, then the gate tests' explanations,
    the guardrail sets' scores and the warnings (the message keeps them, shortened). The gate's tests stay."""
    wire = result.model_dump(by_alias=True, exclude_none=True, mode="json")

    def size() -> int:
        return len(json.dumps(wire, separators=(",", ":")))

    for key in ("previews", "evaluations"):
        if size() > limit:
            wire.pop(key, None)
    if size() > limit:
        wire = _rounded(wire)
    for test in wire.get("tests", []):
        for key in ("detail", "warning"):
            if size() > limit:
                test.pop(key, None)
    for key in ("general", "regression", "warnings"):
        if size() > limit:
            wire.pop(key, None)
    text = json.dumps(wire, separators=(",", ":"))
    if len(text) > limit and wire.get("message"):
        keep = max(0, len(wire["message"]) - (len(text) - limit) - 3)
        wire["message"] = wire["message"][:keep] + "..."
        text = json.dumps(wire, separators=(",", ":"))
    return text


def write_result(result: WireModel, path: Path, termination_log: Path | None = None) -> None:
    """A workload's last act: the full result to `path`, the compact one to the termination log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(result.model_dump_json(by_alias=True, exclude_none=True), encoding="utf-8")
    if termination_log:
        termination_log.write_text(compact_result(result), encoding="utf-8")
