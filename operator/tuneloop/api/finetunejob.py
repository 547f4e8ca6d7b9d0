"""The FineTuneJob resource: what to fine-tune, on which data, how, and how it is going."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, model_validator

from tuneloop.api.common import API_VERSION, DNS1035_LABEL, Conditions, WireModel, validated, validated_manifest
from tuneloop.api.augmentation import AugmentationStats, AugmentSpec
from tuneloop.api.crd import Kind, Printer
from tuneloop.api.evaluation import EvaluationResults, EvaluationSpec, RegistryResults, RegistrySpec
from tuneloop.api.export import ExportFormat, ExportResults, GgufSpec
from tuneloop.api.fields import (
    LabelValue,
    Name,
    Quantity,
    ResourceName,
    Seed,
    StorageUri,
    Text,
    Toleration,
    checked_string,
    label_map,
)

KIND = "FineTuneJob"
PLURAL = "finetunejobs"
NodeSelector = label_map(LabelValue, "Node labels the training pods require.")
ModuleName = checked_string(r"^[A-Za-z0-9_.-]+$", "must be a module name such as q_proj or all-linear", 256)


def cel(*rules: tuple[str, str]) -> dict:
    """CEL rules the API server enforces (x-kubernetes-validations), next to the model they guard."""
    return WireModel.model_config | {"json_schema_extra": {
        "x-kubernetes-validations": [{"rule": rule, "message": message} for rule, message in rules]}}


class BaseModelRef(WireModel):
    """The model to adapt: a catalog entry by name, or a Hugging Face-format folder by URI."""

    model_config = cel(("has(self.name) != has(self.uri)",
                        "give exactly one of name (a catalog entry) or uri (a model folder)"))

    name: Name | None = Field(None, description="Model catalog entry, e.g. smollm2-135m-instruct.")
    uri: StorageUri | None = Field(None, description="Folder with config.json, tokenizer and safetensors weights.")

    @model_validator(mode="after")
    def _exactly_one(self) -> "BaseModelRef":
        if (self.name is None) == (self.uri is None):
            raise ValueError("give exactly one of name (a catalog entry) or uri (a model folder)")
        return self

    def display(self) -> str:
        return self.name or self.uri or ""


PiiKind = Literal["email", "phone", "ip", "card", "iban", "national-id"]
PII_KINDS: tuple[str, ...] = ("email", "phone", "ip", "card", "iban", "national-id")


class NearDuplicateSpec(WireModel):
    """MinHash/LSH near-duplicate removal (datasketch): of rows at least this similar, the first stays."""

    enabled: bool = Field(True, description="Remove near duplicates.")
    threshold: float = Field(0.9, gt=0, le=1, description="Estimated Jaccard similarity of word 3-grams.")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations (more: slower, more exact).")


class PiiSpec(WireModel):
    redact: bool = Field(False, description="Replace personal data with a placeholder per kind, e.g. [EMAIL].")
    kinds: list[PiiKind] = Field(default_factory=lambda: list(PII_KINDS), json_schema_extra={"default": list(PII_KINDS)},
                                 description="Kinds to redact: email, phone, ip, card, iban, national-id.")


class CleaningSpec(WireModel):
    """Steps applied to every row before the split, in this order; each reports its counts."""

    model_config = cel(("!has(self.maxTokens) || self.maxTokens >= self.minTokens",
                        "maxTokens must be >= minTokens"))

    normalize: bool = Field(True, description="Unicode NFC, unified line ends and spaces, no trailing blanks.")
    deduplicate: bool = Field(True, description="Drop rows identical to an earlier row (after normalisation).")
    near_duplicates: NearDuplicateSpec = Field(default_factory=NearDuplicateSpec)
    min_tokens: int = Field(0, ge=0, le=10**7, description="Drop rows with fewer tokens than this.")
    max_tokens: int | None = Field(None, ge=1, le=10**7, description="Drop rows with more tokens than this.")
    pii: PiiSpec = Field(default_factory=PiiSpec, description="Personal data redaction.")

    @model_validator(mode="after")
    def _range(self) -> "CleaningSpec":
        if self.max_tokens is not None and self.max_tokens < self.min_tokens:
            raise ValueError("maxTokens must be >= minTokens")
        return self


class CleaningStats(WireModel):
    """What each cleaning step did to the dataset."""

    rows_in: int = Field(description="Rows read, before cleaning.")
    normalized: int = Field(0, description="Rows whose text normalisation changed.")
    exact_duplicates: int = Field(0, description="Rows dropped as identical to an earlier row.")
    near_duplicates: int = Field(0, description="Rows dropped as near duplicates (MinHash).")
    too_short: int = Field(0, description="Rows dropped with fewer than minTokens tokens.")
    too_long: int = Field(0, description="Rows dropped with more than maxTokens tokens.")
    pii_redacted: dict[str, int] = Field(default_factory=dict, description="Replacements per kind.")
    rows_out: int = Field(description="Rows left after cleaning.")


DataFormat = Literal["auto", "alpaca", "messages", "text"]


class ContaminationSpec(WireModel):
    """MinHash near duplicates (datasketch, word 3-grams) between training rows and the rows that judge the
    model: the test split and the regression set (the previous champion's test rows)."""

    remove: bool = Field(True, description="Drop contaminated rows from training (false: only report them).")
    threshold: float = Field(0.8, gt=0, le=1, description="Estimated Jaccard similarity that counts as a near duplicate.")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations.")


class ReplaySpec(WireModel):
    """General-purpose rows mixed into training against catastrophic forgetting (never into validation or test)."""

    uri: StorageUri = Field(description="JSONL or Parquet file of general instruction data.")
    format: DataFormat = Field("auto", description="Row shape; auto detects it from the first row.")
    fraction: float = Field(0.05, gt=0, le=0.95, description="Share of the training mix that is replay rows (a "
                                                            "FineTuneSchedule's run replays its whole base dataset "
                                                            "this way, so up to 0.95).")


PreferenceFormat = Literal["auto", "pairs", "kto"]
PREFERENCE_OBJECTIVES = ("dpo", "kto", "sft-then-dpo")
PAIR_OBJECTIVES = ("dpo", "sft-then-dpo")


class PreferenceDataSpec(WireModel):
    """Preference rows for method.objective dpo, kto or sft-then-dpo (a FineTuneSchedule's snapshot writes them
    from reviewers' corrections and verdicts).

    pairs: {"prompt": ... | "messages": [... ending with the user's turn], "chosen": ..., "rejected": ...}
    kto:   {"prompt": ... | "messages": [...], "completion": ..., "label": true (desirable) | false}
    """

    uri: StorageUri = Field(description="JSONL or Parquet file of preference rows (pvc://, s3://, file:// or, "
                                        "in local mode, a path relative to the manifest).")
    format: PreferenceFormat = Field("auto", description=(
        "pairs (prompt, chosen, rejected: dpo, sft-then-dpo, kto) or kto (prompt, completion, label: kto "
        "only); auto detects it from the first row."))


class DatasetSpec(WireModel):
    uri: StorageUri = Field(description="JSONL or Parquet file: pvc://, s3://, file:// or (local mode) a path "
                                 "relative to the manifest.")
    format: DataFormat = Field("auto", description="Row shape; auto detects it from the first row.")
    validation_fraction: float = Field(0.1, gt=0, lt=0.5, description=(
        "Share of rows kept out of training for validation loss, early stopping and checkpoint choice."))
    test_fraction: float = Field(0.1, gt=0, lt=0.5, description=(
        "Share of rows kept for the test split: only the evaluator and the gate see them."))
    seed: Seed = Field(42, description="Seed of the train/validation/test split.")
    contamination: ContaminationSpec = Field(default_factory=ContaminationSpec, description=(
        "Near duplicates of test and regression rows in the training rows."))
    system_prompt: Text | None = Field(
        None, description="System message put before every example (and used when serving); "
                          "when unset the chat template's default applies.")
    cleaning: CleaningSpec = Field(default_factory=CleaningSpec)
    replay: ReplaySpec | None = None
    preferences: PreferenceDataSpec | None = Field(None, description=(
        "Preference rows for a dpo, kto or sft-then-dpo objective. The rows of `uri` still give the validation "
        "and test splits; preference rows near a test or regression row are handled as dataset.contamination "
        "says."))
    augment: AugmentSpec | None = Field(None, description=(
        "Synthetic training rows from a teacher model (an augment stage after validation): for datasets of a "
        "few hundred rows. They never enter the validation or test splits."))


class LoraSpec(WireModel):
    model_config = cel(("!('all-linear' in self.targetModules) || size(self.targetModules) == 1",
                        "targetModules: all-linear stands alone"))

    r: int = Field(16, ge=1, le=512, description="Rank of the LoRA update matrices.")
    alpha: float = Field(32, gt=0, le=65536, description="Scaling numerator; the update is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[ModuleName] = Field(
        default_factory=lambda: ["all-linear"], min_length=1, max_length=64, json_schema_extra={"default": ["all-linear"]},
        description="Module names to adapt (e.g. q_proj, v_proj), or [all-linear] for every linear layer "
                    "but the output head.")
    use_dora: bool = Field(False, description=(
        "Weight-decomposed LoRA (DoRA): a learned magnitude per output feature. Often better at low rank, "
        "~20% slower; vLLM cannot serve a DoRA adapter unmerged (set output.mergeAdapter)."))
    use_rslora: bool = Field(False, description=(
        "Rank-stabilised LoRA: scale the update by alpha / sqrt(r) instead of alpha / r (steadier at high rank)."))

    @model_validator(mode="after")
    def _targets(self) -> "LoraSpec":
        if "all-linear" in self.target_modules and len(self.target_modules) > 1:
            raise ValueError("targetModules: all-linear stands alone; list module names or give [all-linear]")
        return self

    def peft_target_modules(self) -> list[str] | str:
        return "all-linear" if self.target_modules == ["all-linear"] else self.target_modules


class QuantizationSpec(WireModel):
    """bitsandbytes 4-bit loading of the frozen base model (QLoRA)."""

    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type; NF4 suits normally distributed weights.")
    double_quant: bool = Field(True, description="Quantise the quantisation constants too (saves ~0.4 bit/parameter).")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="dtype the 4-bit weights are dequantised to for matrix products.")


