"""What a local run folder holds for answering: the base model, the adapter it trained, and the
system prompt and answer length its evaluation used."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from tuneloop.api.evaluation import EvaluationSpec
from tuneloop.api.finetunejob import FineTuneJobStatus
from tuneloop.api.workloads import EvaluatorWorkload, TrainerWorkload
from tuneloop.storage_uris import file_uri_path

BASE = "base"
TUNED = "tuned"


class RunNotServable(Exception):
    """The run cannot answer yet (no adapter) or its folder is not readable; the message says which."""


@dataclass(frozen=True)
class ServedRun:
    name: str
    folder: Path
    model_path: Path
    adapter_path: Path
    system_prompt: str | None
    max_new_tokens: int
    registered_model: str | None = None
    registered_version: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name}/{self.folder.name}"


def local_path(uri: str) -> Path:
    """A file:// URI (as the local runner writes them, percent-encoded) or a plain path."""
    return file_uri_path(uri) if uri.startswith("file://") else Path(uri)


def moved_with_run(path: Path, run_folder: Path) -> Path:
    """`path` as recorded, or, when it was inside the run folder and the work folder has moved since,
    the same place in the run folder now."""
    if path.exists():
        return path
    parts = path.parts
    marker = (run_folder.parent.name, run_folder.name)
    for index in range(len(parts) - 1):
        if parts[index:index + 2] == marker:
            return run_folder.joinpath(*parts[index + 2:])
    return path


def _workload_file(run_folder: Path, stage: str) -> Path | None:
    for folder in sorted(run_folder.iterdir()):
        if folder.is_dir() and folder.name.endswith(f"-{stage}") and (folder / "workload.json").is_file():
            return folder / "workload.json"
    return None


def served_run(run_folder: Path, status: FineTuneJobStatus) -> ServedRun:
    """The run's base model and adapter; RunNotServable when training has not produced an adapter."""
    label = f"{run_folder.parent.name}/{run_folder.name}"
    if status.training is None:
        detail = f": {status.message}" if status.phase == "Failed" and status.message else ""
        if status.progress and status.progress.total_steps:
            detail = f" (step {status.progress.step}/{status.progress.total_steps})"
        raise RunNotServable(f"run {label} is {status.phase} and has no adapter yet{detail} "
                             f"(tuneloop status {label} shows where it is)")
    adapter = moved_with_run(local_path(status.training.adapter_uri), run_folder)
    if not (adapter / "adapter_config.json").is_file():
        raise RunNotServable(f"run {label}: its adapter {adapter} is missing (no adapter_config.json there)")
    train_file = _workload_file(run_folder, "train")
    if train_file is None:
        raise RunNotServable(f"run {label}: {run_folder} has no train workload (…-train/workload.json)")
    try:
        trainer = TrainerWorkload.model_validate_json(train_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, ValidationError) as error:
        raise RunNotServable(f"{train_file}: unreadable train workload ({error.__class__.__name__})") from error
    model_path = Path(trainer.model_path)
    if not (model_path / "config.json").is_file():
        raise RunNotServable(f"run {label}: its base model folder {model_path} is gone (no config.json); "
                             "run the job again to materialise it")
    max_new_tokens = EvaluationSpec().max_new_tokens
    evaluate_file = _workload_file(run_folder, "evaluate")
    if evaluate_file is not None:
        try:
            evaluator = EvaluatorWorkload.model_validate_json(evaluate_file.read_text(encoding="utf-8"))
            max_new_tokens = evaluator.evaluation.max_new_tokens
        except (OSError, ValueError, ValidationError):
            pass  # the evaluation's answer length is only a default
    registry = status.registry
    return ServedRun(name=run_folder.parent.name, folder=run_folder, model_path=model_path, adapter_path=adapter,
                     system_prompt=trainer.dataset.system_prompt, max_new_tokens=max_new_tokens,
                     registered_model=registry.model_name if registry else None,
                     registered_version=registry.version if registry else None)
