"""The experiment every run goes to, marked as model training so that MLflow 3's UI opens it on runs
and charts rather than on GenAI traces."""

from __future__ import annotations

from typing import Any

from tuneloop.registry.connection import already_exists, client

# MLflow 3's UI reads this experiment tag to pick its pages (mlflow/server/js: experimentKind).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
CUSTOM_MODEL_DEVELOPMENT = "custom_model_development"


def ensure_experiment(mlflow: Any, name: str, artifact_location: str | None = None) -> str:
    """The experiment's id, created (with its artifact folder) when absent, always marked as model training."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        try:
            experiment_id = mlflow.create_experiment(name, artifact_location=artifact_location,
                                                     tags={EXPERIMENT_KIND_TAG: CUSTOM_MODEL_DEVELOPMENT})
        except Exception as error:
            if not already_exists(error):
                raise
            experiment = mlflow.get_experiment_by_name(name)
        else:
            return experiment_id
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != CUSTOM_MODEL_DEVELOPMENT:
        mlflow.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, CUSTOM_MODEL_DEVELOPMENT)
    return experiment.experiment_id


def prepare_tracking(tracking_uri: str, experiment: str, artifact_uri: str | None) -> str:
    """Create the experiment with its artifact folder up front: a SQLite store would otherwise
    put artifacts in ./mlruns under whatever folder a workload runs in. Its id."""
    return ensure_experiment(client(tracking_uri), experiment, artifact_uri)


def ui_path(experiment_id: str, run_id: str | None = None) -> str:
    """The UI's page for the experiment (or one run), on its model-training view."""
    page = f"#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return page + "?workflowType=machine_learning"