Objective = Literal["sft", "dpo", "kto", "sft-then-dpo"]
FULL_PREFERENCE_RULE = ("self.objective == 'sft' || self.type != 'full'",
                        "objective dpo, kto and sft-then-dpo train a LoRA adapter (type lora or qlora): the base "
                        "model with the adapter disabled is their reference, so no second copy of the weights is "
                        "loaded")


class PreferenceSpec(WireModel):
    """The preference stage (TRL's DPOTrainer or KTOTrainer) of a dpo, kto or sft-then-dpo objective; the rest of
    spec.training (batch size, scheduler, checkpoints, seed) applies to it as to SFT."""

    beta: float = Field(0.1, gt=0, le=10, description=(
        "How far the tuned model may move from its reference (larger: closer to the reference)."))
    learning_rate: float = Field(5e-5, gt=0, le=1, description="Peak learning rate of the preference stage.")
    epochs: int = Field(2, ge=1, le=100, description="Passes over the preference rows.")
    desirable_weight: float = Field(1.0, gt=0, le=100, description="KTO: weight of desirable rows' loss.")
    undesirable_weight: float = Field(1.0, gt=0, le=100, description="KTO: weight of undesirable rows' loss.")


class MethodSpec(WireModel):
    model_config = cel(FULL_PREFERENCE_RULE)

    type: Literal["lora", "qlora", "full"] = Field("lora", description="lora, qlora (4-bit base, needs CUDA) or full.")
    objective: Objective = Field("sft", description=(
        "sft: learn the answers of dataset.uri. dpo: learn from preference pairs (chosen over rejected), reference "
        "the base model. kto: learn from answers marked desirable or not. sft-then-dpo: sft, then dpo with the "
        "sft adapter as reference. All but sft need dataset.preferences."))
    preference: PreferenceSpec = Field(default_factory=PreferenceSpec, description="The dpo/kto stage.")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA adapter shape (lora and qlora).")
    quantization: QuantizationSpec = Field(default_factory=QuantizationSpec, description="Base model quantisation (qlora).")

    @model_validator(mode="after")
    def _adapter_for_preferences(self) -> "MethodSpec":
        if self.objective != "sft" and self.type == "full":
            raise ValueError(FULL_PREFERENCE_RULE[1])
        return self


