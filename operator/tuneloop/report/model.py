"""What a run report shows, gathered before rendering: the renderer reads only this."""

from __future__ import annotations

from dataclasses import dataclass, field

from tuneloop.api.augmentation import AugmentationStats
from tuneloop.api.evaluation import Comparison, GateResult, JudgeStats, RegistryResults
from tuneloop.api.export import ExportResults
from tuneloop.api.finetunejob import CleaningStats, CostStatus, DatasetStats, QueueStatus, TrainingResults

Point = tuple[int, float]  # (optimizer step, loss)


@dataclass
class LossSeries:
    train: list[Point] = field(default_factory=list)
    validation: list[Point] = field(default_factory=list)
    source: str = ""  # where the points came from, shown under the chart


@dataclass
class EvaluationSummary:
    baseline: str  # "base", or "champion version 3"
    primary_metric: str
    confidence: float | None  # of every interval; None when the spec that set it is unknown
    test: Comparison
    judge: JudgeStats
    general: Comparison | None = None
    regression: Comparison | None = None  # on the previous champion's test rows
    regressed_rows: int | None = None  # of those, rows the champion got exactly right and the candidate not


@dataclass
class Lineage:
    job_uid: str | None = None
    dataset_sha256: str | None = None
    adapter_uri: str | None = None
    mlflow_run_id: str | None = None
    records_uri: str | None = None


@dataclass
class ExampleRow:
    """One test example answered by the base (or champion) model and by the tuned one."""

    prompt: str
    reference: str
    base: str
    tuned: str
    base_scores: dict[str, float] = field(default_factory=dict)
    tuned_scores: dict[str, float] = field(default_factory=dict)

    def exact(self, side: str) -> bool:
        scores, answer = (self.base_scores, self.base) if side == "base" else (self.tuned_scores, self.tuned)
        if "exactMatch" in scores:
            return scores["exactMatch"] >= 1.0
        return answer.strip() == self.reference.strip()


@dataclass
class RunReport:
    job_name: str
    namespace: str
    phase: str
    message: str = ""
    base_model: str = ""
    dataset: DatasetStats | None = None
    cleaning: CleaningStats | None = None
    training: TrainingResults | None = None
    loss: LossSeries = field(default_factory=LossSeries)
    evaluation: EvaluationSummary | None = None
    gate: GateResult | None = None
    registry: RegistryResults | None = None
    lineage: Lineage = field(default_factory=Lineage)
    examples: list[ExampleRow] = field(default_factory=list)
    examples_total: int = 0  # examples evaluated; `examples` holds the first few
    regressed: list[ExampleRow] = field(default_factory=list)  # every regression-set row that regressed
    completed: str | None = None  # completion time, as the status gives it
    cost: CostStatus | None = None  # time, GPU-hours and money, as the operator (or the local run) kept them
    queue: QueueStatus | None = None  # the Kueue LocalQueue, when the job went through one
    augmentation: AugmentationStats | None = None  # synthetic rows from the teacher (dataset.augment)
    export: ExportResults | None = None  # the merged model and GGUF file (output.export)
