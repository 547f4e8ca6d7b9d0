"""The evaluation joins the trainer's MLflow run: the headline scores as metrics, each example as a
row of an MLflow table (prompt, reference, both answers, their scores side by side), and the raw
records file. Intervals are not metrics: they are in the run's description. An MLflow that cannot
be reached costs a warning, never the evaluation.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any

from tuneloop.api.evaluation import Comparison
from tuneloop.api.workloads import EvaluatorResult, Tracking
from tuneloop.registry.connection import client
from tuneloop.registry.metric_names import JUDGE_METRICS, evaluation_metric, gate_test_metric

log = logging.getLogger("tuneloop.registry")
RECORDS_ARTIFACT_PATH = "evaluation"
RECORDS_FILE = "evaluation-records.jsonl"  # the evaluator's per-example records, one JSON a line
TABLE_FILE = "evaluation/examples.json"  # the UI shows it as a table (artifact view, and Evaluation tab)
LOGGED_ARTIFACTS_TAG = "mlflow.loggedArtifacts"
BASELINE_TAG = "tuneloop.evaluation.baseline"
JUDGE_TAG = "tuneloop.evaluation.judge"


def _comparison_metrics(comparison: Comparison, evaluated_set: str) -> dict[str, float]:
    metrics = {}
    for side, scores in (("candidate", comparison.candidate), ("baseline", comparison.baseline)):
        for metric, score in scores.items():
            metrics[evaluation_metric(metric, side, evaluated_set)] = score.value
    return metrics


def result_metrics(result: EvaluatorResult) -> dict[str, float]:
    """Candidate and baseline per metric and set, each gate test's Holm p-value, the judge's reliability:
    what a user compares across runs."""
    metrics: dict[str, float] = {}
    for name, comparison in (("test", result.test), ("regression", result.regression), ("general", result.general)):
        if comparison is not None:
            metrics.update(_comparison_metrics(comparison, name))
    for test in result.tests:
        if test.p_holm is not None:
            metrics[gate_test_metric(test.metric, test.set, test.kind)] = test.p_holm
    if result.judge.configured:
        for field, key in JUDGE_METRICS.items():
            value = getattr(result.judge, field)
            if value is not None:
                metrics[key] = float(value)
    return metrics


def _last_user_message(prompt: Any) -> str:
    if isinstance(prompt, list):
        users = [message.get("content", "") for message in prompt if message.get("role") == "user"]
        return users[-1] if users else ""
    return str(prompt)


def examples_table(records: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """One row per example: prompt, reference, the baseline's and the tuned model's answers, then each
    metric's two scores side by side (and the judge's when it judged)."""
    metrics = sorted({metric for row in records for side in ("candidate", "baseline")
                      for metric in (row.get(side) or {}).get("scores", {})})
    columns: dict[str, list[Any]] = {name: [] for name in ("prompt", "reference", "baseline answer",
                                                           "tuned answer")}
    for metric in metrics:
        columns[f"{metric} baseline"], columns[f"{metric} tuned"] = [], []
    judged = any("judge" in (row.get("candidate") or {}) for row in records)
    if judged:
        columns["judge baseline"], columns["judge tuned"] = [], []
    columns["set"] = []
    for row in records:
        candidate, baseline = row.get("candidate") or {}, row.get("baseline") or {}
        columns["set"].append(row.get("set", ""))
        columns["prompt"].append(_last_user_message(row.get("prompt")))
        columns["reference"].append(row.get("reference", ""))
        columns["baseline answer"].append(baseline.get("answer", ""))
        columns["tuned answer"].append(candidate.get("answer", ""))
        for metric in metrics:
            columns[f"{metric} baseline"].append(baseline.get("scores", {}).get(metric))
            columns[f"{metric} tuned"].append(candidate.get("scores", {}).get(metric))
        if judged:
            columns["judge baseline"].append((baseline.get("judge") or {}).get("score"))
            columns["judge tuned"].append((candidate.get("judge") or {}).get("score"))
    return columns


def read_records(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def log_table(mlflow: Any, run_id: str, columns: dict[str, list[Any]], artifact_file: str) -> None:
    """What MlflowClient.log_table writes (pandas' "split" JSON and the run's mlflow.loggedArtifacts tag,
    so the UI offers it as a table), without pandas, which the workload images lack; and a retried
    evaluation replaces the table instead of appending to it."""
    path = PurePosixPath(artifact_file)
    with tempfile.TemporaryDirectory() as folder:
        table = Path(folder) / path.name
        table.write_text(json.dumps({"columns": list(columns), "data": [list(row) for row in zip(*columns.values())]},
                                    ensure_ascii=False), encoding="utf-8")
        mlflow.log_artifact(run_id, str(table), str(path.parent))
    logged = json.loads(mlflow.get_run(run_id).data.tags.get(LOGGED_ARTIFACTS_TAG, "[]"))
    entry = {"path": artifact_file, "type": "table"}
    if entry not in logged:
        mlflow.set_tag(run_id, LOGGED_ARTIFACTS_TAG, json.dumps([*logged, entry]))


def _judge_summary(result: EvaluatorResult) -> str | None:
    judge = result.judge
    if not judge.configured:
        return None
    return judge.summary() + (f": {judge.note}" if judge.note else "")


def log_evaluation(tracking: Tracking, run_id: str, result: EvaluatorResult, records: Path) -> None:
    try:
        from mlflow.entities import Metric, RunTag

        mlflow = client(tracking.tracking_uri)
        timestamp = int(time.time() * 1000)
        metrics = [Metric(key, value, timestamp, 0) for key, value in result_metrics(result).items()]
        # A tag, not a param: params cannot change, and a rerun may meet a newer champion.
        tags = [RunTag(BASELINE_TAG, result.baseline if result.baseline_version is None
                       else f"{result.baseline} version {result.baseline_version}")]
        if judge := _judge_summary(result):
            tags.append(RunTag(JUDGE_TAG, judge))
        mlflow.log_batch(run_id, metrics=metrics, tags=tags)
        mlflow.log_artifact(run_id, str(records), RECORDS_ARTIFACT_PATH)
        log_table(mlflow, run_id, examples_table(read_records(records)), TABLE_FILE)
    except Exception as error:
        log.warning("MLflow at %s: the evaluation could not be logged to run %s: %s",
                    tracking.tracking_uri, run_id, error)
