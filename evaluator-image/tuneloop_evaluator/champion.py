"""Which baseline the candidate meets: the base model, or the registered model's `champion` version.

Assumed registry layout (what tuneloop's registry step writes): the adapter folder is logged as
artifact path `adapter` of the training run and registered with source `runs:/<run_id>/adapter`,
so the version's artifacts are the adapter files at their root. A version whose artifacts hold
an `adapter/` folder instead (source = the run's root, or a logged model) works too.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from tuneloop.api.workloads import EvaluatorWorkload

log = logging.getLogger("tuneloop_evaluator")
CHAMPION_ALIAS = "champion"


class ChampionUnavailable(RuntimeError):
    """The champion is asked for (or may exist) but cannot be looked up or fetched."""


@dataclass
class Baseline:
    kind: str  # "base" or "champion"
    version: str | None = None
    folder: Path | None = None  # the champion's adapter (or model) folder


def _champion_version(workload: EvaluatorWorkload) -> tuple[str, str] | None:
    """(version, source) of the alias, None when the registered model or the alias does not exist."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    tracking_uri = workload.tracking.tracking_uri
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    name = workload.registered_model
    try:
        registered = client.get_registered_model(name)
    except Exception as error:  # also connection refused, DNS, TLS: MLflow wraps them in MlflowException
        if isinstance(error, MlflowException) and error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise ChampionUnavailable(f"MLflow at {tracking_uri} could not be asked for registered model "
                                  f"{name!r}: {error}") from None
    version = (registered.aliases or {}).get(CHAMPION_ALIAS)
    if version is None:
        return None
    try:
        return str(version), client.get_model_version(name, str(version)).source
    except Exception as error:
        raise ChampionUnavailable(f"{name} version {version} (alias {CHAMPION_ALIAS}): {error}") from None


def model_folder(root: Path) -> Path | None:
    """Where the adapter (or full model) files are in a downloaded version: at the root or in adapter/."""
    for folder in (root, root / "adapter"):
        if (folder / "adapter_config.json").is_file() or (folder / "config.json").is_file():
            return folder
    return None


def download_version(tracking_uri: str, source: str, target: Path) -> Path:
    """A model version's artifacts (its source URI) into a fresh `target`; the folder holding the
    adapter files. Raises whatever MLflow raises, or FileNotFoundError when no adapter is there."""
    import mlflow.artifacts

    shutil.rmtree(target, ignore_errors=True)  # a restarted pod must not mix two downloads
    target.mkdir(parents=True)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(target),
                                                     tracking_uri=tracking_uri))
    folder = model_folder(local) or model_folder(target)
    if folder is None:
        raise FileNotFoundError(f"{source} holds no adapter_config.json (or config.json) at its root or in adapter/")
    return folder


def _download(workload: EvaluatorWorkload, version: str, source: str) -> Path:
    try:
        return download_version(workload.tracking.tracking_uri, source, Path(workload.output_dir) / "champion")
    except Exception as error:
        raise ChampionUnavailable(f"{workload.registered_model} version {version}: artifacts at {source} "
                                  f"could not be downloaded: {error}") from None


def resolve_baseline(workload: EvaluatorWorkload) -> Baseline:
    """base: the base model. champion: the champion or ChampionUnavailable. auto: champion if there is one.

    An MLflow that cannot be asked is an error for auto too: falling back to the base model would
    let a candidate worse than the champion pass the gate.
    """
    wanted = workload.evaluation.baseline
    if wanted == "base":
        return Baseline("base")
    if workload.tracking is None or not workload.registered_model:
        if wanted == "champion":
            raise ChampionUnavailable("evaluation.baseline is champion, but the workload has no tracking URI "
                                      "and registered model to look it up in")
        return Baseline("base")
    found = _champion_version(workload)
    if found is None:
        if wanted == "champion":
            raise ChampionUnavailable(f"registered model {workload.registered_model!r} has no {CHAMPION_ALIAS} "
                                      f"alias at {workload.tracking.tracking_uri}")
        log.info("no %s for %s yet: the baseline is the base model", CHAMPION_ALIAS, workload.registered_model)
        return Baseline("base")
    version, source = found
    folder = _download(workload, version, source)
    log.info("baseline: %s version %s (%s) from %s", workload.registered_model, version, CHAMPION_ALIAS, source)
    return Baseline("champion", version=version, folder=folder)
