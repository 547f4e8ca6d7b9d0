"""A registered version's exports (spec.output.export): the merged model and the GGUF file, logged as
artifacts of the version's run under `export/` (the merged folder as `export/merged/`, the GGUF file as
`export/<file name>`), and named on the version by one tag per kind:
`tuneloop.dev/export-<kind>` = "<artifact URI> sha256=<sha256>".

The tag is written only once its artifact is logged, so a version whose tag already holds the same
value needs nothing more: a retried registration does not upload a file twice, and an export that
was missing or changed is uploaded and tagged.
"""

from __future__ import annotations

from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from tuneloop.api.export import ExportedFile

EXPORT_ARTIFACT_PATH = "export"
EXPORT_TAG_PREFIX = "tuneloop.dev/export-"


class ExportMissing(Exception):
    """An export the workload names is not on disk."""


def export_tag(export: ExportedFile) -> str:
    return f"{EXPORT_TAG_PREFIX}{export.kind}"


def artifact_path(export: ExportedFile) -> str:
    """Where the export lies in the run: export/merged for the merged folder, export/<name> for a file."""
    local = Path(export.uri)
    return f"{EXPORT_ARTIFACT_PATH}/merged" if export.kind == "merged" else f"{EXPORT_ARTIFACT_PATH}/{local.name}"


def logged(export: ExportedFile, run_id: str) -> ExportedFile:
    """The export as registered: its uri the run's artifact URI."""
    return export.model_copy(update={"uri": f"runs:/{run_id}/{artifact_path(export)}"})


def tag_value(export: ExportedFile) -> str:
    return f"{export.uri} sha256={export.sha256}"


def check_exports(exports: list[ExportedFile]) -> None:
    for index, export in enumerate(exports):
        path = Path(export.uri)
        if not (path.is_dir() if export.kind == "merged" else path.is_file()):
            kind = "folder" if export.kind == "merged" else "file"
            raise ExportMissing(f"exports[{index}].uri: the {export.kind} export's {kind} {path} does not exist")


def upload(client: MlflowClient, run_id: str, export: ExportedFile) -> None:
    if export.kind == "merged":
        client.log_artifacts(run_id, export.uri, artifact_path(export))
    else:
        client.log_artifact(run_id, export.uri, EXPORT_ARTIFACT_PATH)


def log_exports(client: MlflowClient, run_id: str, exports: list[ExportedFile],
                version: ModelVersion | None = None) -> dict[str, str]:
    """Uploads every export whose tag on `version` (if any) is not already the one it will get; returns the
    export tags. A new version is created with them; an existing one gets those that changed here."""
    tags = {}
    for export in exports:
        registered = logged(export, run_id)
        tag, value = export_tag(export), tag_value(registered)
        if version is None or version.tags.get(tag) != value:
            upload(client, run_id, export)
            if version is not None:
                client.set_model_version_tag(version.name, version.version, tag, value)
        tags[tag] = value
    return tags


def registered_exports(exports: list[ExportedFile], run_id: str) -> list[ExportedFile]:
    return [logged(export, run_id) for export in exports]
