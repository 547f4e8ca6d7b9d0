"""How to reach MLflow: REST (httpx, with MLflow's own credential variables) for a tracking server,
MlflowClient for anything else (a SQLite file in tests and local runs)."""

from __future__ import annotations

import base64
import logging
import os
from typing import Any

import httpx

from tuneloop.retry import RetryPolicy


def is_server(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def auth_headers() -> dict[str, str]:
    """MLflow's own client variables: a bearer token, or basic auth."""
    if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {token}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode("latin-1")).decode()}
    return {}


def mlflow_http(retry: RetryPolicy) -> httpx.AsyncClient:
    """A client for MLflow's REST API, with MLflow's own credential variables."""
    return httpx.AsyncClient(headers=auth_headers(), timeout=retry.timeout_seconds)


def client(tracking_uri: str | None) -> Any:
    """An MlflowClient whose registry is the tracking server too."""
    from mlflow.tracking import MlflowClient

    for chatty in ("mlflow.store.db.utils", "alembic"):  # "Creating initial MLflow database tables..."
        logging.getLogger(chatty).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def does_not_exist(error: BaseException) -> bool:
    from mlflow.exceptions import MlflowException

    return isinstance(error, MlflowException) and error.error_code == "RESOURCE_DOES_NOT_EXIST"


def already_exists(error: BaseException) -> bool:
    from mlflow.exceptions import MlflowException

    return isinstance(error, MlflowException) and error.error_code == "RESOURCE_ALREADY_EXISTS"
