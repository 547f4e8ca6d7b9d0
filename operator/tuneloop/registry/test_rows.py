"""The test split travels with the model: the trainer logs it on the training run (the run model versions
are registered from), so the next candidate can be checked against the champion's test rows: a
regression set for the non-inferiority gate, and rows its training data must not near-duplicate.

Versions registered before this existed have no such artifact; they simply have no regression set.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.api.workloads import Tracking
from tuneloop.registry.champion import CHAMPION_ALIAS, ChampionUnavailable, champion_version
from tuneloop.registry.connection import client

log = logging.getLogger("tuneloop.registry")
TEST_ROWS_FOLDER = "evaluation"
TEST_ROWS_FILE = "test.jsonl"
TEST_ROWS_ARTIFACT = f"{TEST_ROWS_FOLDER}/{TEST_ROWS_FILE}"


@dataclass
class ChampionTestRows:
    version: str
    path: Path  # a JSONL file of `messages` (or `text`) rows


def log_test_rows(tracking: Tracking, run_id: str, path: Path) -> None:
    """`path` (whatever its name) as the run's evaluation/test.jsonl, replacing an earlier one. An MLflow
    that cannot take it costs a warning, never the run: the next cycle then has no regression set."""
    try:
        with tempfile.TemporaryDirectory() as folder:
            renamed = Path(folder) / TEST_ROWS_FILE
            shutil.copyfile(path, renamed)
            client(tracking.tracking_uri).log_artifact(run_id, str(renamed), TEST_ROWS_FOLDER)
    except Exception as error:
        log.warning("MLflow at %s: the test rows %s could not be logged to run %s (the next candidate will "
                    "have no regression set from this version): %s", tracking.tracking_uri, path, run_id, error)


def _has_test_rows(mlflow: Any, run_id: str) -> bool:
    return any(item.path == TEST_ROWS_ARTIFACT for item in mlflow.list_artifacts(run_id, TEST_ROWS_FOLDER))


def champion_test_rows(tracking_uri: str, registered_model: str, dest: Path) -> ChampionTestRows | None:
    """The champion's evaluation/test.jsonl downloaded under `dest` (the returned path says where).
    None when there is no champion, or its version has no run or no test rows (older versions).
    ChampionUnavailable when MLflow cannot be asked or the file cannot be downloaded."""
    found = champion_version(tracking_uri, registered_model)
    if found is None:
        log.info("%s has no %s: no regression set", registered_model, CHAMPION_ALIAS)
        return None
    version = found[0]
    mlflow = client(tracking_uri)
    try:
        run_id = mlflow.get_model_version(registered_model, version).run_id
        if not run_id or not _has_test_rows(mlflow, run_id):
            log.info("%s version %s (%s) has no %s on its run (registered before test rows were logged): "
                     "no regression set", registered_model, version, CHAMPION_ALIAS, TEST_ROWS_ARTIFACT)
            return None
        dest.mkdir(parents=True, exist_ok=True)
        local = mlflow.download_artifacts(run_id, TEST_ROWS_ARTIFACT, str(dest))
    except Exception as error:  # MLflow wraps connection errors in MlflowException
        raise ChampionUnavailable(f"{registered_model} version {version} ({CHAMPION_ALIAS}): its test rows "
                                  f"could not be fetched from MLflow at {tracking_uri}: {error}") from None
    return ChampionTestRows(version=version, path=Path(local))
