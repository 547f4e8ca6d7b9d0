"""The ModelDeployment resource: a base model + adapter served by vLLM, rolled out blue-green.

Field names follow Argo Rollouts' blue-green strategy (activeService, previewService,
autoPromotionEnabled, prePromotionAnalysis, scaleDownDelaySeconds, ...; status phase, message,
abort, activeSelector, previewSelector) so that people who know Argo Rollouts know this too.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from tuneloop.api.common import (
    API_VERSION,
    DNS1035_LABEL,
    DNS1035_MESSAGE,
    MAX_LABEL,
    Conditions,
    WireModel,
    check_service_name,
    child_name,
    validated,
    validated_manifest,
)
from tuneloop.api.crd import Kind, Printer
from tuneloop.api.evaluation import JudgeSpec
from tuneloop.api.fields import MAX_TEXT, ImageReference, Name, Quantity, StorageUri, Text, linear_pattern
from tuneloop.api.finetunejob import BaseModelRef, ObjectMeta, cel

KIND = "ModelDeployment"
PLURAL = "modeldeployments"

Colour = Literal["blue", "green"]
COLOURS: tuple[Colour, Colour] = ("blue", "green")
# The ranks vLLM's --max-lora-rank accepts.
LoraRank = Literal[8, 16, 32, 64, 128, 256, 320, 512]

ADAPTER_RULE = "give uri, or name with exactly one of version (pinned) or alias (followed, e.g. champion)"
EXPECT_RULE = "give exactly one of contains, regex or json"


class AdapterRef(WireModel):
    """The LoRA adapter (or merged model) to serve: an MLflow registered model version, or a folder by URI."""

    model_config = cel((
        "has(self.uri) ? !has(self.name) && !has(self.version) && !has(self.alias)"
        " : has(self.name) && has(self.version) != has(self.alias)", ADAPTER_RULE))

    name: Name | None = Field(None, description="MLflow registered model name.")
    version: str | None = Field(None, pattern=r"^[0-9]+$",
                                description="Pinned MLflow model version, e.g. '7' (GitOps promotion writes this).")
    alias: Name | None = Field(None,
                              description="MLflow alias to follow, e.g. champion: moving it starts a rollout.")
    uri: StorageUri | None = Field(None, description="Adapter folder: pvc://claim/path or s3://bucket/path.")

    @model_validator(mode="after")
    def _exactly_one_form(self) -> "AdapterRef":
        if self.uri is not None:
            valid = self.name is None and self.version is None and self.alias is None
        else:
            valid = self.name is not None and (self.version is None) != (self.alias is None)
        if not valid:
            raise ValueError(ADAPTER_RULE)
        return self

    def display(self) -> str:
        if self.uri is not None:
            return self.uri
        return f"{self.name}@{self.alias}" if self.alias else f"{self.name}/{self.version}"


class ServingSpec(WireModel):
    """How each colour's vLLM OpenAI server runs."""

    image: ImageReference | None = Field(None, description="vLLM image; unset: the operator's configured vLLM image.")
    extra_args: list[Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=list, max_length=100, json_schema_extra={"default": []},
                                  description="Extra vLLM arguments appended to the command line.")
    replicas: int = Field(1, ge=1, le=64, description="Pods of the active colour.")
    gpus: int = Field(1, ge=0, le=8, description="GPUs per pod (nvidia.com/gpu); more than one: tensor parallel.")
    cpu: Quantity | None = Field(None, description="CPU request and limit of each serving pod, e.g. '8'.")
    memory: Quantity | None = Field(None, description="Memory request and limit of each serving pod, e.g. 48Gi.")
    max_loras: int = Field(1, ge=1, le=64, description="LoRA adapters vLLM keeps in one batch (--max-loras).")
    max_lora_rank: LoraRank = Field(16, description="Largest adapter rank served (--max-lora-rank): "
                                                    "8, 16, 32, 64, 128, 256, 320 or 512.")
    max_model_len: int | None = Field(None, ge=16, le=10**7,
                                      description="Context length (--max-model-len); unset: the model's.")
    merged: bool = Field(False, description="The adapter reference is a merged model: serve it without LoRA.")


