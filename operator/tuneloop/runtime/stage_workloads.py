"""Every FineTuneJob stage's workload spec, shared by the local and the Kubernetes runtime.

The runtimes differ only in where things are: they pass the paths the workload sees, and `resolve`
turns a storage URI from an earlier stage's result (file://, pvc://) into such a path.
"""

from __future__ import annotations

from typing import Any, Callable

from tuneloop.api.finetunejob import FineTuneJob, FineTuneJobStatus
from tuneloop.api.export import ExportedFile
from tuneloop.api.workloads import (
    AugmentWorkload,
    DataCheckWorkload,
    EvaluatorWorkload,
    ExportWorkload,
    RegisterWorkload,
    Tracking,
    TrainerWorkload,
)
from tuneloop.registry.lineage import lineage_tags

Resolve = Callable[[str], str]
InputFile = Callable[[str, str], str]  # (storage URI, input name: dataset, replay, preferences) -> path


def registered_model_name(job: FineTuneJob) -> str:
    return job.spec.registry.model_name or job.metadata.name


def _required(inputs: dict[str, Any], key: str, stage: str) -> str:
    value = inputs.get(key)
    if not value:
        raise ValueError(f"the {stage} stage needs {key} from the training result, and it is missing")
    return value


def trainer_workload(job: FineTuneJob, *, model_path: str, input_file: InputFile, output_dir: str,
                     tracking: Tracking | None, gpu_peak_tflops: float | None = None,
                     synthetic_path: str | None = None) -> TrainerWorkload:
    """The training stage's workload; synthetic_path: the augment stage's rows, once it has run."""
    spec = job.spec
    replay, preferences = spec.dataset.replay, spec.dataset.preferences
    return TrainerWorkload(
        job=f"{job.metadata.namespace}/{job.metadata.name}",
        model_path=model_path,
        dataset_path=input_file(spec.dataset.uri, "dataset"),
        replay_path=input_file(replay.uri, "replay") if replay else None,
        preferences_path=input_file(preferences.uri, "preferences") if preferences else None,
        synthetic_path=synthetic_path,
        dataset=spec.dataset,
        method=spec.method,
        training=spec.training,
        output_dir=output_dir,
        preview_examples=spec.output.preview_examples,
        tracking=tracking,
        registered_model=registered_model_name(job) if spec.registry.enabled and tracking else None,
        gpu_peak_tflops=gpu_peak_tflops,
    )


def data_check_workload(job: FineTuneJob, training: TrainerWorkload) -> DataCheckWorkload:
    """The training's own spec, read on a CPU before any GPU is asked for."""
    return DataCheckWorkload.of(training, world_size=job.spec.resources.training_processes)


def augment_workload(job: FineTuneJob, training: TrainerWorkload, teacher_key_env: str | None) -> AugmentWorkload:
    """The training's own spec, read by the augment stage on a CPU."""
    return AugmentWorkload.model_validate({**training.model_dump(), "teacher_key_env": teacher_key_env})


def export_workload(job: FineTuneJob, inputs: dict[str, Any], *, model_path: str, resolve: Resolve,
                    output_dir: str) -> ExportWorkload:
    spec = job.spec
    return ExportWorkload(
        job=f"{job.metadata.namespace}/{job.metadata.name}",
        model_path=model_path,
        adapter_path=resolve(_required(inputs, "adapter_uri", "export")),
        method=spec.method,
        test_path=resolve(_required(inputs, "test_uri", "export")),
        dataset=spec.dataset,
        formats=spec.output.exports(),
        gguf=spec.output.gguf,
        max_new_tokens=spec.evaluation.max_new_tokens,
        output_dir=output_dir,
    )


def evaluator_workload(job: FineTuneJob, inputs: dict[str, Any], *, model_path: str, resolve: Resolve,
                       output_dir: str, tracking: Tracking | None,
                       general_set_path: str | None = None) -> EvaluatorWorkload:
    spec = job.spec
    return EvaluatorWorkload(
        job=f"{job.metadata.namespace}/{job.metadata.name}",
        model_path=model_path,
        adapter_path=resolve(_required(inputs, "adapter_uri", "evaluate")),
        test_path=resolve(_required(inputs, "test_uri", "evaluate")),
        dataset=spec.dataset,
        evaluation=spec.evaluation,
        general_set_path=general_set_path,
        output_dir=output_dir,
        tracking=tracking,
        registered_model=registered_model_name(job) if spec.registry.enabled and tracking else None,
        training_run_id=inputs.get("training_run_id"),
    )


def register_workload(job: FineTuneJob, inputs: dict[str, Any], *, resolve: Resolve, tracking: Tracking,
                      job_uid: str, retry_seconds: float) -> RegisterWorkload:
    tags = {**inputs.get("tags", {}), **lineage_tags(job, job_uid)}
    records = inputs.get("records_uri")
    job_status = inputs.get("job_status")
    return RegisterWorkload(
        job=f"{job.metadata.namespace}/{job.metadata.name}",
        job_uid=job_uid,
        tracking=tracking,
        model_name=registered_model_name(job),
        adapter_path=resolve(_required(inputs, "adapter_uri", "register")),
        training_run_id=inputs.get("training_run_id"),
        records_path=resolve(records) if records else None,
        tags=tags,
        metrics={key: value for key, value in inputs.get("metrics", {}).items() if value is not None},
        job_status=FineTuneJobStatus.model_validate(job_status) if job_status else None,
        exports=[ExportedFile.model_validate(exported).model_copy(update={"uri": resolve(exported["uri"])})
                 for exported in inputs.get("exports", [])],
        set_challenger=bool(inputs.get("set_challenger")),
        set_champion=bool(inputs.get("set_champion")),
        expected_champion=inputs.get("expected_champion"),
        retry_seconds=retry_seconds,
    )
