"""How a FineTuneJob proves its adapter is better (spec.evaluation) and where it is registered (spec.registry).

Metric names used across spec, status and the evaluator's result:

    exactMatch     answer == reference after normalisation: plain text ignores case and spacing;
                   JSON compares values strictly ("P1" != "p1") whatever the key order or spacing
    rougeL         ROUGE-L F1 (rouge-score)
    jsonValid      the answer parses as JSON               (structured tasks: references are JSON)
    fieldAccuracy  share of the reference's fields the answer gets right          (structured)
    labelAccuracy  all of evaluation.structured.labelFields right                 (structured)
    judgeScore     LLM judge's 1-10 pointwise score                               (judge configured)
    judgeWinRate   pairwise candidate-vs-baseline verdicts, both orders: win 1, tie 0.5, loss 0
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from tuneloop.api.common import WireModel
from tuneloop.api.fields import EnvName, HttpUrl, Name, ResourceName, SecretKey, Seed, StorageUri, Text

METRICS = ("exactMatch", "rougeL", "jsonValid", "fieldAccuracy", "labelAccuracy", "judgeScore", "judgeWinRate")
# judgeWinRate already compares candidate with baseline: it has no baseline value of its own.
PAIRED_ONLY = ("judgeWinRate",)


def _known_metrics(values: dict[str, float]) -> dict[str, float]:
    unknown = sorted(set(values) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metric {', '.join(unknown)}; known: {', '.join(METRICS)}")
    return values


class SecretKeyRef(WireModel):
    name: ResourceName = Field(description="Secret in the FineTuneJob's namespace.")
    key: SecretKey = Field(description="Key in that Secret.")


class JudgeSpec(WireModel):
    """An LLM judge behind any OpenAI-compatible endpoint (in a cluster, a vLLM-served model)."""

    url: HttpUrl = Field(description="Base URL of the OpenAI-compatible API, e.g. http://judge.llm.svc:8000/v1.")
    model: Name = Field(description="Model name the endpoint serves.")
    api_key_secret: SecretKeyRef | None = Field(
        None, description="Secret holding the API key (cluster). Never put a key in the spec.")
    api_key_env: EnvName | None = Field(
        None, description="Environment variable holding the API key (local runs).")
    rubric: Text | None = Field(None, description="What a good answer is; the default rubric judges "
                                                 "correctness and faithfulness to the reference.")
    pairwise: bool = Field(True, description="Also ask candidate-vs-baseline, in both orders.")
    concurrency: int = Field(4, ge=1, le=64, description="Judge requests in flight.")
    timeout_seconds: float = Field(60, gt=0, le=600, description="Per request.")
    max_retries: int = Field(4, ge=0, le=10, description="Retries per request, with exponential backoff.")
    required: bool = Field(False, description="Fail the evaluation instead of skipping the judge when "
                                              "it is not configured for this run.")


class StructuredSpec(WireModel):
    """Structured-output metrics (jsonValid, fieldAccuracy, labelAccuracy)."""

    label_fields: list[Name] = Field(default_factory=list, max_length=64, json_schema_extra={"default": []}, description=(
        "JSON fields that are labels (e.g. priority, category): labelAccuracy counts answers that get all right."))


class GeneralSetSpec(WireModel):
    uri: StorageUri = Field(description="General-ability prompts with reference answers (alpaca, messages).")
    max_examples: int = Field(50, ge=1, le=10000, description="Use at most this many rows of the set.")


class BootstrapSpec(WireModel):
    samples: int = Field(1000, ge=100, le=100000, description="Bootstrap resamples.")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Confidence level of every interval.")
    seed: Seed = Field(0, description="Seed of the resampling, so intervals are reproducible.")


class GateSpec(WireModel):
    """The gate decides on the confidence interval's lower bound, never on the mean."""

    primary_metric: Literal["exactMatch", "rougeL", "jsonValid", "fieldAccuracy", "labelAccuracy", "judgeScore"] = (
        Field("exactMatch", description="The score shown, compared with the champion; it must improve on the "
                                        "baseline (lower bound of the difference above minImprovement, default 0)."))
    min_score: dict[str, float] = Field(default_factory=dict, json_schema_extra={"default": {}}, description=(
        "Metric -> minimum lower bound of the candidate's score, e.g. {exactMatch: 0.5}."))
    min_improvement: dict[str, float] = Field(default_factory=dict, json_schema_extra={"default": {}}, description=(
        "Metric -> the lower bound of candidate minus baseline must be above this."))
    max_regression: float = Field(0.05, ge=0, le=1, description=(
        "General set: the lower bound of candidate minus baseline ROUGE-L may not go below -maxRegression."))

    _min_score = field_validator("min_score")(_known_metrics)

    @field_validator("min_improvement")
    @classmethod
    def _improvable(cls, values: dict[str, float]) -> dict[str, float]:
        _known_metrics(values)
        paired = sorted(set(values) & set(PAIRED_ONLY))
        if paired:
            raise ValueError(f"{', '.join(paired)} already compares candidate with baseline: "
                             "use minScore (e.g. judgeWinRate: 0.5)")
        return values