class Expectation(WireModel):
    """What a smoke prompt's answer must satisfy; exactly one check."""

    model_config = cel(("(has(self.contains) ? 1 : 0) + (has(self.regex) ? 1 : 0) + (has(self.json) ? 1 : 0) == 1",
                        EXPECT_RULE))

    contains: str | None = Field(None, min_length=1, max_length=4096, description="The answer contains this text.")
    regex: str | None = Field(None, min_length=1, max_length=1024,
                              description="The answer matches this regular expression (RE2 syntax: matched "
                                          "in linear time; no backreferences or look-arounds).")
    json_valid: bool | None = Field(None, alias="json", description="The answer parses as JSON.")

    @field_validator("regex")
    @classmethod
    def _compiles(cls, regex: str | None) -> str | None:
        if regex is not None:
            linear_pattern(regex)
        return regex

    @model_validator(mode="after")
    def _exactly_one(self) -> "Expectation":
        if sum(check is not None for check in (self.contains, self.regex, self.json_valid)) != 1:
            raise ValueError(EXPECT_RULE)
        return self


class SmokePrompt(WireModel):
    prompt: str = Field(min_length=1, max_length=MAX_TEXT,
                        description="User message sent to the preview's chat completions API.")
    expect: Expectation = Field(description="What the answer must satisfy.")
    reference: Text | None = Field(None, description="A good answer, shown to the judge (minJudgeScore).")


JUDGE_RULE = "minJudgeScore needs a judge"
LOCAL_JUDGE_RULE = "judge.local: a rollout's judge is served in the cluster; give its url"


class AnalysisSpec(WireModel):
    """Real requests against a colour's OpenAI API; every threshold set must hold for the analysis to pass."""

    model_config = cel(("!has(self.minJudgeScore) || has(self.judge)", JUDGE_RULE),
                       ("!has(self.judge) || !has(self.judge.local) || !self.judge.local", LOCAL_JUDGE_RULE))

    smoke_prompts: list[SmokePrompt] = Field(default_factory=list, max_length=50, json_schema_extra={"default": []},
                                             description="Prompts whose answers must meet their expectation.")
    initial_delay_seconds: int = Field(5, ge=0, le=3600, description=(
        "Wait this long after the colour is ready (pre-promotion) or has taken the traffic (post-promotion) "
        "before the first request: the Service's new endpoints take a moment to reach every node."))
    requests: int = Field(20, ge=1, le=10000, description="Requests sent to measure latency and errors.")
    max_p95_latency_ms: float | None = Field(None, gt=0, le=3_600_000,
                                             description="Highest acceptable p95 latency in milliseconds.")
    max_error_rate: float = Field(0.0, ge=0, le=1, description="Highest acceptable share of failed requests.")
    min_judge_score: float | None = Field(None, ge=1, le=10,
                                          description="Lowest acceptable mean LLM judge score (1-10) of the "
                                                      "smoke prompts' answers.")
    judge: JudgeSpec | None = Field(None, description="The LLM judge (an OpenAI-compatible endpoint) that scores "
                                                      "the answers; its apiKeySecret is read in this namespace.")
    max_tokens: int = Field(64, ge=1, le=4096, description="max_tokens of every request.")
    concurrency: int = Field(4, ge=1, le=64, description="Requests in flight against the preview.")
    timeout_seconds: float = Field(30, gt=0, le=600, description="Per request; a request that takes longer "
                                                                 "counts as an error.")

    @model_validator(mode="after")
    def _judge_for_score(self) -> "AnalysisSpec":
        if self.min_judge_score is not None and self.judge is None:
            raise ValueError(JUDGE_RULE)
        if self.judge is not None and self.judge.local:
            raise ValueError(LOCAL_JUDGE_RULE)
        return self


SERVICE_NAME_SCHEMA = {"maxLength": MAX_LABEL, "pattern": DNS1035_LABEL}  # what check_service_name checks


class BlueGreenStrategy(WireModel):
    active_service: str | None = Field(None, json_schema_extra=SERVICE_NAME_SCHEMA,
                                       description="Service taking the traffic; unset: the resource's name.")
    preview_service: str | None = Field(None, json_schema_extra=SERVICE_NAME_SCHEMA,
                                        description="Service selecting the colour under test; unset: <name>-preview.")
    auto_promotion_enabled: bool = Field(True, description="Promote when the analysis passes; false: wait for "
                                                           "`tuneloop rollout promote` or the promote annotation.")
    auto_promotion_seconds: int | None = Field(None, ge=0, le=604800, description="Wait this long after the analysis "
                                                                       "passed before promoting automatically.")
    preview_replica_count: int | None = Field(None, ge=1, le=64, description="Pods of the preview colour while it is "
                                                                      "analysed; unset: spec.serving.replicas.")
    scale_down_delay_seconds: int = Field(30, ge=0, le=604800, description="Seconds the old colour keeps running after the "
                                                                "switch (clients finish their requests).")
    abort_scale_down_delay_seconds: int = Field(30, ge=0, le=604800, description="Seconds a failed preview keeps running "
                                                                      "after an abort (for debugging).")
    readiness_timeout_seconds: int = Field(900, ge=1, le=604800, description="The preview must be ready within this; "
                                                                   "else the rollout aborts.")
    pre_promotion_analysis: AnalysisSpec | None = Field(
        None, description="Analysis of the preview before it takes traffic; unset: readiness is enough.")
    post_promotion_analysis: AnalysisSpec | None = Field(
        None, description="Analysis after the switch; failing it switches back while the old colour still runs.")

    @field_validator("active_service", "preview_service")
    @classmethod
    def _service_names(cls, name: str | None) -> str | None:
        return None if name is None else check_service_name(name)

    def active_service_name(self, name: str) -> str:
        return self.active_service or name

    def preview_service_name(self, name: str) -> str:
        return self.preview_service or child_name(name, "preview")


