"""Live training progress from MLflow, where the trainer logs its run metrics.

The operator needs no access to pods for this: it reads the run the trainer named after the
FineTuneJob (`<namespace>/<name>`) in the configured tracking server.
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger("tuneloop.progress")


def mlflow_progress(tracking_uri: str, experiment: str, run_name: str) -> dict[str, Any] | None:
    """TrainerProgress-shaped dict of the newest run with this name, or None (no run yet, MLflow down)."""
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            return None
        runs = client.search_runs([found.experiment_id], filter_string=f"tags.mlflow.runName = '{run_name}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
    except Exception as error:  # an unreachable MLflow costs the progress column, nothing else
        log.warning("no progress from MLflow at %s: %s", tracking_uri, error)
        return None
    if not runs:
        return None
    run = runs[0]
    metrics, params = run.data.metrics, run.data.params
    step = int(metrics.get("step", 0))  # the trainer logs its step as a metric: no history to fetch
    total = int(params.get("total_steps", 0))
    elapsed = time.time() - run.info.start_time / 1000
    return {
        "stage": "training" if step else "validating-data",
        "step": step,
        "totalSteps": total,
        "epoch": metrics.get("epoch", 0.0),
        "loss": metrics.get("loss"),
        "tokensPerSecond": metrics.get("tokens_per_second"),
        "etaSeconds": elapsed / step * (total - step) if step and total else None,
    }
