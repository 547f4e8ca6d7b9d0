r"""The FineTuneJob state machine as a pure function: (spec, status, observed world) -> (actions, status).

    Pending -> Training -> [Evaluating] -> [Registering] -> Succeeded
        \________\______________\______________\_________-> Failed (reason, message)

Training shows as Validating while the trainer checks the data. Each stage runs one workload
with a deterministic name; a stage whose workload is absent is launched (runtimes create it only
if absent), a running one reports progress, a finished one hands its result to the next stage.
Nothing here talks to Kubernetes or spawns processes: runtimes carry out the actions.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

from tuneloop.api.common import SpecError, now_rfc3339, set_condition
from tuneloop.api.finetunejob import (
    TERMINAL_PHASES,
    FineTuneJobSpec,
    FineTuneJobStatus,
    Progress,
    TrainingResults,
    parse_spec,
)
from tuneloop.api.workloads import TrainerProgress, TrainerResult

WorkloadPhase = Literal["Absent", "Running", "Succeeded", "Failed"]
MAX_NAME = 63


@dataclass(frozen=True)
class WorkloadState:
    """What a runtime saw of one workload."""

    phase: WorkloadPhase = "Absent"
    result: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None
    message: str = ""


@dataclass(frozen=True)
class Observed:
    workloads: dict[str, WorkloadState] = field(default_factory=dict)
    now: str = field(default_factory=now_rfc3339)


@dataclass(frozen=True)
class ReconcileContext:
    """Facts about where the job runs that the spec is checked against."""

    mode: Literal["local", "cluster"]
    catalog: frozenset[str]


@dataclass(frozen=True)
class LaunchWorkload:
    stage: str
    name: str


@dataclass(frozen=True)
class EmitEvent:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


Action = LaunchWorkload | EmitEvent


@dataclass
class Decision:
    status: FineTuneJobStatus
    actions: list[Action] = field(default_factory=list)


@dataclass(frozen=True)
class Stage:
    name: str
    phase: str
    done_condition: str


# Evaluating and Registering join this list with the evaluator and the registry.
STAGES = (Stage(name="train", phase="Training", done_condition="Trained"),)


def workload_name(job_name: str, stage: str) -> str:
    """Deterministic, DNS-1123 sized: the same job and stage always map to the same workload."""
    name = f"{job_name}-{stage}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{job_name[: MAX_NAME - len(stage) - 10]}-{digest}-{stage}"


def check_context(spec: FineTuneJobSpec, context: ReconcileContext) -> list[str]:
    """Spec problems that depend on where the job runs (pydantic has checked the rest)."""
    problems = []
    if spec.base_model.name is not None and spec.base_model.name not in context.catalog:
        known = ", ".join(sorted(context.catalog)) or "none"
        problems.append(f"spec.baseModel.name: {spec.base_model.name!r} is not in the model catalog (known: {known})")
    uris = {"spec.dataset.uri": spec.dataset.uri, "spec.baseModel.uri": spec.base_model.uri,
            "spec.output.uri": spec.output.uri}
    for path, uri in uris.items():
        if uri is None:
            continue
        if context.mode == "local" and uri.startswith(("pvc://", "s3://")):
            problems.append(f"{path}: {uri.split('://')[0]}:// storage needs a cluster; in local mode use a file path")
        if context.mode == "cluster" and not uri.startswith("pvc://"):
            problems.append(f"{path}: {uri!r} cannot be mounted in a cluster by this version; use pvc://claim/path")
    if context.mode == "cluster" and spec.output.uri is None:
        problems.append("spec.output.uri: a cluster run needs a pvc:// folder for checkpoints and the adapter")
    return problems


def validate(raw_spec: Any, context: ReconcileContext) -> FineTuneJobSpec:
    spec = parse_spec(raw_spec)
    problems = check_context(spec, context)
    if problems:
        raise SpecError(problems)
    return spec


def _fail(status: FineTuneJobStatus, reason: str, message: str, now: str, generation: int | None) -> Decision:
    status.phase = "Failed"
    status.message = message
    status.completion_time = now
    status.conditions = set_condition(status.conditions, "Failed", "True", reason, message,
                                      observed_generation=generation, now=now)
    return Decision(status, [EmitEvent("Warning", reason, message)])


def _enter(status: FineTuneJobStatus, stage: Stage, job_name: str, decision: Decision) -> None:
    status.phase = stage.phase
    status.message = f"{stage.name} workload {workload_name(job_name, stage.name)} launched"
    decision.actions.append(LaunchWorkload(stage.name, workload_name(job_name, stage.name)))
    decision.actions.append(EmitEvent("Normal", f"{stage.phase}Started", status.message))


def reconcile(
    name: str,
    raw_spec: Any,
    status: FineTuneJobStatus,
    observed: Observed,
    context: ReconcileContext,
    generation: int | None = None,
) -> Decision:
    status = status.model_copy(deep=True)
    now = observed.now
    if status.phase in TERMINAL_PHASES:
        return Decision(status)

    if status.phase == "Pending":
        try:
            validate(raw_spec, context)
        except SpecError as error:
            return _fail(status, "InvalidSpec", str(error), now, generation)
        status.start_time = now
        status.observed_generation = generation
        status.conditions = set_condition(status.conditions, "SpecValid", "True", "Valid",
                                          observed_generation=generation, now=now)
        decision = Decision(status)
        _enter(status, STAGES[0], name, decision)
        return decision

    decision = Decision(status)
    _note_spec_change(status, generation, now, decision)
    # Validating is how the first stage shows while its workload checks the data.
    stage_index = next((i for i, stage in enumerate(STAGES) if stage.phase == status.phase), 0)
    stage = STAGES[stage_index]
    workload = observed.workloads.get(workload_name(name, stage.name), WorkloadState())

    if workload.phase == "Absent":
        # Launched before but gone (deleted, or lost with a restart): launch again; the trainer resumes.
        decision.actions.append(LaunchWorkload(stage.name, workload_name(name, stage.name)))
        return decision

    if workload.phase == "Running":
        if workload.message and workload.message != status.message:
            status.message = workload.message
            decision.actions.append(EmitEvent("Warning", "WorkloadProblem", workload.message))
        if workload.progress:
            progress = TrainerProgress.model_validate(workload.progress)
            status.phase = "Validating" if progress.stage == "validating-data" else stage.phase
            if progress.total_steps:
                if not workload.message:
                    status.message = f"{stage.phase.lower()}: step {progress.step} of {progress.total_steps}"
                status.progress = Progress(
                    step=progress.step, total_steps=progress.total_steps, epoch=round(progress.epoch, 3),
                    loss=progress.loss, tokens_per_second=progress.tokens_per_second,
                    eta_seconds=None if progress.eta_seconds is None else round(progress.eta_seconds),
                )
        return decision

    result = TrainerResult.model_validate(workload.result) if workload.result else None
    if result is not None and result.reason == "Preempted":
        # Stopped by a signal after saving a checkpoint: run it again and it resumes.
        status.message = f"{result.message}; relaunched"
        decision.actions.append(LaunchWorkload(stage.name, workload_name(name, stage.name)))
        decision.actions.append(EmitEvent("Warning", "Preempted", status.message))
        return decision
    if workload.phase == "Failed" or result is None or not result.succeeded:
        reason = (result.reason if result and result.reason else f"{stage.phase}Failed")
        message = (result.message if result and result.message else workload.message) or "the workload failed"
        failed = _fail(status, reason, message, now, generation)
        failed.actions[:0] = decision.actions
        failed.status.conditions = set_condition(failed.status.conditions, stage.done_condition, "False",
                                                 reason, message, observed_generation=generation, now=now)
        return failed

    _record_result(status, result)
    status.conditions = set_condition(status.conditions, stage.done_condition, "True", "Succeeded",
                                      _summary(result), observed_generation=generation, now=now)
    decision.actions.append(EmitEvent("Normal", f"{stage.done_condition}", _summary(result)))
    if stage_index + 1 < len(STAGES):
        _enter(status, STAGES[stage_index + 1], name, decision)
        return decision
    status.phase = "Succeeded"
    status.message = _summary(result)
    status.completion_time = now
    status.conditions = set_condition(status.conditions, "Complete", "True", "Succeeded", status.message,
                                      observed_generation=generation, now=now)
    decision.actions.append(EmitEvent("Normal", "Succeeded", status.message))
    return decision


def _note_spec_change(status: FineTuneJobStatus, generation: int | None, now: str, decision: Decision) -> None:
    """A spec changed after the job started is not applied: the job finishes with the spec it accepted.

    Restarting training silently would throw work away; to train with the new spec, create a new
    FineTuneJob (or delete and re-create this one).
    """
    if generation is None or status.observed_generation is None or generation <= status.observed_generation:
        return
    message = (f"spec changed (generation {generation}) after the job started with generation "
               f"{status.observed_generation}; the change is not applied: create a new FineTuneJob to use it")
    previous = next((c for c in status.conditions if c.type == "SpecChangeIgnored"), None)
    if previous is None or previous.message != message:
        decision.actions.append(EmitEvent("Warning", "SpecChangeIgnored", message))
    status.conditions = set_condition(status.conditions, "SpecChangeIgnored", "True", "StartedWithEarlierSpec",
                                      message, observed_generation=generation, now=now)


def _summary(result: TrainerResult) -> str:
    return (f"hold-out loss {result.hold_out_loss_before:.4f} -> {result.hold_out_loss_after:.4f} "
            f"in {result.steps} steps")


def _record_result(status: FineTuneJobStatus, result: TrainerResult) -> None:
    status.dataset = result.dataset
    status.cleaning = result.cleaning
    status.training = TrainingResults(
        hold_out_loss_before=result.hold_out_loss_before,
        hold_out_loss_after=result.hold_out_loss_after,
        train_loss=result.train_loss,
        steps=result.steps,
        tokens_per_second=round(result.tokens_per_second or 0.0, 1),
        seconds=round(result.seconds or 0.0, 1),
        adapter_uri=result.adapter_path,
        hold_out_uri=result.hold_out_path,
        merged_model_uri=result.merged_path,
        resumed_from_step=result.resumed_from_step,
        stopped_early=result.stopped_early,
        best_step=result.best_step,
        mlflow_run_id=result.mlflow_run_id,
    )
    if status.progress:
        status.progress.step = status.progress.total_steps = result.steps
        status.progress.eta_seconds = 0