class CheckpointSpec(WireModel):
    every_steps: int = Field(50, ge=0, le=10**7, description="Save every N optimizer steps (0: only on SIGTERM).")
    keep_last: int = Field(2, ge=1, le=100, description="Complete checkpoints kept; older ones are deleted.")


class EarlyStoppingSpec(WireModel):
    enabled: bool = Field(False, description="Evaluate validation loss during training and stop early.")
    eval_every_steps: int = Field(50, ge=1, le=10**7, description="Validation loss is measured every N steps.")
    patience: int = Field(3, ge=1, le=1000, description="Evaluations without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0, le=1000, description="Smallest decrease of validation loss that counts.")


class TrainingSpec(WireModel):
    epochs: int = Field(3, ge=1, le=100, description="Passes over the training rows.")
    learning_rate: float = Field(2e-4, gt=0, le=1, description="Peak learning rate.")
    lr_scheduler: Literal["cosine", "linear", "constant", "warmup-stable-decay"] = Field(
        "cosine", description="Shape of the learning rate after warmup.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of the steps spent warming up linearly.")
    micro_batch_size: int = Field(8, ge=1, le=4096, description="Examples per forward pass (packed into one row).")
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024, description="Micro-batches per optimizer step.")
    max_seq_length: int = Field(1024, ge=16, le=262144, description="Longer examples are truncated.")
    weight_decay: float = Field(0.0, ge=0, le=10, description="AdamW weight decay.")
    adam_beta2: float = Field(0.999, gt=0, lt=1, description=(
        "AdamW's second-moment decay. Short runs learn late, small signals better with 0.95: the "
        "default remembers the large early gradients for ~1000 steps and shrinks later updates."))
    max_grad_norm: float = Field(1.0, gt=0, le=1e6, description="Gradients are clipped to this global norm.")
    packing: bool = Field(True, description="Concatenate examples without padding; attention stays within each example.")
    gradient_checkpointing: bool | None = Field(None, description=(
        "Recompute activations in backward: less memory, ~30% slower. Unset: on with CUDA (GPU memory is "
        "the limit), off on CPUs."))
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 base weights where the hardware has bf16 (adapters stay fp32).")
    optimizer: Literal["auto", "adamw", "paged-adamw-8bit"] = Field(
        "auto", description="auto: paged 8-bit AdamW (bitsandbytes) on CUDA, AdamW elsewhere.")
    loss_spike_factor: float = Field(
        10.0, gt=1, le=1e6, description="Stop (LossDiverged) when a step's loss exceeds this multiple of the lowest so far.")
    checkpoints: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Resumable checkpoints.")
    early_stopping: EarlyStoppingSpec = Field(default_factory=EarlyStoppingSpec,
                                              description="Stop when validation loss stops improving; keep the best.")
    seed: Seed = Field(42, description="Seed of initialisation, dropout and data order.")


