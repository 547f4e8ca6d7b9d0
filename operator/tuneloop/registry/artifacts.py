"""A registered version's files on local disk: the champion for the evaluator, the adapter for a
ModelDeployment's init container.

Assumed registry layout (what registration writes): the adapter folder is logged as artifact path
`adapter` of the training run and registered with source `runs:/<run_id>/adapter`, so the version's
artifacts are the adapter files at their root. A version whose artifacts hold an `adapter/` folder
instead (source = the run's root, or a logged model) works too.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tuneloop.registry.connection import client


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


def parse_source(source: str) -> tuple[str, str]:
    name, _, version = source.removeprefix("models:/").rpartition("/")
    if not source.startswith("models:/") or not name or not version:
        raise ValueError(f"{source!r} is not models:/<name>/<version>")
    return name, version


def fetch_version(source: str, destination: Path, tracking_uri: str) -> Path:
    """models:/<name>/<version> into `destination`, the adapter files at its root, replacing it whole."""
    name, version = parse_source(source)
    artifacts = client(tracking_uri).get_model_version(name, version).source
    staging = destination.with_name(f".{destination.name}.partial")
    folder = download_version(tracking_uri, artifacts, staging)
    shutil.rmtree(destination, ignore_errors=True)
    folder.rename(destination)
    shutil.rmtree(staging, ignore_errors=True)
    return destination
