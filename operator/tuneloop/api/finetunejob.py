"""The FineTuneJob resource: what to fine-tune, on which data, how, and how it is going."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from tuneloop.api.common import API_VERSION, Condition, SpecError, WireModel, describe_validation_error

KIND = "FineTuneJob"
PLURAL = "finetunejobs"

STORAGE_SCHEMES = ("file://", "pvc://", "s3://")


def check_storage_uri(uri: str) -> str:
    """Storage URIs are `pvc://claim/path`, `s3://bucket/path` or `file:///path`; in local mode a
    plain path (relative to the manifest) is accepted too."""
    if not uri.strip():
        raise ValueError("must not be empty")
    if "://" in uri and not uri.startswith(STORAGE_SCHEMES):
        raise ValueError(f"unsupported URI scheme in {uri!r}: use pvc://, s3:// or file://")
    if uri.startswith(("pvc://", "s3://")) and not uri.split("://", 1)[1].split("/")[0]:
        raise ValueError(f"{uri!r} names no claim or bucket")
    return uri


class BaseModelRef(WireModel):
    """The model to adapt: a catalog entry by name, or a Hugging Face-format folder by URI."""

    name: str | None = Field(None, description="Model catalog entry, e.g. smollm2-135m-instruct.")
    uri: str | None = Field(None, description="Folder with config.json, tokenizer and safetensors weights.")

    @model_validator(mode="after")
    def _exactly_one(self) -> "BaseModelRef":
        if (self.name is None) == (self.uri is None):
            raise ValueError("give exactly one of name (a catalog entry) or uri (a model folder)")
        if self.uri is not None:
            check_storage_uri(self.uri)
        return self

    def display(self) -> str:
        return self.name or self.uri or ""


class DatasetSpec(WireModel):
    uri: str = Field(description="JSONL file: pvc://, s3://, file:// or (local mode) a path relative to the manifest.")
    format: Literal["auto", "alpaca", "messages", "text"] = Field(
        "auto", description="Row shape; auto detects it from the first row.")
    hold_out_fraction: float = Field(0.1, gt=0, lt=0.5, description="Share of rows kept out of training for evaluation.")
    seed: int = Field(42, ge=0, description="Seed of the train/hold-out split.")
    system_prompt: str | None = Field(
        None, description="System message put before every example (and used when serving); "
                          "when unset the chat template's default applies.")

    @model_validator(mode="after")
    def _uri(self) -> "DatasetSpec":
        check_storage_uri(self.uri)
        return self


class LoraSpec(WireModel):
    r: int = Field(16, ge=1, le=512, description="Rank of the LoRA update matrices.")
    alpha: float = Field(32, gt=0, description="Scaling numerator; the update is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or all-linear for every linear layer but the output head.")

    @model_validator(mode="after")
    def _targets(self) -> "LoraSpec":
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError("targetModules must name at least one module, or be all-linear")
        return self


class QuantizationSpec(WireModel):
    """bitsandbytes 4-bit loading of the frozen base model (QLoRA)."""

    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"


class MethodSpec(WireModel):
    type: Literal["lora", "qlora", "full"] = Field("lora", description="lora, qlora (4-bit base, needs CUDA) or full.")
    lora: LoraSpec = Field(default_factory=LoraSpec)
    quantization: QuantizationSpec = Field(default_factory=QuantizationSpec)


class TrainingSpec(WireModel):
    epochs: int = Field(3, ge=1, le=100)
    learning_rate: float = Field(2e-4, gt=0, le=1)
    lr_scheduler: Literal["cosine", "linear", "constant", "warmup-stable-decay"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    micro_batch_size: int = Field(8, ge=1, le=4096, description="Examples per forward pass (packed into one row).")
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024)
    max_seq_length: int = Field(1024, ge=16, le=262144, description="Longer examples are truncated.")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    packing: bool = Field(True, description="Concatenate examples without padding; attention stays within each example.")
    gradient_checkpointing: bool = False
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 base weights where the hardware has bf16 (adapters stay fp32).")
    seed: int = Field(42, ge=0)


class ResourcesSpec(WireModel):
    gpus: int = Field(0, ge=0, le=64, description="GPUs per node (nvidia.com/gpu).")
    nodes: int = Field(1, ge=1, le=128)
    cpu: str | None = None
    memory: str | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    priority_class_name: str | None = None


class OutputSpec(WireModel):
    uri: str | None = Field(None, description="Where the adapter is written; local mode defaults to the work folder.")
    preview_examples: int = Field(3, ge=0, le=50, description="Hold-out examples answered by base and tuned model.")

    @model_validator(mode="after")
    def _uri(self) -> "OutputSpec":
        if self.uri is not None:
            check_storage_uri(self.uri)
        return self


class FineTuneJobSpec(WireModel):
    base_model: BaseModelRef
    dataset: DatasetSpec
    method: MethodSpec = Field(default_factory=MethodSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)


Phase = Literal["Pending", "Validating", "Training", "Evaluating", "Registering", "Succeeded", "Failed"]
TERMINAL_PHASES = ("Succeeded", "Failed")


class Progress(WireModel):
    step: int = 0
    total_steps: int = 0
    epoch: float = 0
    loss: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None


class DatasetStats(WireModel):
    rows: int
    train_rows: int
    hold_out_rows: int
    train_tokens: int
    format: str
    sha256: str


class TrainingResults(WireModel):
    hold_out_loss_before: float
    hold_out_loss_after: float
    train_loss: float
    steps: int
    tokens_per_second: float
    seconds: float
    adapter_uri: str
    hold_out_uri: str


class FineTuneJobStatus(WireModel):
    phase: Phase = "Pending"
    message: str = ""
    conditions: list[Condition] = Field(default_factory=list)
    progress: Progress | None = None
    dataset: DatasetStats | None = None
    training: TrainingResults | None = None
    observed_generation: int | None = None
    start_time: str | None = None
    completion_time: str | None = None


class ObjectMeta(WireModel):
    model_config = WireModel.model_config | {"extra": "allow"}

    name: str
    namespace: str = "default"
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class FineTuneJob(WireModel):
    api_version: Literal["tuneloop.dev/v1alpha1"] = API_VERSION
    kind: Literal["FineTuneJob"] = KIND
    metadata: ObjectMeta
    spec: FineTuneJobSpec
    status: FineTuneJobStatus = Field(default_factory=FineTuneJobStatus)


def parse_spec(raw: Any) -> FineTuneJobSpec:
    """Validate a raw spec; SpecError lists every problem with its field path (`spec.x.y: ...`)."""
    try:
        return FineTuneJobSpec.model_validate(raw)
    except ValidationError as error:
        raise SpecError(describe_validation_error(error, "spec")) from None


def parse_manifest(raw: Any) -> FineTuneJob:
    """Validate a whole FineTuneJob manifest (apiVersion, kind, metadata, spec)."""
    if not isinstance(raw, dict):
        raise SpecError(["manifest: must be a mapping with apiVersion, kind, metadata and spec"])
    try:
        return FineTuneJob.model_validate(raw)
    except ValidationError as error:
        raise SpecError(describe_validation_error(error, "")) from None