class ResourcesSpec(WireModel):
    gpus: int = Field(0, ge=0, le=64, description="GPUs per node (nvidia.com/gpu).")
    nodes: int = Field(1, ge=1, le=128, description="Nodes for multi-node training (Indexed Job + torchrun).")
    cpu: Quantity | None = Field(None, description="CPU request and limit of each training pod, e.g. '8'.")
    memory: Quantity | None = Field(None, description="Memory request and limit of each training pod, e.g. 64Gi.")
    node_selector: NodeSelector
    tolerations: list[Toleration] = Field(default_factory=list, max_length=64, json_schema_extra={"default": []},
                                          description="Tolerations of the training pods (Kubernetes shape).")
    priority_class_name: ResourceName | None = Field(None, description=(
        "PriorityClass of the workloads' pods (Kueue also orders and preempts by it when no "
        "workloadPriorityClassName is set)."))
    workload_priority_class_name: ResourceName | None = Field(None, description=(
        "Kueue WorkloadPriorityClass of every Job the job creates (label kueue.x-k8s.io/priority-class): "
        "the queue's order and preemption, without changing the pods' own priority. Needs a queue."))

    @property
    def training_processes(self) -> int:
        """The trainer's world size: one process per GPU (one on a CPU) on every node."""
        return max(self.gpus, 1) * self.nodes


class OutputSpec(WireModel):
    uri: StorageUri | None = Field(None, description="Where the adapter is written; local mode defaults to the "
                                                     "work folder.")
    preview_examples: int = Field(3, ge=0, le=50, description="Validation examples answered by base and tuned model.")
    merge_adapter: bool = Field(False, description="Deprecated: the same as export: [merged].")
    export: list[ExportFormat] = Field(default_factory=list, max_length=2, json_schema_extra={"default": []},
                                       description=(
        "Produced after the gate passes (or when there is no evaluation) and registered with the adapter's "
        "MLflow version, each with its sha256: merged (base + adapter in one safetensors model) and gguf (one "
        "file for llama.cpp and Ollama, checked against the merged model on the test rows)."))
    gguf: GgufSpec = Field(default_factory=GgufSpec, description="The GGUF file's type and check.")

    @model_validator(mode="after")
    def _unique_exports(self) -> "OutputSpec":
        if len(set(self.export)) != len(self.export):
            raise ValueError("export: each of merged and gguf at most once")
        return self

    def exports(self) -> list[str]:
        """What the export stage writes, merged first; mergeAdapter counts as merged."""
        wanted = set(self.export) | ({"merged"} if self.merge_adapter else set())
        return [kind for kind in ("merged", "gguf") if kind in wanted]


PREFERENCE_DATA_RULE = (
    "!has(self.method) || !has(self.method.objective) || self.method.objective == 'sft' || "
    "has(self.dataset.preferences)",
    "method.objective dpo, kto and sft-then-dpo learn from preference rows: set dataset.preferences")
PAIRS_RULE = (
    "!has(self.method) || !has(self.method.objective) || !(self.method.objective in ['dpo', 'sft-then-dpo']) || "
    "!has(self.dataset.preferences) || !has(self.dataset.preferences.format) || "
    "self.dataset.preferences.format != 'kto'",
    "method.objective dpo and sft-then-dpo need preference pairs (prompt, chosen, rejected): "
    "dataset.preferences.format kto rows fit objective kto only")

KTO_BATCH_RULE = (
    "!has(self.method) || !has(self.method.objective) || self.method.objective != 'kto' || !has(self.training) || "
    "!has(self.training.microBatchSize) || self.training.microBatchSize >= 2",
    "method.objective kto needs training.microBatchSize >= 2: KTO estimates its reference point from "
    "mismatched prompts and answers within a micro-batch")


