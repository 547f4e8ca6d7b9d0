"""Live training progress from MLflow, where the trainer logs its run metrics.

The operator needs no access to pods for this: it reads the run the trainer named after the
FineTuneJob (`<namespace>/<name>`) in the configured tracking server. A tracking server
(http/https, as in a cluster) is asked over its REST API with httpx: two small requests, no
thread, and no MLflow import in the operator (the client library alone adds ~100 MiB of RSS).
Other tracking URIs (a SQLite file in tests and local runs) go through MlflowClient.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from tuneloop.registry.connection import client, is_server, mlflow_http
from tuneloop.registry.metric_names import (
    EPOCH,
    PREFERENCE_EPOCH,
    PREFERENCE_TOKENS_PER_SECOND,
    PREFERENCE_TRAIN_LOSS,
    TOKENS_PER_SECOND,
    TRAIN_LOSS,
)
from tuneloop.retry import MLFLOW_REST, RetryPolicy, async_retrying, no_answer

log = logging.getLogger("tuneloop.progress")


# Each training stage's (loss, epoch, tokens/s): SFT, then the preference stage of dpo, kto and sft-then-dpo. The
# trainer logs both on one step axis, so the stage whose loss has the latest step is the one running.
STAGES = ((TRAIN_LOSS, EPOCH, TOKENS_PER_SECOND),
          (PREFERENCE_TRAIN_LOSS, PREFERENCE_EPOCH, PREFERENCE_TOKENS_PER_SECOND))


class MlflowUnavailable(RuntimeError):
    """The tracking server could not be asked; the caller may stop asking for a while."""


def progress_from_run(metrics: dict[str, float], params: dict[str, str], start_time_ms: int,
                      steps: dict[str, int]) -> dict[str, Any]:
    """TrainerProgress-shaped dict from the trainer's run: its latest metrics, and the step of its
    latest training loss (`steps`: training loss metric -> its latest step)."""
    loss, epoch, speed = max(STAGES, key=lambda stage: steps.get(stage[0], 0))
    step = steps.get(loss, 0)
    total = int(params.get("total_steps", 0))
    elapsed = time.time() - start_time_ms / 1000
    return {
        "stage": "training" if step else "preparing-data",
        "step": step,
        "totalSteps": total,
        "epoch": metrics.get(epoch, 0.0),
        "loss": metrics.get(loss),
        "tokensPerSecond": metrics.get(speed),
        "etaSeconds": elapsed / step * (total - step) if step and total else None,
    }


def _run_filter(run_name: str) -> str:
    return f"tags.mlflow.runName = '{run_name}'"


async def _rest_progress(tracking_uri: str, experiment: str, run_name: str,
                         retry: RetryPolicy) -> dict[str, Any] | None:
    api = tracking_uri.rstrip("/") + "/api/2.0/mlflow"
    async with mlflow_http(retry) as http:
        response = await http.get(f"{api}/experiments/get-by-name", params={"experiment_name": experiment})
        if response.status_code == 404:
            return None  # no experiment yet: the trainer has not started logging
        experiment_id = response.raise_for_status().json()["experiment"]["experiment_id"]
        search = {"experiment_ids": [experiment_id], "filter": _run_filter(run_name),
                  "order_by": ["attributes.start_time DESC"], "max_results": 1}
        response = await http.post(f"{api}/runs/search", json=search)
        runs = response.raise_for_status().json().get("runs") or []
    if not runs:
        return None
    data, info = runs[0].get("data") or {}, runs[0]["info"]
    logged = data.get("metrics") or []
    metrics = {metric["key"]: float(metric["value"]) for metric in logged}
    steps = {metric["key"]: int(metric.get("step", 0)) for metric in logged
             if metric["key"] in (stage[0] for stage in STAGES)}
    params = {param["key"]: param["value"] for param in data.get("params") or []}
    return progress_from_run(metrics, params, int(info["start_time"]), steps)


def _client_progress(tracking_uri: str, experiment: str, run_name: str) -> dict[str, Any] | None:
    mlflow = client(tracking_uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = mlflow.search_runs([found.experiment_id], filter_string=_run_filter(run_name),
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    run = runs[0]
    steps = {loss: max((metric.step for metric in mlflow.get_metric_history(run.info.run_id, loss)), default=0)
             for loss, _, _ in STAGES if loss in run.data.metrics}
    return progress_from_run(run.data.metrics, run.data.params, run.info.start_time, steps)


async def mlflow_progress(tracking_uri: str, experiment: str, run_name: str,
                          retry: RetryPolicy = MLFLOW_REST) -> dict[str, Any] | None:
    """Progress of the newest run with this name, or None (no run yet).
    MlflowUnavailable when the server cannot be asked."""
    try:
        if is_server(tracking_uri):
            return await async_retrying(retry, no_answer)(_rest_progress, tracking_uri, experiment, run_name, retry)
        return await asyncio.to_thread(_client_progress, tracking_uri, experiment, run_name)
    except Exception as error:  # an unreachable MLflow costs the progress column, nothing else
        log.warning("no progress from MLflow at %s: %s", tracking_uri, error)
        raise MlflowUnavailable(str(error)) from error
