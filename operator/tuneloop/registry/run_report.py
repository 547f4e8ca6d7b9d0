"""Gather a run's report from what the run left behind: a local job folder and its MLflow run.

A local job folder (`<workdir>/<name>/<spec hash>/`, see runtime/local.py) holds status.json and one
folder per workload (`<name>-<stage>/` with workload.json and result.json); the evaluator's
per-example records file is named in its result. The loss curves come from the trainer's MLflow run.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tuneloop.api.common import SpecError
from tuneloop.api.finetunejob import FineTuneJob, FineTuneJobStatus, parse_manifest
from tuneloop.api.workloads import EvaluatorResult, TrainerResult
from tuneloop.registry import metric_names
from tuneloop.registry.connection import client
from tuneloop.registry.evaluation import RECORDS_ARTIFACT_PATH, RECORDS_FILE
from tuneloop.report.model import (
    EvaluationSummary,
    ExampleRow,
    Lineage,
    LossSeries,
    Point,
    RunReport,
)
from tuneloop.storage_uris import file_uri_path

log = logging.getLogger("tuneloop.report")

# The trainer's MLflow metric names, the current first (runs logged before them used the second).
TRAIN_LOSS_KEYS = (metric_names.TRAIN_LOSS, "loss")
VALIDATION_LOSS_KEYS = (metric_names.VALIDATION_LOSS, "hold_out_loss")
EXAMPLES_SHOWN = 8


class RunReportError(Exception):
    """The folder is not a job folder, or what it holds cannot be read; the message says which file."""


@dataclass
class EvaluationRecords:
    """What a report shows of the evaluator's records file."""

    examples: list[ExampleRow] = field(default_factory=list)  # the first few test rows
    total: int = 0  # test rows in the file
    regressed: list[ExampleRow] = field(default_factory=list)  # every regression-set row marked regressed


def collect(job_dir: Path, job: FineTuneJob | None = None, tracking_uri: str | None = None,
            examples: int = EXAMPLES_SHOWN) -> RunReport:
    """The report of the local run in `job_dir`. `job` (the manifest; by default the one saved beside
    the status) names the base model and the confidence level; `tracking_uri` overrides the MLflow
    the trainer logged to."""
    status = _status(job_dir)
    job = job or _saved_job(job_dir)
    workloads = {stage: _workload(job_dir, stage) for stage in ("train", "evaluate", "register")}
    train_result = _result(workloads["train"], TrainerResult)
    evaluate_result = _result(workloads["evaluate"], EvaluatorResult)
    register_spec = _json(workloads["register"] / "workload.json") if workloads["register"] else None
    train_spec = _json(workloads["train"] / "workload.json") if workloads["train"] else None

    namespace, name = _job_name(job_dir, job, workloads)
    run_id = (status.training.mlflow_run_id if status.training else None) or (
        train_result.mlflow_run_id if train_result else None)
    tracking_uri = tracking_uri or ((train_spec or {}).get("tracking") or {}).get("trackingUri")
    records_uri = (status.evaluation.records_uri if status.evaluation else None) or (
        Path(evaluate_result.records_path).resolve().as_uri() if evaluate_result and evaluate_result.records_path
        else None)
    records = read_records(local_records_path(records_uri), examples)
    if not records.examples and train_result:
        records.examples = [ExampleRow(prompt=p.prompt, reference=p.reference, base=p.base, tuned=p.tuned)
                            for p in train_result.previews[:examples]]
        records.total = len(train_result.previews)
    return _report(status, namespace=namespace, name=name, base_model=_base_model(job, register_spec, train_spec),
                   confidence=_confidence(job, workloads["evaluate"]),
                   job_uid=_job_uid(job, register_spec, name, job_dir),
                   loss=loss_series(run_id, tracking_uri, status, train_result),
                   records=records, run_id=run_id, records_uri=records_uri)


def report_from_status(job: FineTuneJob, status: FineTuneJobStatus, tracking_uri: str | None,
                       examples: int = EXAMPLES_SHOWN) -> RunReport:
    """The report of a run known by its resource (a cluster's FineTuneJob): loss curves and examples
    come from the trainer's MLflow run, which the evaluator joined with its records file."""
    return report_from_run(status, namespace=job.metadata.namespace, name=job.metadata.name,
                           base_model=job.spec.base_model.display(), job_uid=job.metadata.uid,
                           confidence=job.spec.evaluation.bootstrap.confidence, tracking_uri=tracking_uri,
                           examples=examples)