class FineTuneJobSpec(WireModel):
    model_config = cel(PREFERENCE_DATA_RULE, PAIRS_RULE, KTO_BATCH_RULE)

    base_model: BaseModelRef = Field(description="The model to adapt.")
    dataset: DatasetSpec = Field(description="Training data and how it is prepared.")
    method: MethodSpec = Field(default_factory=MethodSpec, description="lora, qlora or full fine-tuning.")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Optimisation hyperparameters.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="GPUs, nodes and scheduling.")
    output: OutputSpec = Field(default_factory=OutputSpec, description="Where results go.")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec,
                                       description="How the adapter is compared with its baseline, and the gate.")
    registry: RegistrySpec = Field(default_factory=RegistrySpec, description="MLflow model registration.")
    queue_name: ResourceName | None = Field(None, description=(
        "Kueue LocalQueue (in the job's namespace) that admits every Job this job creates: each is created "
        "suspended with the label kueue.x-k8s.io/queue-name and runs once Kueue admits it. Unset: the "
        "operator's default queue for the namespace, if it has one; no queue at all: the Jobs go straight to "
        "the scheduler. A local run ignores it."))
    suspend: bool = Field(False, description=(
        "true: the running stage stops and frees its GPUs (the trainer saves a checkpoint first) and the job "
        "shows Suspended; false again: the stage starts again and training resumes from that checkpoint, at "
        "the same step and data position. Applied at any time, unlike the rest of the spec."))

    @model_validator(mode="after")
    def _preference_data(self) -> "FineTuneJobSpec":
        if self.method.objective != "sft" and self.dataset.preferences is None:
            raise ValueError(PREFERENCE_DATA_RULE[1])
        return self

    @model_validator(mode="after")
    def _objective_fits(self) -> "FineTuneJobSpec":
        objective, preferences = self.method.objective, self.dataset.preferences
        if objective in PAIR_OBJECTIVES and preferences is not None and preferences.format == "kto":
            raise ValueError(PAIRS_RULE[1])
        if objective == "kto" and self.training.micro_batch_size < 2:
            raise ValueError(KTO_BATCH_RULE[1])
        return self


Phase = Literal["Pending", "Queued", "Validating", "Augmenting", "Training", "Evaluating", "Exporting",
                "Registering", "Suspended", "Succeeded", "Failed"]
StageName = Literal["validate", "augment", "train", "evaluate", "export", "register"]
TERMINAL_PHASES = ("Succeeded", "Failed")


class Progress(WireModel):
    """Training as it goes, from the trainer's MLflow metrics."""

    step: int = Field(0, description="Optimizer steps done.")
    total_steps: int = Field(0, description="Optimizer steps the training takes, all epochs.")
    steps: str | None = Field(None, description="step/totalSteps, e.g. 120/400 (the STEP column).")
    epoch: float = Field(0, description="Epochs done, fractional.")
    loss: float | None = Field(None, description="Latest training loss, 4 significant digits.")
    tokens_per_second: float | None = Field(None, description="Training throughput, tokens per second.")
    eta_seconds: int | None = Field(None, description="Estimated seconds of training left.")


class DatasetStats(WireModel):
    """The dataset as read and split."""

    rows: int = Field(description="Rows after cleaning.")
    train_rows: int = Field(description="Rows in the training split.")
    validation_rows: int = Field(description="Rows in the validation split (loss, early stopping).")
    test_rows: int = Field(description="Rows in the test split (evaluation and gate only).")
    train_tokens: int = Field(description="Tokens in the training split.")
    format: str = Field(description="Row shape found: alpaca, messages or text.")
    sha256: str = Field(description="Hash of the dataset file: which data this adapter was trained on.")
    contamination: ContaminationStats | None = Field(None, description="Near duplicates of test rows in training.")
    preferences: PreferenceDataStats | None = Field(None, description="The preference rows (dpo, kto objectives).")
    synthetic_rows: int | None = Field(None, description="Of the training rows, those a teacher wrote (dataset.augment).")


class PreferenceDataStats(WireModel):
    """The preference rows as read, checked and split (dataset.preferences)."""

    rows: int = Field(description="Rows read.")
    format: Literal["pairs", "kto"] = Field(description="Row shape found.")
    train_rows: int = Field(description="Rows trained on.")
    validation_rows: int = Field(description="Rows held out for the preference metrics before and after.")
    contaminated: int = Field(0, description="Rows whose prompt is near a test or regression row.")
    removed: int = Field(0, description="Of those, rows dropped (dataset.contamination.remove).")
    desirable: int | None = Field(None, description="kto rows: rows labelled desirable.")
    sha256: str = Field(description="Hash of the preference file.")


class ContaminationStats(WireModel):
    """Training rows that were near duplicates of rows the model is judged on."""

    threshold: float = Field(description="Estimated Jaccard similarity used.")
    test_rows: int = Field(description="Test rows compared against.")
    regression_rows: int = Field(0, description="Regression-set rows (the champion's test rows) compared against.")
    contaminated: int = Field(0, description="Training rows found near a test or regression row.")
    removed: int = Field(0, description="Of those, rows dropped from training (dataset.contamination.remove).")
    examples: list[str] = Field(default_factory=list, max_length=10, description=(
        "Up to 10 findings, e.g. 'train line 12 ~ test line 40 (0.94)'."))

    def summary(self) -> str:
        """'30 training rows near the 10 test and 30 regression-set rows (similarity >= 0.80); all removed
        from training' (the findings are in `examples`)."""
        against = f"{self.test_rows} test" + (f" and {self.regression_rows} regression-set" if self.regression_rows
                                              else "")
        if not self.contaminated:
            return f"none: no training row near the {against} rows (similarity >= {self.threshold:.2f})"
        rows = "row" if self.contaminated == 1 else "rows"
        if self.removed == self.contaminated:
            fate = "all removed from training"
        elif self.removed:
            fate = f"{self.removed} removed from training, {self.contaminated - self.removed} kept"
        else:
            fate = "kept in training (dataset.contamination.remove is false)"
        return (f"{self.contaminated} training {rows} near the {against} rows (similarity >= {self.threshold:.2f}); "
                f"{fate}")