class EvaluationSpec(WireModel):
    enabled: bool = Field(True, description="Evaluate after training (and gate the registration).")
    baseline: Literal["auto", "base", "champion"] = Field("auto", description=(
        "Compare with the base model, the registered champion, or (auto) the champion when there is one."))
    max_examples: int | None = Field(None, ge=1, le=10**7, description="Evaluate at most this many hold-out rows.")
    max_new_tokens: int = Field(256, ge=1, le=8192, description="Token limit per generated answer.")
    batch_size: int = Field(8, ge=1, le=512, description="Prompts generated together.")
    structured: StructuredSpec = Field(default_factory=StructuredSpec, description=(
        "Structured-output metrics; they apply when the references are JSON objects."))
    judge: JudgeSpec | None = Field(None, description="LLM-as-a-judge; absent: not configured.")
    general_set: GeneralSetSpec | None = Field(None, description="Measures regression on general ability.")
    bootstrap: BootstrapSpec = Field(default_factory=BootstrapSpec, description="Confidence intervals.")
    gate: GateSpec = Field(default_factory=GateSpec, description="What the adapter must show to be promoted.")


class RegistrySpec(WireModel):
    enabled: bool = Field(True, description="Register the adapter as a new MLflow model version.")
    model_name: str | None = Field(None, max_length=256, description="Registered model; default: the job's name.")
    promotion: Literal["auto", "manual"] = Field("auto", description=(
        "auto: alias champion moves to a version that passed the gate against the champion; "
        "manual: only challenger is set, a person moves champion."))


# --- results ---

class Score(WireModel):
    """A mean with its bootstrap confidence interval."""

    value: float = Field(description="The mean over the examples.")
    low: float = Field(description="Lower bound of the confidence interval (what the gate decides on).")
    high: float = Field(description="Upper bound of the confidence interval.")

    def interval(self, signed: bool = False) -> str:
        """`0.300 [0.167, 0.467]`, or with signs for a difference: `+0.300 [+0.167, +0.467]`."""
        form = "+.3f" if signed else ".3f"
        return f"{self.value:{form}} [{self.low:{form}}, {self.high:{form}}]"


class JudgeStats(WireModel):
    """What the LLM judge did in this evaluation."""

    configured: bool = Field(description="Whether a judge was configured and asked.")
    model: str | None = Field(None, description="Model name the judge endpoint served.")
    judged: int = Field(0, description="Judge requests made: one per pointwise score, one per pairwise order.")
    unparseable: int = Field(0, description="Of those, judgments that could not be read or were refused; "
                                            "never counted as passes.")
    wins: int = Field(0, description="Pairwise verdicts for the candidate.")
    ties: int = Field(0, description="Pairwise ties (inconsistent pairs included).")
    losses: int = Field(0, description="Pairwise verdicts for the baseline.")
    inconsistent: int = Field(0, description="Pairs whose verdict flipped with the order (counted as ties).")


MetricScores = Annotated[dict[str, Score], Field(default_factory=dict, description=(
    "Metric name (exactMatch, rougeL, judgeScore, ...) -> mean and confidence interval."))]


class Comparison(WireModel):
    """Candidate and baseline on the same examples, and their paired difference."""

    examples: int = Field(description="Examples both were scored on.")
    candidate: MetricScores
    baseline: MetricScores
    difference: dict[str, Score] = Field(default_factory=dict, description="candidate minus baseline, paired.")


class GateResult(WireModel):
    """The gate's verdict on this adapter."""

    passed: bool = Field(description="Whether every check of spec.evaluation.gate held.")
    verdict: Literal["Passed", "Failed"] | None = Field(None, description="Passed or Failed (the GATE column).")
    message: str = Field(description="Why: the checks that failed, or all of them when it passed.")
    checks: list[str] = Field(default_factory=list, description="Each check with its numbers, prefixed ok: or "
                                                                "FAILED:.")

    @model_validator(mode="after")
    def _verdict(self) -> "GateResult":
        self.verdict = "Passed" if self.passed else "Failed"
        return self


class EvaluationResults(WireModel):
    baseline: str = Field(description="What the candidate was compared with: base, or champion version N.")
    baseline_version: str | None = Field(None, description="Registered version of the champion compared with.")
    primary_metric: str = Field(description="The gate's primary metric: what score and baselineScore measure.")
    score: float | None = Field(None, description="The candidate's primary metric on the hold-out set.")
    baseline_score: float | None = Field(None, description="The baseline's primary metric on the hold-out set.")
    summary: str | None = Field(None, description="The primary metric, candidate vs baseline, e.g. "
                                                  "'exactMatch 0.620 vs base 0.410' (the SCORE column).")
    hold_out: Comparison = Field(description="Scores on the held-out rows of the dataset.")
    general: Comparison | None = Field(None, description="Scores on spec.evaluation.generalSet (regression check).")
    judge: JudgeStats = Field(description="What the LLM judge did.")
    records_uri: str | None = Field(None, description="Per-example answers and scores (JSONL).")
    gate: GateResult | None = Field(None, description="The gate's verdict.")

    @model_validator(mode="after")
    def _primary_known(self) -> "EvaluationResults":
        if self.primary_metric not in METRICS:
            raise ValueError(f"unknown metric {self.primary_metric}")
        self.summary = score_summary(self.primary_metric, self.score, self.baseline, self.baseline_score)
        return self


def score_summary(metric: str, score: float | None, baseline: str, baseline_score: float | None) -> str | None:
    """'exactMatch 0.620 vs base 0.410': what a column can show of an evaluation."""
    if score is None:
        return None
    against = f" vs {baseline} {baseline_score:.3f}" if baseline_score is not None else ""
    return f"{metric} {score:.3f}{against}"


class RegistryResults(WireModel):
    """The MLflow model version the adapter became."""

    model_name: str = Field(description="Registered model name.")
    version: str = Field(description="The new model version.")
    uri: str = Field(description="models:/<name>/<version>")
    aliases: list[str] = Field(default_factory=list, description="Aliases moved to it: challenger, champion.")
    run_id: str | None = Field(None, description="MLflow run of the registration.")