class StrategySpec(WireModel):
    blue_green: BlueGreenStrategy = Field(default_factory=BlueGreenStrategy, description="Blue-green rollout.")


class ModelDeploymentSpec(WireModel):
    base_model: BaseModelRef = Field(description="The base model the adapter was trained on.")
    adapter: AdapterRef = Field(description="The adapter (or merged model) to serve.")
    serving: ServingSpec = Field(default_factory=ServingSpec, description="vLLM server settings.")
    strategy: StrategySpec = Field(default_factory=StrategySpec, description="How a new revision rolls out.")
    port: int = Field(8000, ge=1, le=65535, description="Port of the OpenAI API (container and Services).")


Phase = Literal["Pending", "Progressing", "Paused", "Healthy", "Degraded", "Aborted"]
Outcome = Literal["Promoted", "Failed", "Aborted", "Superseded", "RolledBack"]


class RevisionStatus(WireModel):
    """One revision and the colour that runs it."""

    colour: Colour = Field(description="blue or green: the Deployment <name>-<colour> that runs it.")
    revision: str = Field(description="Hash of everything that shapes the pods (adapter version included).")
    adapter_version: str | None = Field(None, description="Registered adapter version it serves.")
    summary: str | None = Field(None, description="Adapter version and colour, e.g. 'v4 green' (the ACTIVE and "
                                                  "PREVIEW columns).")
    score: float | None = Field(None, description="Judge score of the latest analysis of this revision.")

    @model_validator(mode="after")
    def _summary(self) -> "RevisionStatus":
        self.summary = f"v{self.adapter_version} {self.colour}" if self.adapter_version else \
            f"{self.revision} {self.colour}"
        return self


class RolloutRecord(WireModel):
    """One finished rollout."""

    revision: str = Field(description="The revision rolled out.")
    adapter_version: str | None = Field(None, description="Its adapter version.")
    outcome: Outcome = Field(description="Promoted, Failed, Aborted, Superseded or RolledBack.")
    reason: str = Field(description="Why it ended so.")
    time: str = Field(description="When it ended (RFC 3339).")


class RolloutStep(WireModel):
    """Where the rollout in progress is, so that a restarted operator carries on from there."""

    step: Literal["Preview", "Analysis", "Paused", "ScalingUp", "PostPromotion"] = Field(
        description="Preview (coming up), Analysis, Paused (awaiting promotion), ScalingUp or PostPromotion.")
    since: str = Field(description="When this step started (the readiness deadline counts from here).")
    started: str = Field(description="When this rollout attempt started (names its analysis runs).")
    previous_active: RevisionStatus | None = Field(None, description="The colour to switch back to (post-promotion).")


class ScaleDown(WireModel):
    """A colour to scale to zero once its delay has passed."""

    colour: Colour = Field(description="The colour to scale down.")
    at: str = Field(description="When (RFC 3339).")


class ModelDeploymentStatus(WireModel):
    phase: Phase = Field("Pending", description="Pending, Progressing, Paused, Healthy (serving the wanted "
                                                "revision), Degraded or Aborted.")
    message: str = Field("", description="What is happening now, or why it is degraded.")
    abort: bool = Field(False, description="The last rollout was aborted or failed; its preview was torn down.")
    active_selector: Colour | None = Field(None, description="Colour the active Service selects.")
    preview_selector: Colour | None = Field(None, description="Colour the preview Service selects.")
    active: RevisionStatus | None = Field(None, description="The revision taking the traffic.")
    preview: RevisionStatus | None = Field(None, description="The revision being rolled out.")
    rollout: RolloutStep | None = Field(None, description="Where the rollout in progress is.")
    scale_down: ScaleDown | None = Field(None, description="A colour waiting to be scaled down.")
    failed_revision: str | None = Field(None, description="Not rolled out again until a retry or a new revision.")
    conditions: Conditions
    history: list[RolloutRecord] = Field(default_factory=list, description="The last rollouts, newest last.")
    observed_generation: int | None = Field(None, description="metadata.generation this status was computed from.")