class TokenLengthBin(WireModel):
    tokens: str = Field(description="Token range of a training row, e.g. 65-128, or '> 512 (truncated)'.")
    rows: int = Field(description="Training rows in that range.")


class DataReportSummary(WireModel):
    """What the Validating stage found, before any GPU was requested."""

    training_rows: int = Field(description="Rows trained on: the train split plus replay rows.")
    replay_rows: int = Field(0, description="Of those, general rows mixed in from dataset.replay.")
    truncated_rows: int = Field(description="Training rows longer than maxSeqLength, cut to it.")
    max_seq_length: int = Field(description="training.maxSeqLength the rows were measured against.")
    estimated_steps: int = Field(description="Optimizer steps the training will take, all epochs.")
    token_lengths: list[TokenLengthBin] = Field(default_factory=list, max_length=32,
                                                description="Training rows per token-length range.")


class PreferenceResults(WireModel):
    """What the preference stage (DPO or KTO) did, measured on its held-out preference rows before and after."""

    objective: Literal["dpo", "kto"] = Field(description="The preference loss trained.")
    reference: Literal["base", "sft"] = Field(description=(
        "The reference model: base (the adapter disabled) or sft (the SFT stage's adapter, frozen)."))
    beta: float = Field(description="method.preference.beta the stage trained with.")
    steps: int = Field(description="Optimizer steps of the preference stage.")
    loss_before: float = Field(description="Preference loss on the held-out rows before the stage.")
    loss_after: float = Field(description="Preference loss on the held-out rows after it.")
    margin_before: float | None = Field(None, description=(
        "dpo: mean over held-out pairs of log p(chosen) - log p(rejected), summed over answer tokens, before."))
    margin_after: float | None = Field(None, description="The same margin after the stage.")
    accuracy_before: float | None = Field(None, description=(
        "dpo: share of held-out pairs where the model gives chosen a higher log-probability than rejected, before."))
    accuracy_after: float | None = Field(None, description="The same share after the stage.")
    seconds: float = Field(0, description="Wall-clock seconds of the stage.")

    def summary(self) -> str:
        """'dpo (reference sft, beta 0.1): margin -1.20 -> +3.40, chosen preferred 40% -> 95%, loss 0.693 -> 0.210'."""
        parts = [f"{self.objective} (reference {self.reference}, beta {self.beta:g})"]
        if self.margin_before is not None and self.margin_after is not None:
            parts.append(f"margin {self.margin_before:+.2f} -> {self.margin_after:+.2f}")
        if self.accuracy_before is not None and self.accuracy_after is not None:
            parts.append(f"chosen preferred {self.accuracy_before:.0%} -> {self.accuracy_after:.0%}")
        parts.append(f"loss {self.loss_before:.3f} -> {self.loss_after:.3f}")
        return ": ".join([parts[0], ", ".join(parts[1:])])


class TrainingResults(WireModel):
    """What the training stage produced."""

    validation_loss_before: float = Field(description="Loss of the base model on the validation rows.")
    validation_loss_after: float = Field(description="Loss of the trained model on the validation rows.")
    validation_loss: str | None = Field(None, description="Validation loss before -> after, rounded, e.g. "
                                                        "2.310 -> 1.052 (a wide column).")
    train_loss: float = Field(description="Mean training loss over the run.")
    steps: int = Field(description="Optimizer steps taken.")
    tokens_per_second: float = Field(description="Training throughput, tokens per second.")
    seconds: float = Field(description="Wall-clock seconds of training.")
    adapter_uri: str = Field(description="Where the adapter (safetensors) was written.")
    test_uri: str = Field(description="The test rows, for the evaluation.")
    merged_model_uri: str | None = Field(None, description="Deprecated: see status.export.")
    resumed_from_step: int | None = Field(None, description="The checkpoint step training resumed from.")
    stopped_early: bool = Field(False, description="Whether early stopping ended the training.")
    best_step: int | None = Field(None, description="Step of the best validation loss kept (early stopping).")
    mlflow_run_id: str | None = Field(None, description="MLflow run holding the loss curves.")
    preference: PreferenceResults | None = Field(None, description="The dpo/kto stage, for those objectives.")

    @model_validator(mode="after")
    def _validation_loss(self) -> "TrainingResults":
        self.validation_loss = f"{self.validation_loss_before:.3f} -> {self.validation_loss_after:.3f}"
        return self