def report_from_run(status: FineTuneJobStatus, *, namespace: str, name: str, base_model: str, job_uid: str | None,
                    confidence: float | None, tracking_uri: str | None, run_id: str | None = None,
                    examples: int = EXAMPLES_SHOWN) -> RunReport:
    """The same, from what the register workload knows of its job (no spec, the status it was given);
    `run_id`: the training run, when not the status's."""
    run_id = run_id or (status.training.mlflow_run_id if status.training else None)
    records = EvaluationRecords()
    if run_id and tracking_uri:
        with tempfile.TemporaryDirectory(prefix="tuneloop-report-") as folder:
            records = read_records(_downloaded_records(tracking_uri, run_id, Path(folder)), examples)
    return _report(status, namespace=namespace, name=name, base_model=base_model, confidence=confidence,
                   job_uid=job_uid, loss=loss_series(run_id, tracking_uri, status),
                   records=records, run_id=run_id,
                   records_uri=status.evaluation.records_uri if status.evaluation else None)


def _report(status: FineTuneJobStatus, *, namespace: str, name: str, base_model: str, confidence: float | None,
            job_uid: str | None, loss: LossSeries, records: EvaluationRecords, run_id: str | None,
            records_uri: str | None) -> RunReport:
    training, evaluation = status.training, status.evaluation
    report = RunReport(
        job_name=name, namespace=namespace, phase=status.phase, message=status.message, base_model=base_model,
        dataset=status.dataset, cleaning=status.cleaning, training=training,
        gate=evaluation.gate if evaluation else None,
        registry=status.registry, examples=records.examples, examples_total=records.total,
        regressed=records.regressed,
        completed=status.completion_time, loss=loss, cost=status.cost, queue=status.queue,
        augmentation=status.augmentation, export=status.export,
        lineage=Lineage(job_uid=job_uid, dataset_sha256=status.dataset.sha256 if status.dataset else None,
                        adapter_uri=training.adapter_uri if training else None,
                        mlflow_run_id=run_id, records_uri=records_uri))
    if evaluation:
        baseline = evaluation.baseline + (f" version {evaluation.baseline_version}"
                                          if evaluation.baseline_version else "")
        report.evaluation = EvaluationSummary(
            baseline=baseline, primary_metric=evaluation.primary_metric, test=evaluation.test,
            general=evaluation.general, judge=evaluation.judge, confidence=confidence,
            regression=evaluation.regression, regressed_rows=evaluation.regressed_rows)
    return report


def loss_series(run_id: str | None, tracking_uri: str | None, status: FineTuneJobStatus | None = None,
                train_result: TrainerResult | None = None) -> LossSeries:
    """Train and validation loss per step from the MLflow run, with the validation loss before training
    at step 0 and after it at the last step; without a run, those validation losses (and each evaluation's)
    from the status and the trainer's result."""
    training = status.training if status else None
    reported: dict[int, float] = {}
    if training:
        reported[0] = training.validation_loss_before
    for evaluation in train_result.evaluations if train_result else []:
        reported[evaluation.step] = evaluation.validation_loss
    if training:  # with early stopping the output, and so this loss, is the best checkpoint's
        reported[training.best_step or training.steps] = training.validation_loss_after
    if run_id and tracking_uri and _store_exists(tracking_uri):
        try:
            mlflow = client(tracking_uri)
            train = _history(mlflow, run_id, TRAIN_LOSS_KEYS)
            validation = _history(mlflow, run_id, VALIDATION_LOSS_KEYS)
            if train or validation:
                return LossSeries(train=train, validation=sorted((reported | dict(validation)).items()),
                                  source=f"MLflow run {run_id}")
        except Exception as error:  # an unreachable or broken MLflow costs the curves, not the report
            log.warning("MLflow at %s: the loss history of run %s cannot be read: %s", tracking_uri, run_id, error)
    return LossSeries(validation=sorted(reported.items()),
                      source="validation loss from the trainer's result (no MLflow run to read the train loss from)"
                      if reported else "")


def _history(mlflow: Any, run_id: str, keys: tuple[str, ...]) -> list[Point]:
    for key in keys:
        history = mlflow.get_metric_history(run_id, key)
        if history:
            # A resumed run logs its first steps again: the latest value of a step wins.
            by_step = {metric.step: metric.value for metric in sorted(history, key=lambda m: m.timestamp)
                       if math.isfinite(metric.value)}  # a diverged step's NaN has no place on the chart
            return sorted(by_step.items())
    return []