class ServiceNamedMeta(ObjectMeta):
    """A ModelDeployment's name is its active Service's (and the start of the others'): a DNS-1035 label."""

    name: Annotated[str, AfterValidator(check_service_name)]  # stricter than any custom resource's name


NAME_RULE = (f"size(self.metadata.name) <= {MAX_LABEL} && self.metadata.name.matches('{DNS1035_LABEL}')",
             f"metadata.name: a ModelDeployment's name is its Service's, so it {DNS1035_MESSAGE}")


class ModelDeployment(WireModel):
    api_version: Literal["tuneloop.dev/v1alpha1"] = API_VERSION
    kind: Literal["ModelDeployment"] = KIND
    metadata: ServiceNamedMeta
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus = Field(default_factory=ModelDeploymentStatus)


def parse_spec(raw: Any) -> ModelDeploymentSpec:
    """Validate a raw spec; SpecError lists every problem with its field path (`spec.x.y: ...`)."""
    return validated(ModelDeploymentSpec, raw, "spec")


def parse_manifest(raw: Any) -> ModelDeployment:
    return validated_manifest(ModelDeployment, raw)


CRD = Kind(
    kind=KIND,
    plural=PLURAL,
    short_names=("mdep",),
    spec=ModelDeploymentSpec,
    status=ModelDeploymentStatus,
    description="A base model + adapter served by vLLM, rolled out blue-green with analysis before traffic.",
    rules=(NAME_RULE,),
    printers=(
        Printer("Phase", "string", ".status.phase"),
        Printer("Active", "string", ".status.active.summary", "Adapter version and colour taking the traffic"),
        Printer("Preview", "string", ".status.preview.summary", "Adapter version and colour under test"),
        Printer("Score", "number", ".status.active.score", "Analysis score of the active revision"),
        Printer("Age", "date", ".metadata.creationTimestamp"),
        Printer("Revision", "string", ".status.active.revision", "Revision taking the traffic", priority=1),
        Printer("Preview Revision", "string", ".status.preview.revision", "Revision under test", priority=1),
        Printer("Message", "string", ".status.message", priority=1),
    ),
)


# On a registered adapter version: the options of its adapter_config.json that decide whether a
# server can load it, e.g. {"r": 16, "useDora": false, "useRslora": false, "bias": "none",
# "modulesToSave": [], "targetModules": ["q_proj", "v_proj"]}.
LORA_TAG = "tuneloop.dev/lora"
LORA_BIAS_FLAG = "--enable-lora-bias"


def lora_options(adapter_config: dict[str, Any]) -> dict[str, Any]:
    """What LORA_TAG records of a peft adapter_config.json."""
    targets = adapter_config.get("target_modules") or []
    return {"r": adapter_config.get("r"), "useDora": bool(adapter_config.get("use_dora")),
            "useRslora": bool(adapter_config.get("use_rslora")), "bias": adapter_config.get("bias") or "none",
            "modulesToSave": list(adapter_config.get("modules_to_save") or []),
            "targetModules": sorted(targets) if isinstance(targets, list) else targets}


def unservable_adapter(spec: "ModelDeploymentSpec", version: str, lora: dict[str, Any] | None) -> str | None:
    """Why vLLM would refuse this registered adapter version (its PEFTHelper.validate_legal rules), said
    before any Deployment tries to load it; every reason at once."""
    if lora is None or spec.serving.merged:
        return None
    problems = []
    if lora.get("useDora"):
        problems.append("it was trained with DoRA (spec.method.lora.useDora) and vLLM serves LoRA adapters only: "
                        "train without DoRA, or register the merged model and set spec.serving.merged")
    rank = lora.get("r")
    if isinstance(rank, int) and rank > spec.serving.max_lora_rank:
        problems.append(f"its LoRA rank {rank} is above spec.serving.maxLoraRank {spec.serving.max_lora_rank}: "
                        "raise maxLoraRank or train a smaller rank")
    bias = lora.get("bias", "none")
    if bias != "none" and LORA_BIAS_FLAG not in spec.serving.extra_args:
        problems.append(f"it trains biases (bias: {bias}), which vLLM loads only with {LORA_BIAS_FLAG} in "
                        "spec.serving.extraArgs")
    if lora.get("modulesToSave"):
        problems.append(f"it saves whole modules ({', '.join(map(str, lora['modulesToSave']))}), which vLLM cannot "
                        "load beside a LoRA adapter: register the merged model and set spec.serving.merged")
    if not problems:
        return None
    return f"adapter {spec.adapter.name} version {version} cannot be served: " + "; ".join(problems)

