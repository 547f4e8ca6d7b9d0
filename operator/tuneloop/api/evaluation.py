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
    max_tokens: int = Field(512, ge=16, le=8192, description=(
        "Token limit of each judgment (a reason and a verdict); a reply cut there without one counts as a ramble."))
    max_examples: int | None = Field(None, ge=1, le=10**6, description=(
        "Judge at most this many test rows (the split is random, so the first N are a fair sample); "
        "default: all."))
    required: bool = Field(False, description="Fail the evaluation instead of skipping the judge when "
                                              "it is not configured for this run.")
    agreement_sample: int = Field(8, ge=0, le=1000, description=(
        "Test items judged a second time (pointwise and pairwise) to measure the judge's self-agreement, "
        "its noise floor. 0: not measured, and a gated judge metric then fails."))
    min_agreement: float = Field(0.6, ge=0, le=1, description=(
        "Share of repeated judgments that must agree with the first (pointwise within one point, pairwise "
        "the same verdict); below it the gate refuses to rely on judgeScore and judgeWinRate."))
    agreement_temperature: float = Field(0.7, ge=0, le=2, description=(
        "Sampling temperature of the repeated judgments (the first are asked at 0): a judge asked twice at 0 "
        "by a deterministic server agrees with itself whatever its noise, so the repeats must be free to "
        "disagree."))
    max_position_flips: float = Field(0.5, ge=0, le=1, description=(
        "Largest share of pairwise comparisons whose verdict may flip when the answers swap places; above "
        "it the judge's position bias outweighs its verdicts and the gate refuses to rely on judgeScore and "
        "judgeWinRate."))
    local: bool = Field(False, description=(
        "Local runs only: `tuneloop run --local` starts `transformers serve` on the url's 127.0.0.1 port with "
        "`model` from the model catalog (e.g. smollm2-135m), and stops it after the evaluation. Refused in a "
        "cluster."))


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
    """Every check of the gate is a one-sided test (H0: no better than the threshold) at level
    (1 - bootstrap.confidence) / 2; the gate decides on the p-values Holm-adjusted across the checks,
    never on a mean."""

    primary_metric: Literal["exactMatch", "rougeL", "jsonValid", "fieldAccuracy", "labelAccuracy", "judgeScore"] = (
        Field("exactMatch", description="The score shown, compared with the champion; it must improve on the "
                                        "baseline (one-sided paired test of the difference above minImprovement, default 0, Holm-adjusted)."))
    min_score: dict[str, float] = Field(default_factory=dict, json_schema_extra={"default": {}}, description=(
        "Metric -> the candidate's score must be shown above this (one-sided test, Holm-adjusted p below "
        "the gate's level), e.g. {exactMatch: 0.5}."))
    min_improvement: dict[str, float] = Field(default_factory=dict, json_schema_extra={"default": {}}, description=(
        "Metric -> candidate minus baseline must be shown above this (one-sided paired test, Holm-adjusted "
        "p below the gate's level)."))
    non_inferiority_margin: float = Field(0.05, ge=0, le=1, description=(
        "Guardrails: on the regression set (the champion's test rows) and the general set, candidate minus "
        "baseline may not be shown to fall below -nonInferiorityMargin (one-sided test, Holm-corrected)."))
    effect_of_interest: float = Field(0.1, gt=0, le=1, description=(
        "The smallest improvement worth detecting, for gated metrics without a minImprovement above 0: a "
        "warning says when the test set is too small to detect it with 80% power."))

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


class RegressionSetSpec(WireModel):
    """The previous champion's test rows, evaluated again: a guardrail against forgetting what it could do."""

    enabled: bool = Field(True, description="Evaluate candidate and champion on the champion's test rows "
                                            "(when there is a champion).")
    max_examples: int = Field(200, ge=1, le=10000, description="Use at most this many of those rows.")


