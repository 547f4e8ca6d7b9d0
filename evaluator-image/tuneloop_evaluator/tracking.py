"""The evaluation joins the trainer's MLflow run: aggregate metrics and the per-example records file.

Metric keys: eval_<metric>_<candidate|baseline|diff>[_low|_high], general-set ones as
eval_general_<metric>_..., judge counts as eval_judge_<count>. An MLflow that cannot be reached
costs a warning, never the evaluation.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from tuneloop.api.evaluation import Comparison
from tuneloop.api.workloads import EvaluatorResult, Tracking

log = logging.getLogger("tuneloop_evaluator")
ARTIFACT_PATH = "evaluation"


def _comparison_metrics(prefix: str, comparison: Comparison) -> dict[str, float]:
    metrics: dict[str, float] = {f"{prefix}examples": float(comparison.examples)}
    for side, scores in (("candidate", comparison.candidate), ("baseline", comparison.baseline),
                         ("diff", comparison.difference)):
        for metric, score in scores.items():
            key = f"{prefix}{metric}_{side}"
            metrics.update({key: score.value, f"{key}_low": score.low, f"{key}_high": score.high})
    return metrics


def result_metrics(result: EvaluatorResult) -> dict[str, float]:
    metrics: dict[str, float] = {}
    if result.hold_out is not None:
        metrics.update(_comparison_metrics("eval_", result.hold_out))
    if result.general is not None:
        metrics.update(_comparison_metrics("eval_general_", result.general))
    if result.judge.configured:
        for count in ("judged", "unparseable", "wins", "ties", "losses", "inconsistent"):
            metrics[f"eval_judge_{count}"] = float(getattr(result.judge, count))
    return metrics


def log_to_training_run(tracking: Tracking, run_id: str, result: EvaluatorResult, records: Path) -> None:
    try:
        from mlflow.entities import Metric, RunTag
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=tracking.tracking_uri)
        timestamp = int(time.time() * 1000)
        metrics = [Metric(key, value, timestamp, 0) for key, value in result_metrics(result).items()]
        # A tag, not a param: params cannot change, and a rerun may meet a newer champion.
        tags = [RunTag("tuneloop.evaluation.baseline", result.baseline if result.baseline_version is None
                       else f"{result.baseline} version {result.baseline_version}")]
        for start in range(0, len(metrics), 1000):  # MLflow's log_batch limit
            client.log_batch(run_id, metrics=metrics[start:start + 1000], tags=tags if start == 0 else [])
        client.log_artifact(run_id, str(records), ARTIFACT_PATH)
    except Exception as error:
        log.warning("MLflow at %s: the evaluation could not be logged to run %s: %s",
                    tracking.tracking_uri, run_id, error)