def _store_exists(tracking_uri: str) -> bool:
    """MLflow would create an empty SQLite store where there is none: read only one that is there."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///"):]).is_file()
    return True


def _status(job_dir: Path) -> FineTuneJobStatus:
    path = job_dir / "status.json"
    if not path.is_file():
        raise RunReportError(f"{job_dir}: no status.json here, so this is not a job's work folder")
    try:
        return FineTuneJobStatus.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValidationError) as error:
        raise RunReportError(f"{path}: cannot be read as a FineTuneJob status: {error}") from None


def _saved_job(job_dir: Path) -> FineTuneJob | None:
    """The manifest the local runtime keeps beside the status (runs from before it kept one have none)."""
    from tuneloop.runtime.local import JOB_FILE

    saved = _json(job_dir / JOB_FILE)
    if saved is None:
        return None
    try:
        return parse_manifest(saved)
    except SpecError as error:
        log.warning("%s: not used for the report: %s", job_dir / JOB_FILE, error)
        return None


def _workload(job_dir: Path, stage: str) -> Path | None:
    for folder in sorted(job_dir.iterdir()):
        if folder.is_dir() and folder.name.endswith(f"-{stage}") and (folder / "workload.json").is_file():
            return folder
    return None


def _json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _result(folder: Path | None, model: type) -> Any:
    if folder is None or not (folder / "result.json").is_file():
        return None
    try:
        return model.model_validate_json((folder / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValidationError) as error:
        log.warning("%s: left out of the report: %s", folder / "result.json", error)
        return None


def _job_name(job_dir: Path, job: FineTuneJob | None, workloads: dict[str, Path | None]) -> tuple[str, str]:
    if job is not None:
        return job.metadata.namespace, job.metadata.name
    for folder in workloads.values():
        qualified = (_json(folder / "workload.json") or {}).get("job") if folder else None
        if isinstance(qualified, str) and "/" in qualified:
            namespace, name = qualified.split("/", 1)
            return namespace, name
    return "default", job_dir.parent.name


def _base_model(job: FineTuneJob | None, register_spec: dict | None, train_spec: dict | None) -> str:
    if job is not None:
        return job.spec.base_model.display()
    tagged = ((register_spec or {}).get("tags") or {}).get("tuneloop.dev/base-model")
    return tagged or (train_spec or {}).get("modelPath") or ""


def _job_uid(job: FineTuneJob | None, register_spec: dict | None, name: str, job_dir: Path) -> str:
    if register_spec and register_spec.get("jobUid"):
        return register_spec["jobUid"]
    if job is not None and job.metadata.uid:
        return job.metadata.uid
    return f"local-{name}-{job_dir.name}"  # what the local runtime registers a job's versions under


def _confidence(job: FineTuneJob | None, evaluate_folder: Path | None) -> float | None:
    if job is not None:
        return job.spec.evaluation.bootstrap.confidence
    spec = _json(evaluate_folder / "workload.json") if evaluate_folder else None
    confidence = (((spec or {}).get("evaluation") or {}).get("bootstrap") or {}).get("confidence")
    return confidence if isinstance(confidence, float) else None


def local_records_path(uri: str | None) -> Path | None:
    """The records file a `file://` records URI names; None for any other (or no) URI."""
    return file_uri_path(uri) if uri and uri.startswith("file://") else None


def _downloaded_records(tracking_uri: str, run_id: str, folder: Path) -> Path | None:
    """The evaluator's records file, from the artifacts of the run it joined."""
    try:
        return Path(client(tracking_uri).download_artifacts(run_id, f"{RECORDS_ARTIFACT_PATH}/{RECORDS_FILE}",
                                                            str(folder)))
    except Exception as error:  # no records logged, or MLflow unreachable: the report goes without examples
        log.warning("MLflow at %s: run %s has no readable evaluation records: %s", tracking_uri, run_id, error)
        return None


def read_records(path: Path | None, limit: int = EXAMPLES_SHOWN) -> EvaluationRecords:
    """The first `limit` test records as example rows, how many test records there are, and every
    regression-set record the evaluator marked regressed (lost on the guardrail's metric).
    An unreadable file gives no rows, with a warning in the log."""
    found = EvaluationRecords()
    if path is None:
        return found
    try:
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                if record.get("set") == "test":
                    found.total += 1
                    if len(found.examples) < limit:
                        found.examples.append(_example(record))
                elif record.get("set") == "regression" and record.get("regressed") is True:
                    found.regressed.append(_example(record))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        log.warning("%s: the evaluation records cannot be read: %s", path, error)
        return EvaluationRecords()
    return found


def _example(record: dict) -> ExampleRow:
    candidate, baseline = record["candidate"], record["baseline"]
    return ExampleRow(prompt=_prompt_text(record["prompt"]), reference=str(record["reference"]),
                      base=str(baseline["answer"]), tuned=str(candidate["answer"]),
                      base_scores=dict(baseline.get("scores") or {}), tuned_scores=dict(candidate.get("scores") or {}))


def _prompt_text(prompt: Any) -> str:
    """The user's words: a single user turn as is, a conversation as `role: content` turns (no system prompt)."""
    if isinstance(prompt, str):
        return prompt
    turns = [message for message in prompt if message.get("role") != "system"]
    if len(turns) == 1 and turns[0].get("role") == "user":
        return str(turns[0].get("content", ""))
    return "\n\n".join(f"{message.get('role')}: {message.get('content', '')}" for message in turns)
