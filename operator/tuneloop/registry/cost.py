"""What a run cost, as MLflow keeps it: `cost/*` metrics on the training run (compare runs by GPU-hours or
price per point in the MLflow UI) and the status's one-line summary as the version's `tuneloop.dev/cost` tag.
Both come from the status the register stage is given, so they cover everything before registration."""

from __future__ import annotations

from tuneloop.api.finetunejob import CostStatus, FineTuneJobStatus
from tuneloop.registry.metric_names import COST_METRICS

COST_TAG = "tuneloop.dev/cost"


def cost_metrics(cost: CostStatus | None) -> dict[str, float]:
    """metric -> value for the figures the status has (MFU on a CPU, money without a price: left out)."""
    if cost is None:
        return {}
    values = {field: getattr(cost, field) for field in COST_METRICS if field != "gpu_hours_per_point"}
    values["gpu_hours_per_point"] = cost.improvement.gpu_hours_per_point if cost.improvement else None
    return {COST_METRICS[field]: float(value) for field, value in values.items() if value is not None}


def cost_tags(status: FineTuneJobStatus | None) -> dict[str, str]:
    summary = status.cost.summary if status and status.cost else None
    return {COST_TAG: summary} if summary else {}