class QueueStatus(WireModel):
    """Where the current stage's Job stands in its Kueue LocalQueue."""

    name: str = Field(description="The LocalQueue.")
    state: Literal["Queued", "Admitted"] = Field(description=(
        "Queued: the Job waits, suspended, for Kueue to admit it (first time, or again after a preemption); "
        "Admitted: Kueue let it run."))
    since: str = Field(description="When the Job entered this state (RFC 3339).")
    workload: str | None = Field(None, description="Kueue's Workload object for the Job, once Kueue made one.")
    reason: str | None = Field(None, description=(
        "Kueue's reason while queued, from the Workload's conditions: Pending (no quota yet), Inadmissible "
        "(e.g. the LocalQueue does not exist), Preempted, ..."))
    message: str | None = Field(None, description="Kueue's message with it, e.g. insufficient unused quota for "
                                                  "nvidia.com/gpu.")
    admissions: int = Field(0, description="Times a Job of this FineTuneJob was admitted, all stages.")
    preemptions: int = Field(0, description="Times Kueue suspended a running Job of this FineTuneJob to make room.")


class StageCost(WireModel):
    """Time and GPUs of one stage, over every attempt (a suspended or preempted stage adds up its runs)."""

    stage: StageName = Field(description="validate, augment, train, evaluate, export or register.")
    gpus: int = Field(0, description="GPUs the stage's pods request, all nodes.")
    queued_seconds: float = Field(0, description="Seconds its Job waited for admission (Kueue) or resumption.")
    running_seconds: float = Field(0, description="Seconds its Job was admitted and running.")
    gpu_seconds_requested: float = Field(0, description="gpus x runningSeconds: what the stage held.")
    gpu_seconds_used: float = Field(0, description=(
        "gpus x the seconds the workload itself reports computing (loading, training or generating); the "
        "rest of the held time went to waiting for pods, images and interrupted attempts."))
    interruptions: int = Field(0, description="Times the stage was stopped before it finished "
                                              "(suspended or preempted) and later started again.")
    state: Literal["Queued", "Running", "Stopped", "Done"] = Field("Running", description=(
        "What the open interval counts as: Queued and Running add to their seconds; Stopped (suspended by the "
        "user) adds to neither; Done: closed."))
    since: str | None = Field(None, description="Start of the open interval (RFC 3339); none once Done.")


class ImprovementCost(WireModel):
    metric: str = Field(description="The gate's primary metric.")
    points: float = Field(description="Candidate minus baseline on the test set, in points (x100).")
    gpu_hours_per_point: float | None = Field(None, description="GPU-hours requested per point gained; none "
                                                               "without a gain.")
    running_hours_per_point: float | None = Field(None, description=(
        "Running wall-clock hours per point gained (what a CPU-only run costs); none without a gain."))
    cost_per_point: float | None = Field(None, description="costPerGpuHour x gpuHoursPerPoint.")


class CostStatus(WireModel):
    """What the run cost: queue and run time, GPU-hours held and used, training efficiency, and per point gained."""

    stages: list[StageCost] = Field(default_factory=list, max_length=4, description="Per stage, in order.")
    queued_seconds: float = Field(0, description="All stages: seconds waiting for admission.")
    running_seconds: float = Field(0, description="All stages: seconds running.")
    gpu_hours_requested: float = Field(0, description="All stages: GPU-hours held.")
    gpu_hours_used: float = Field(0, description="All stages: GPU-hours the workloads computed.")
    tokens_per_second: float | None = Field(None, description="Training throughput, tokens per second.")
    mfu: float | None = Field(None, description=(
        "Training model FLOPs utilisation: achieved model FLOPs / the GPUs' peak dense bf16 FLOPs (none on a "
        "CPU or an unknown GPU without gpuPeakTflops in the operator config)."))
    achieved_tflops: float | None = Field(None, description="Model TFLOPS achieved in training, all devices.")
    cost_per_gpu_hour: float | None = Field(None, description="The operator's costPerGpuHour, when set.")
    currency: str | None = Field(None, description="The operator's costCurrency, when costPerGpuHour is set.")
    cost: float | None = Field(None, description="costPerGpuHour x gpuHoursRequested.")
    improvement: ImprovementCost | None = Field(None, description="The gain the run bought, once evaluated.")
    summary: str | None = Field(None, description=(
        "One line, e.g. '1.02 GPU-h held, 0.95 used; queued 4m10s, ran 1h02m; 0.034 GPU-h per exactMatch "
        "point' (the wide Cost column)."))