class EvaluationSpec(WireModel):
    enabled: bool = Field(True, description="Evaluate after training (and gate the registration).")
    baseline: Literal["auto", "base", "champion"] = Field("auto", description=(
        "Compare with the base model, the registered champion, or (auto) the champion when there is one."))
    max_examples: int | None = Field(None, ge=1, le=10**7, description="Evaluate at most this many test rows.")
    max_new_tokens: int = Field(256, ge=1, le=8192, description="Token limit per generated answer.")
    batch_size: int = Field(8, ge=1, le=512, description="Prompts generated together.")
    structured: StructuredSpec = Field(default_factory=StructuredSpec, description=(
        "Structured-output metrics; they apply when the references are JSON objects."))
    judge: JudgeSpec | None = Field(None, description="LLM-as-a-judge; absent: not configured.")
    general_set: GeneralSetSpec | None = Field(None, description="Measures regression on general ability.")
    regression_set: RegressionSetSpec = Field(default_factory=RegressionSetSpec, description=(
        "Non-inferiority on the previous champion's test rows, on by default when a champion exists."))
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
    low: float = Field(description="Lower bound of the confidence interval.")
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
    malformed: int = Field(0, description="Replies with no readable score or verdict.")
    refusals: int = Field(0, description="Replies that refused to judge.")
    rambles: int = Field(0, description="Replies cut at the token limit before a verdict.")
    rejected: int = Field(0, description="Requests the endpoint refused (e.g. 400 context too long).")
    repeated: int = Field(0, description="Judgments asked a second time to measure self-agreement.")
    self_agreement: float | None = Field(None, description=(
        "Share of repeated judgments agreeing with the first (pointwise within one point, pairwise same "
        "verdict); the judge's noise floor."))
    position_flips: float | None = Field(None, description=(
        "Share of pairwise comparisons whose verdict flipped when the answers swapped places."))
    trusted: bool = Field(False, description="Whether self-agreement reached judge.minAgreement and position "
                                             "flips stayed within judge.maxPositionFlips: only then may the "
                                             "gate rely on judgeScore and judgeWinRate.")
    note: str | None = Field(None, description="Why the judge is not trusted, when it is not.")

    def summary(self) -> str:
        """One line: verdicts, reliability, what could not be read (why it is not trusted: `note`)."""
        agreement = (f"self-agreement {self.self_agreement:.2f} over {self.repeated} repeats"
                     if self.self_agreement is not None else "self-agreement not measured")
        flips = f", position flips {self.position_flips:.2f}" if self.position_flips is not None else ""
        unread = ", ".join(f"{name} {count}" for name, count in (("malformed", self.malformed), ("refusals", self.refusals),
                                                                 ("rambles", self.rambles), ("rejected", self.rejected))
                           if count)
        trust = "trusted" if self.trusted else "NOT trusted"
        return (f"{self.model or 'judge'}: {self.wins} wins, {self.ties} ties, {self.losses} losses; {agreement}{flips}; "
                f"{self.judged} judged, {self.unparseable} unreadable{f' ({unread})' if unread else ''}; {trust}")


MetricScores = Annotated[dict[str, Score], Field(default_factory=dict, description=(
    "Metric name (exactMatch, rougeL, judgeScore, ...) -> mean and confidence interval."))]


class Comparison(WireModel):
    """Candidate and baseline on the same examples, and their paired difference."""

    examples: int = Field(description="Examples both were scored on.")
    candidate: MetricScores
    baseline: MetricScores
    difference: dict[str, Score] = Field(default_factory=dict, description="candidate minus baseline, paired.")