class FineTuneJobStatus(WireModel):
    phase: Phase = Field("Pending", description=(
        "Pending, Validating, Training, Evaluating, Registering, Succeeded or Failed; Queued while the current "
        "stage's Job waits for Kueue to admit it, Suspended while spec.suspend holds it. A failed gate is "
        "Succeeded with condition Ready False (reason GateFailed)."))
    stage: StageName | None = Field(None, description=(
        "The stage the job is in (also while Queued or Suspended): validate, augment, train, evaluate, export or register."))
    message: str = Field("", description="What is happening now, or how the job ended.")
    conditions: Conditions
    progress: Progress | None = Field(None, description="Training progress.")
    dataset: DatasetStats | None = Field(None, description="The dataset as read and split.")
    cleaning: CleaningStats | None = Field(None, description="What the cleaning steps removed or changed.")
    data_report: DataReportSummary | None = Field(None, description="What the Validating stage found.")
    training: TrainingResults | None = Field(None, description="What training produced.")
    evaluation: EvaluationResults | None = Field(None, description="Scores against the baseline, and the gate.")
    augmentation: AugmentationStats | None = Field(None, description="Synthetic rows from the teacher "
                                                                      "(dataset.augment).")
    export: ExportResults | None = Field(None, description="The merged model and GGUF file (output.export).")
    registry: RegistryResults | None = Field(None, description="The registered MLflow model version.")
    observed_generation: int | None = Field(None, description=(
        "metadata.generation of the spec the job runs with: the one it started with, or a later one that "
        "changed spec.suspend only; any other later change is not applied (condition SpecChangeIgnored)."))
    start_time: str | None = Field(None, description="When the job started (RFC 3339).")
    completion_time: str | None = Field(None, description="When the job succeeded or failed (RFC 3339).")
    queue: QueueStatus | None = Field(None, description="The Kueue LocalQueue of the current stage's Job.")
    cost: CostStatus | None = Field(None, description="Time, GPU-hours and money the run took so far.")
    spec_digest: str | None = Field(None, description=(
        "sha256 of the spec the job started with, spec.suspend left out: a change of suspend alone is "
        "applied, any other change is reported and ignored."))


class ObjectMeta(WireModel):
    model_config = WireModel.model_config | {"extra": "allow"}

    name: ResourceName
    namespace: str = "default"
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


MULTI_NODE_NAME_RULE = (
    f"self.spec.resources.nodes <= 1 || self.metadata.name.matches('{DNS1035_LABEL}')",
    "metadata.name: a multi-node FineTuneJob (spec.resources.nodes > 1) names the headless Service and the pod "
    "hostnames of its rendezvous after itself, so it must be lowercase letters, digits and '-', starting with a "
    "letter (no dots)")


class FineTuneJob(WireModel):
    api_version: Literal["tuneloop.dev/v1alpha1"] = API_VERSION
    kind: Literal["FineTuneJob"] = KIND
    metadata: ObjectMeta
    spec: FineTuneJobSpec
    status: FineTuneJobStatus = Field(default_factory=FineTuneJobStatus)

    @model_validator(mode="after")
    def _multi_node_name(self) -> "FineTuneJob":
        if self.spec.resources.nodes > 1 and not re.match(DNS1035_LABEL, self.metadata.name):
            raise ValueError(MULTI_NODE_NAME_RULE[1])
        return self


def parse_spec(raw: Any) -> FineTuneJobSpec:
    """Validate a raw spec; SpecError lists every problem with its field path (`spec.x.y: ...`)."""
    return validated(FineTuneJobSpec, raw, "spec")


def parse_manifest(raw: Any) -> FineTuneJob:
    """Validate a whole FineTuneJob manifest (apiVersion, kind, metadata, spec)."""
    return validated_manifest(FineTuneJob, raw)


CRD = Kind(
    kind=KIND,
    plural=PLURAL,
    short_names=("ftj",),
    spec=FineTuneJobSpec,
    status=FineTuneJobStatus,
    description="A fine-tuning run: data preparation, LoRA/QLoRA/full training, evaluation and registration.",
    rules=(MULTI_NODE_NAME_RULE,),
    printers=(
        Printer("Phase", "string", ".status.phase"),
        Printer("Model", "string", ".spec.baseModel.name", "Catalog name of the base model"),
        Printer("Step", "string", ".status.progress.steps", "Optimizer steps done of the total"),
        Printer("Loss", "number", ".status.progress.loss", "Latest training loss"),
        Printer("Score", "string", ".status.evaluation.summary",
                "The gate's primary metric on the test set, candidate vs baseline"),
        Printer("Gate", "string", ".status.evaluation.gate.verdict", "Passed or Failed"),
        Printer("Version", "string", ".status.registry.version", "Registered model version"),
        Printer("Age", "date", ".metadata.creationTimestamp"),
        Printer("Objective", "string", ".spec.method.objective", "sft, dpo, kto or sft-then-dpo", priority=1),
        Printer("Queue", "string", ".status.queue.name", "Kueue LocalQueue", priority=1),
        Printer("Queue State", "string", ".status.queue.state", "Queued or Admitted", priority=1),
        Printer("Since", "date", ".status.queue.since", "When the current Job was queued, or admitted",
                priority=1),
        Printer("Cost", "string", ".status.cost.summary", "GPU-hours held and used, queue and run time",
                priority=1),
        Printer("Val Loss", "string", ".status.training.validationLoss", "Validation loss before -> after training",
                priority=1),
        Printer("Registered", "string", ".status.registry.uri", "models:/name/version", priority=1),
        Printer("ETA", "integer", ".status.progress.etaSeconds", "Seconds of training left", priority=1),
        Printer("Message", "string", ".status.message", priority=1),
    ),
)