class GateTest(WireModel):
    """One check of the gate as a one-sided hypothesis test, H0: the true value <= threshold."""

    check: str = Field(description="What is tested, e.g. 'exactMatch improvement on test'.")
    metric: str = Field(description="Metric tested.")
    set: Literal["test", "regression", "general"] = Field(description="Rows it was measured on.")
    kind: Literal["improvement", "minimum", "nonInferiority", "judgeAgreement"] = Field(description=(
        "improvement: candidate - baseline > threshold; minimum: candidate > threshold; nonInferiority: "
        "candidate - baseline > -margin; judgeAgreement: the judge's self-agreement is high enough, and its "
        "position flips few enough, to rely on."))
    method: str = Field(description="The test, e.g. exact McNemar, paired bootstrap (BCa), exact binomial.")
    estimate: Score | None = Field(None, description="The difference (or score) with its confidence interval; "
                                                      "none when it could not be measured.")
    threshold: float = Field(description="H0 is: true value <= threshold.")
    n: int = Field(description="Examples the test used.")
    p_value: float | None = Field(None, description="One-sided p-value.")
    p_holm: float | None = Field(None, description="Holm-adjusted p-value across the gate's tests.")
    passed: bool = Field(description="p_holm below the gate's level.")
    detectable_effect: float | None = Field(None, description=(
        "Minimum detectable effect over the threshold at this n with 80% power; for a non-inferiority check, "
        "the smallest margin it can show when candidate and baseline are truly equal."))
    detail: str | None = Field(None, description="e.g. discordant pairs 9 for / 2 against.")
    warning: str | None = Field(None, description="e.g. the test set is too small for the threshold asked.")

    def line(self) -> str:
        """'exactMatch improvement on test: +0.300 [+0.167, +0.467] vs 0, exact McNemar p=0.0020 (Holm 0.0040);
        detectable +0.210 at 80% power'"""
        p = "" if self.p_value is None else f" p={self.p_value:.4f}"
        holm = "" if self.p_holm is None or self.p_holm == self.p_value else f" (Holm {self.p_holm:.4f})"
        signed = self.kind in ("improvement", "nonInferiority")
        mde = ""
        if self.detectable_effect is not None and self.kind == "nonInferiority":
            mde = f"; shown at 80% power for a margin of {self.detectable_effect:.3f} or more"
        elif self.detectable_effect is not None:
            mde = f"; detectable {self.detectable_effect:+.3f} at 80% power"
        estimate = self.estimate.interval(signed=signed) if self.estimate is not None else "not measured"
        return f"{self.check}: {estimate} vs {self.threshold:g}, {self.method}{p}{holm}{mde}"


class GateResult(WireModel):
    """The gate's verdict on this adapter."""

    passed: bool = Field(description="Whether every check of spec.evaluation.gate held.")
    verdict: Literal["Passed", "Failed"] | None = Field(None, description="Passed or Failed (the GATE column).")
    message: str = Field(description="Why: the checks that failed, or all of them when it passed.")
    checks: list[str] = Field(default_factory=list, description="Each check with its numbers, prefixed ok: or "
                                                                "FAILED:.")
    deciding: str | None = Field(None, description="The test that decided: the first failed one, or the "
                                                   "weakest passed one.")
    warnings: list[str] = Field(default_factory=list, description="e.g. a test set too small for the threshold.")

    @model_validator(mode="after")
    def _verdict(self) -> "GateResult":
        self.verdict = "Passed" if self.passed else "Failed"
        return self


class EvaluationResults(WireModel):
    baseline: str = Field(description="What the candidate was compared with: base, or champion version N.")
    baseline_version: str | None = Field(None, description="Registered version of the champion compared with.")
    primary_metric: str = Field(description="The gate's primary metric: what score and baselineScore measure.")
    score: float | None = Field(None, description="The candidate's primary metric on the test set.")
    baseline_score: float | None = Field(None, description="The baseline's primary metric on the test set.")
    summary: str | None = Field(None, description="The primary metric, candidate vs baseline, e.g. "
                                                  "'exactMatch 0.620 vs base 0.410' (the SCORE column).")
    test: Comparison = Field(description="Scores on the test split, which nothing in training saw or chose by.")
    regression: Comparison | None = Field(None, description="Scores on the previous champion's test rows.")
    regressed_rows: int | None = Field(None, description=(
        "Regression-set rows the candidate lost to the champion on the guardrail's metric: a pass/fail metric "
        "(exactMatch) the champion passed and the candidate failed, or a continuous one (rougeL) that dropped "
        "by more than nonInferiorityMargin."))
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
    exports: dict[str, str] | None = Field(None, description=(
        "Exported artifacts logged with the version: merged / gguf -> MLflow artifact URI."))
