r"""The FineTuneJob state machine as a pure function: (spec, status, observed world) -> (actions, status).

    Pending -> Validating -> [Augmenting] -> Training -> Evaluating -> [Exporting] -> Registering -> Succeeded
        \_________\______________\______________\____________\______________\______________\-> Failed

Validating reads every row on a CPU before any GPU is asked for. Augmenting (dataset.augment) asks a teacher
model for synthetic training rows, on a CPU. Exporting (output.export) merges the adapter and writes a GGUF
file, only when the gate passed (or there is no evaluation): a failed gate skips it. Each stage runs one workload
with a deterministic name; a stage whose workload is absent is launched (runtimes create it only
if absent), a running one reports progress, a finished one hands its result to the next stage.
Nothing here talks to Kubernetes or spawns processes: runtimes carry out the actions.

Two phases stand in for a stage's own while it cannot run (`status.stage` keeps the stage):
Queued while its Job waits for Kueue to admit it (first, or again after a preemption), and
Suspended while spec.suspend holds it: the running workload is stopped (the trainer checkpoints
on the SIGTERM) and launched again when suspend is false, resuming from the checkpoint.
`status.cost` (reconcile/cost.py) follows every one of those transitions.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from tuneloop.api.common import get_condition, parse_time, rfc3339, set_condition
from tuneloop.api.finetunejob import (
    TERMINAL_PHASES,
    DataReportSummary,
    DatasetStats,
    FineTuneJob,
    FineTuneJobSpec,
    CostStatus,
    FineTuneJobStatus,
    Progress,
    QueueStatus,
    TrainingResults,
)
from tuneloop.api.evaluation import EvaluationResults, RegistryResults
from tuneloop.api.export import ExportedFile, ExportResults
from tuneloop.api.workloads import (
    AugmentResult,
    DataCheckResult,
    EvaluatorResult,
    ExportResult,
    RegisterResult,
    TrainerProgress,
    TrainerResult,
)
from tuneloop.reconcile import core, cost, gate
from tuneloop.reconcile.core import EmitEvent
from tuneloop.reconcile.refusals import Refusal
from tuneloop.reconcile.refusals import summary as refusal_summary
from tuneloop.registry.metric_names import evaluation_metric
from tuneloop.storage_uris import NO_CLUSTER_OUTPUT, cluster_storage_problem

# Queued: created, waiting (suspended) for Kueue to admit it; Stopping: being deleted, its pods still ending.
WorkloadPhase = Literal["Absent", "Queued", "Running", "Stopping", "Succeeded", "Failed"]
MAX_NAME = 63


@dataclass(frozen=True)
class WorkloadState:
    """What a runtime saw of one workload."""

    phase: WorkloadPhase = "Absent"
    result: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None
    message: str = ""
    since: str | None = None  # when it entered this phase (RFC 3339), when the runtime knows
    started: str | None = None  # a finished workload: when it last started running (after its admission)
    queue_reason: str | None = None  # Kueue's, from its Workload object, while Queued
    queue_message: str | None = None
    queue_workload: str | None = None


@dataclass(frozen=True)
class ReconcileContext:
    """Facts about where the job runs that the spec is checked against."""

    mode: Literal["local", "cluster"]
    catalog: frozenset[str]
    registry_configured: bool = True
    cost_per_gpu_hour: float | None = None
    currency: str = "USD"


@dataclass(frozen=True)
class Observed:
    context: ReconcileContext = ReconcileContext(mode="cluster", catalog=frozenset())
    workloads: dict[str, WorkloadState] = field(default_factory=dict)
    refusals: tuple[Refusal, ...] = ()  # Secrets and addresses the spec names that may not be used
    queue_name: str | None = None  # the Kueue LocalQueue its Jobs are created in, if any


@dataclass(frozen=True)
class LaunchWorkload:
    """Start a stage's workload. `inputs` carries what the stage needs from earlier stages and the
    decisions taken here (e.g. which aliases the registry moves); `replace` starts it over even if a
    finished one of the same name is still there."""

    stage: str
    name: str
    inputs: dict[str, Any] = field(default_factory=dict)
    replace: bool = False


@dataclass(frozen=True)
class StopWorkload:
    """Stop a stage's workload and free what it holds: its pods get SIGTERM and their grace period (the
    trainer saves a checkpoint), and the workload is gone once they have ended."""

    stage: str
    name: str


Action = LaunchWorkload | StopWorkload
Decision = core.Decision[FineTuneJobStatus, Action]
Resource = core.Resource[FineTuneJob, FineTuneJobStatus]


@dataclass(frozen=True)
class Stage:
    name: str
    phase: str
    done_condition: str


VALIDATE = Stage(name="validate", phase="Validating", done_condition="DataValidated")
AUGMENT = Stage(name="augment", phase="Augmenting", done_condition="Augmented")
TRAIN = Stage(name="train", phase="Training", done_condition="Trained")
EVALUATE = Stage(name="evaluate", phase="Evaluating", done_condition="Evaluated")
EXPORT = Stage(name="export", phase="Exporting", done_condition="Exported")
REGISTER = Stage(name="register", phase="Registering", done_condition="Registered")
STAGES = (VALIDATE, AUGMENT, TRAIN, EVALUATE, EXPORT, REGISTER)


def stages_for(spec: FineTuneJobSpec) -> list[Stage]:
    """The stages this spec asks for, in order; the data check and training always run."""
    wanted = {VALIDATE: True, AUGMENT: spec.dataset.augment is not None, TRAIN: True,
              EVALUATE: spec.evaluation.enabled, EXPORT: bool(spec.output.exports()),
              REGISTER: spec.registry.enabled}
    return [stage for stage in STAGES if wanted[stage]]


def gate_failed(status: FineTuneJobStatus) -> bool:
    evaluation = status.evaluation
    return evaluation is not None and evaluation.gate is not None and not evaluation.gate.passed


def workload_name(job_name: str, stage: str, nodes: int = 1) -> str:
    """Deterministic, DNS-1123 sized: the same job and stage always map to the same workload. A
    multi-node training Job names its pods' hostnames `<name>-<index>`, which must fit in 63 too."""
    limit = MAX_NAME - len(f"-{nodes - 1}") if nodes > 1 and stage == TRAIN.name else MAX_NAME
    name = f"{job_name}-{stage}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{job_name[: limit - len(stage) - 10]}-{digest}-{stage}"


def _cluster_storage_problem(path: str, uri: str) -> str | None:
    """The base model is a folder; the dataset and the replay set are one file each."""
    problem = cluster_storage_problem(uri, output=path == "spec.output.uri",
                                      one_object=path != "spec.baseModel.uri")
    return f"{path}: {problem}" if problem else None


def check_context(spec: FineTuneJobSpec, context: ReconcileContext) -> list[str]:
    """Spec problems that depend on where the job runs (pydantic has checked the rest)."""
    problems = []
    if spec.base_model.name is not None and spec.base_model.name not in context.catalog:
        known = ", ".join(sorted(context.catalog)) or "none"
        problems.append(f"spec.baseModel.name: {spec.base_model.name!r} is not in the model catalog (known: {known})")
    uris = {"spec.dataset.uri": spec.dataset.uri,
            "spec.dataset.replay.uri": spec.dataset.replay.uri if spec.dataset.replay else None,
            "spec.baseModel.uri": spec.base_model.uri, "spec.output.uri": spec.output.uri}
    for path, uri in uris.items():
        if uri is None:
            continue
        if context.mode == "local" and uri.startswith(("pvc://", "s3://")):
            problems.append(f"{path}: {uri.split('://')[0]}:// storage needs a cluster; in local mode use a file path")
        if context.mode == "cluster" and (problem := _cluster_storage_problem(path, uri)):
            problems.append(problem)
    if context.mode == "local" and spec.suspend:
        problems.append("spec.suspend: a local run is not suspended; stop it with Ctrl-C and run it again to "
                        "resume from its checkpoint")
    if context.mode == "cluster" and spec.output.uri is None:
        problems.append(NO_CLUSTER_OUTPUT)
    if spec.registry.enabled and not context.registry_configured:
        where = ("the operator has no MLflow tracking URI to register with (set mlflowTrackingUri in its "
                 "configuration)" if context.mode == "cluster" else "this run has no MLflow tracking URI")
        problems.append(f"spec.registry.enabled: {where} - or set it to false")
    teacher = spec.dataset.augment.teacher if spec.dataset.augment else None
    for path, endpoint, role in (("spec.evaluation.judge", spec.evaluation.judge, "judge"),
                                 ("spec.dataset.augment.teacher", teacher, "teacher")):
        if endpoint is None:
            continue
        if context.mode == "cluster" and endpoint.api_key_env:
            problems.append(f"{path}.apiKeyEnv: in a cluster the key comes from apiKeySecret")
        if context.mode == "cluster" and endpoint.local:
            problems.append(f"{path}.local: a cluster cannot start a local {role}; serve the {role} model "
                            "(e.g. with a ModelDeployment) and give its url")
        if context.mode == "local" and endpoint.api_key_secret:
            problems.append(f"{path}.apiKeySecret: a local run reads the key from the environment variable "
                            "named by apiKeyEnv")
    return problems


def _fail(status: FineTuneJobStatus, reason: str, message: str, now: str, generation: int | None) -> Decision:
    status.phase = "Failed"
    status.message = message
    status.completion_time = now
    status.conditions = set_condition(status.conditions, "Failed", "True", reason, message,
                                      observed_generation=generation, now=now)
    return Decision(status, events=[EmitEvent("Warning", reason, message)])


def _enter(status: FineTuneJobStatus, stage: Stage, job_name: str, spec: FineTuneJobSpec, decision: Decision,
           observed: Observed, now: str, inputs: dict[str, Any] | None = None) -> None:
    status.stage = stage.name
    name = workload_name(job_name, stage.name, spec.resources.nodes)
    if spec.suspend:
        status.phase = "Suspended"
        status.message = f"suspended before the {stage.name} stage: set spec.suspend to false to go on"
        decision.event("Normal", "Suspended", status.message)
        return
    status.phase = stage.phase
    status.message = f"{stage.name} workload {name} launched"
    decision.act(LaunchWorkload(stage.name, name, inputs or {}))
    decision.event("Normal", f"{stage.phase}Started", status.message)
    _launched(status, spec, stage, name, observed, now)


def _launched(status: FineTuneJobStatus, spec: FineTuneJobSpec, stage: Stage, name: str, observed: Observed,
              now: str) -> None:
    """A workload was just launched: with a queue, it waits for admission from now."""
    if observed.queue_name:
        status.phase = "Queued"
        status.message = f"the {stage.name} Job {name} waits for admission in LocalQueue {observed.queue_name}"
        queue = status.queue or QueueStatus(name=observed.queue_name, state="Queued", since=now)
        queue.name, queue.state, queue.since, queue.reason, queue.message = observed.queue_name, "Queued", now, None, None
        status.queue = queue
    _account(status, spec, stage, "Queued" if observed.queue_name else "Running", now)


def spec_digest(spec: FineTuneJobSpec) -> str:
    """The spec a job runs with, spec.suspend left out (a change of it alone is applied at once)."""
    canonical = json.dumps(spec.model_dump(mode="json", by_alias=True, exclude={"suspend"}), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _account(status: FineTuneJobStatus, spec: FineTuneJobSpec, stage: Stage, state: cost.LedgerState, at: str,
             used_seconds: float | None = None) -> None:
    status.cost = cost.record(status.cost, stage.name, cost.stage_gpus(spec, stage.name), state, at, used_seconds)


def reconcile(resource: Resource, observed: Observed, moment: datetime) -> Decision:
    """One pass; the returned status is a new object (the resource's is not changed)."""
    decision = _pass(resource, observed, moment)
    status = decision.status
    # The generation the job works on: the one it started with (a later spec is not applied).
    generation = resource.generation if status.observed_generation is None else status.observed_generation
    status.conditions = core.with_readiness(status.conditions, *readiness(status), generation=generation,
                                            now=rfc3339(moment))
    return decision


def readiness(status: FineTuneJobStatus) -> tuple[core.Readiness, str, str]:
    """Ready once it succeeded and its adapter passed the gate (or was not gated); a failed job and a
    failed gate are both Stalled: a person has to act, and kstatus, Flux and Argo CD say so."""
    gate_result = status.evaluation.gate if status.evaluation else None
    if status.phase == "Failed":
        failed = get_condition(status.conditions, "Failed")
        return "Stalled", failed.reason if failed else "Failed", status.message
    if status.phase == "Succeeded" and gate_result is not None and not gate_result.passed:
        return "Stalled", "GateFailed", f"{gate_result.message}; the adapter was not promoted"
    if status.phase == "Succeeded":
        return "Ready", "Succeeded", status.message
    return "Reconciling", status.phase, status.message or status.phase


def _pass(resource: Resource, observed: Observed, moment: datetime) -> Decision:
    status, name, generation = resource.status.model_copy(deep=True), resource.name, resource.generation
    now = rfc3339(moment)
    if status.phase in TERMINAL_PHASES:
        return Decision(status)

    if status.phase == "Pending":
        if resource.spec_error is not None:
            return _fail(status, "InvalidSpec", str(resource.spec_error), now, generation)
        spec = resource.spec
        problems = check_context(spec, observed.context)
        if spec.resources.workload_priority_class_name and observed.context.mode == "cluster" and \
                not observed.queue_name:
            problems.append("spec.resources.workloadPriorityClassName: a Kueue priority needs a queue: set "
                            "spec.queueName (the operator has no default queue for this namespace)")
        if problems:
            return _fail(status, "InvalidSpec", "; ".join(problems), now, generation)
        if observed.refusals:
            return _fail(status, observed.refusals[0].reason, refusal_summary(observed.refusals), now, generation)
        status.start_time = now
        status.observed_generation = generation
        status.spec_digest = spec_digest(spec)
        status.conditions = set_condition(status.conditions, "SpecValid", "True", "Valid",
                                          observed_generation=generation, now=now)
        status.cost = CostStatus()
        cost.price(status.cost, observed.context.cost_per_gpu_hour, observed.context.currency)
        decision = Decision(status)
        _enter(status, VALIDATE, name, spec, decision, observed, now)
        return decision

    if resource.spec_error is not None:
        return _fail(status, "InvalidSpec", "the spec was changed to an invalid one after the job started: "
                     f"{resource.spec_error}", now, generation)
    spec = resource.spec
    decision = Decision(status)
    _note_spec_change(status, spec, generation, now, decision)
    stages = stages_for(spec)
    stage_index = current_stage_index(stages, status)
    stage = stages[stage_index]
    status.stage = stage.name
    workload_of_stage = workload_name(name, stage.name, spec.resources.nodes)
    workload = observed.workloads.get(workload_of_stage, WorkloadState())
    since = workload.since or now

    stopped_by_signal = (workload.result or {}).get("reason") == "Preempted"
    if spec.suspend and (workload.phase in ("Absent", "Queued", "Running", "Stopping") or stopped_by_signal):
        _suspend(status, spec, stage, workload_of_stage, workload, now, decision)
        return decision
    if status.phase == "Suspended" and workload.phase != "Stopping":
        status.phase = stage.phase
        status.message = f"resumed: the {stage.name} stage goes on"
        decision.event("Normal", "Resumed", f"spec.suspend is false: {status.message}")

    if workload.phase == "Absent":
        # Launched before but gone (deleted, suspended, or lost with a restart): launch again; the trainer resumes.
        decision.act(LaunchWorkload(stage.name, workload_of_stage, stage_inputs(stage, spec, status)))
        _launched(status, spec, stage, workload_of_stage, observed, now)
        return decision

    if workload.phase == "Stopping":
        status.message = f"waiting for the stopped {stage.name} Job {workload_of_stage} to end before starting it again"
        return decision

    if workload.phase == "Queued":
        _queued(status, spec, stage, workload_of_stage, workload, observed, since, decision)
        return decision

    if workload.phase == "Running":
        if observed.queue_name and _ledger_state(status, stage) == "Queued":
            _admitted(status, stage, workload_of_stage, observed.queue_name, since, decision)
        status.phase = stage.phase
        _account(status, spec, stage, "Running", since)
        _report_running(status, stage, workload, decision)
        return decision

    if _ledger_state(status, stage) == "Queued" and workload.started:
        # It was admitted, ran and finished between two passes.
        if observed.queue_name:
            _admitted(status, stage, workload_of_stage, observed.queue_name, workload.started, decision)
        _account(status, spec, stage, "Running", workload.started)
    reason = (workload.result or {}).get("reason")
    used = (workload.result or {}).get("seconds")
    if reason in RETRIED_REASONS:
        # Stopped after saving a checkpoint (Preempted), or the registry was down: run it again.
        message = f"{(workload.result or {}).get('message') or reason}; relaunched"
        status.message = message
        if reason == "RegistryUnavailable":
            status.conditions = set_condition(status.conditions, "RegistryUnavailable", "True", reason, message,
                                              observed_generation=generation, now=now)
        _account(status, spec, stage, "Stopped", since)
        decision.act(LaunchWorkload(stage.name, workload_of_stage, stage_inputs(stage, spec, status), replace=True))
        _launched(status, spec, stage, workload_of_stage, observed, now)
        decision.event("Warning", reason, message)
        return decision
    _account(status, spec, stage, "Done", since, used_seconds=used if isinstance(used, (int, float)) else None)
    if workload.phase == "Failed" or not (workload.result or {}).get("succeeded"):
        reason = reason or f"{stage.phase}Failed"
        message = (workload.result or {}).get("message") or workload.message or "the workload failed"
        failed = _fail(status, reason, message, now, generation)
        failed.events[:0] = decision.events
        failed.status.conditions = set_condition(failed.status.conditions, stage.done_condition, "False",
                                                 reason, message, observed_generation=generation, now=now)
        if reason == QUEUE_UNSUPPORTED:
            failed.act(StopWorkload(stage.name, workload_of_stage))
        return failed

    try:
        summary = RECORDERS[stage.name](status, spec, workload.result or {}, decision, generation, now)
    except ValueError as error:  # pydantic's ValidationError included
        failed = _fail(status, f"{stage.phase}Failed", f"the {stage.name} workload's result is unreadable: {error}",
                       now, generation)
        failed.events[:0] = decision.events
        return failed
    status.conditions = set_condition(status.conditions, stage.done_condition, "True", "Succeeded",
                                      summary, observed_generation=generation, now=now)
    decision.event("Normal", stage.done_condition, summary)
    following_index = stage_index + 1
    if following_index < len(stages) and stages[following_index] is EXPORT and gate_failed(status):
        status.export = ExportResults(skipped="the gate failed: nothing is exported from a rejected adapter")
        status.conditions = set_condition(status.conditions, EXPORT.done_condition, "False", "GateFailed",
                                          status.export.skipped, observed_generation=generation, now=now)
        following_index += 1
    if following_index < len(stages):
        following = stages[following_index]
        _enter(status, following, name, spec, decision, observed, now, stage_inputs(following, spec, status))
        return decision
    status.phase = "Succeeded"
    _price_improvement(status)
    status.message = _final_summary(status)
    status.completion_time = now
    status.conditions = set_condition(status.conditions, "Complete", "True", "Succeeded", status.message,
                                      observed_generation=generation, now=now)
    decision.event("Normal", "Succeeded", status.message)
    return decision


QUEUE_UNSUPPORTED = "QueueUnsupported"


def current_stage_index(stages: list[Stage], status: FineTuneJobStatus) -> int:
    """The stage the job is in: status.stage, else (a status written before it existed) the phase's stage."""
    for index, stage in enumerate(stages):
        if stage.name == status.stage or (status.stage is None and stage.phase == status.phase):
            return index
    return 0


def _suspend(status: FineTuneJobStatus, spec: FineTuneJobSpec, stage: Stage, name: str, workload: WorkloadState,
             now: str, decision: Decision) -> None:
    """spec.suspend: stop the stage's workload if it still runs or waits; Suspended until suspend is false."""
    stopping = workload.phase in ("Queued", "Running")
    if stopping:
        decision.act(StopWorkload(stage.name, name))
    if status.phase != "Suspended":
        what = (f"the {stage.name} Job {name} is stopped (the trainer saves a checkpoint first)"
                if stopping or workload.phase == "Stopping" else f"the {stage.name} stage waits")
        decision.event("Normal", "Suspended", f"spec.suspend is true: {what}")
    status.phase = "Suspended"
    step = (f" at step {status.progress.step} of {status.progress.total_steps}"
            if stage is TRAIN and status.progress and status.progress.total_steps else "")
    status.message = (f"suspended{step}: the {stage.name} Job {name} is ending" if stopping or
                      workload.phase == "Stopping" else
                      f"suspended in the {stage.name} stage{step}: set spec.suspend to false to resume")
    _account(status, spec, stage, "Stopped", now if stopping else (workload.since or now))


def _queued(status: FineTuneJobStatus, spec: FineTuneJobSpec, stage: Stage, name: str, workload: WorkloadState,
            observed: Observed, since: str, decision: Decision) -> None:
    """The stage's Job waits for Kueue: first admission, or again after Kueue preempted it."""
    preempted = _ledger_state(status, stage) == "Running"
    queue = status.queue or QueueStatus(name=observed.queue_name or "", state="Queued", since=since)
    if queue.state != "Queued" or preempted:
        queue.since = since
    queue.name, queue.state = observed.queue_name or queue.name, "Queued"
    queue.workload = workload.queue_workload or queue.workload
    queue.reason, queue.message = workload.queue_reason, workload.queue_message
    if preempted:
        queue.preemptions += 1
        decision.event("Warning", "Preempted", f"Kueue suspended the {stage.name} Job {name} to make room"
                                               f"{': ' + workload.queue_message if workload.queue_message else ''}; "
                                               f"it resumes from its checkpoint when admitted again")
    status.queue = queue
    status.phase = "Queued"
    kueue = f" ({workload.queue_reason}: {workload.queue_message})" if workload.queue_message else (
        f" ({workload.queue_reason})" if workload.queue_reason else "")
    status.message = (f"the {stage.name} Job {name} waits for admission in LocalQueue {queue.name} since "
                      f"{queue.since}{kueue}")
    _account(status, spec, stage, "Queued", since)


def _ledger_state(status: FineTuneJobStatus, stage: Stage) -> str | None:
    entry = next((e for e in (status.cost.stages if status.cost else []) if e.stage == stage.name), None)
    return entry.state if entry else None


def _admitted(status: FineTuneJobStatus, stage: Stage, name: str, queue_name: str, since: str,
              decision: Decision) -> None:
    entry = next(e for e in status.cost.stages if e.stage == stage.name)  # type: ignore[union-attr]
    queued_since = entry.since or since
    queue = status.queue or QueueStatus(name=queue_name, state="Queued", since=queued_since)
    waited = max((parse_time(since) - parse_time(queued_since)).total_seconds(), 0)
    status.queue = queue
    queue.state, queue.since, queue.reason, queue.message = "Admitted", since, None, None
    queue.admissions += 1
    decision.event("Normal", "Admitted", f"Kueue admitted the {stage.name} Job {name} from LocalQueue "
                                         f"{queue.name} after {waited:.0f}s")


RETRIED_REASONS = ("Preempted", "RegistryUnavailable")


def _report_running(status: FineTuneJobStatus, stage: Stage, workload: WorkloadState, decision: Decision) -> None:
    if workload.message and workload.message != status.message:
        status.message = workload.message
        decision.event("Warning", "WorkloadProblem", workload.message)
    if not workload.progress or stage is not TRAIN:
        return
    progress = TrainerProgress.model_validate(workload.progress)
    if progress.stage == "preparing-data" and not workload.message:
        status.message = "training: preparing the data (cleaning, splitting, tokenizing)"
    if progress.total_steps:
        if not workload.message:
            status.message = f"{stage.phase.lower()}: step {progress.step} of {progress.total_steps}"
        status.progress = Progress(
            step=progress.step, total_steps=progress.total_steps, steps=f"{progress.step}/{progress.total_steps}",
            epoch=round(progress.epoch, 3), loss=None if progress.loss is None else float(f"{progress.loss:.4g}"),
            tokens_per_second=None if progress.tokens_per_second is None else round(progress.tokens_per_second, 1),
            eta_seconds=None if progress.eta_seconds is None else round(progress.eta_seconds),
        )


# --- what each stage needs, and what it leaves in status ---

def stage_inputs(stage: Stage, spec: FineTuneJobSpec, status: FineTuneJobStatus) -> dict[str, Any]:
    """What a stage's workload needs from the earlier stages and from the decisions taken here."""
    training = status.training
    if stage is TRAIN and status.augmentation is not None and status.augmentation.uri:
        return {"synthetic_uri": status.augmentation.uri}
    if stage is EVALUATE and training is not None:
        return {"adapter_uri": training.adapter_uri, "test_uri": training.test_uri,
                "training_run_id": training.mlflow_run_id}
    if stage is EXPORT and training is not None:
        return {"adapter_uri": training.adapter_uri, "test_uri": training.test_uri}
    if stage is REGISTER and training is not None:
        return registration_inputs(spec, status)
    return {}


def registration_inputs(spec: FineTuneJobSpec, status: FineTuneJobStatus) -> dict[str, Any]:
    """Which aliases move: challenger when the gate passed; champion too when promotion is automatic
    and the candidate beat the champion (or there was none to beat)."""
    training, evaluation = status.training, status.evaluation
    assert training is not None
    passed = bool(evaluation and evaluation.gate and evaluation.gate.passed)
    beat_champion = evaluation is not None and (
        evaluation.baseline == "champion" or spec.evaluation.baseline == "auto")
    tags = {
        "tuneloop.dev/base-model": spec.base_model.display(),
        "tuneloop.dev/dataset-sha256": status.dataset.sha256 if status.dataset else "",
        "tuneloop.dev/method": spec.method.type,
        "tuneloop.dev/gate": "not-evaluated" if evaluation is None else ("passed" if passed else "failed"),
    }
    metrics: dict[str, float] = {}  # the validation loss is the training run's validation curve
    if evaluation is not None:
        tags["tuneloop.dev/baseline"] = evaluation.baseline + (
            f" v{evaluation.baseline_version}" if evaluation.baseline_version else "")
        if evaluation.gate:
            tags["tuneloop.dev/gate-message"] = evaluation.gate.message[:5000]
            tags["tuneloop.dev/gate-checks"] = "\n".join(evaluation.gate.checks)[:5000]
        for metric, score in evaluation.test.candidate.items():
            metrics[evaluation_metric(metric, "candidate")] = score.value
            tags[f"tuneloop.dev/eval-{metric}"] = f"{score.value:.4f} [{score.low:.4f}, {score.high:.4f}]"
        for metric, score in evaluation.test.baseline.items():
            metrics[evaluation_metric(metric, "baseline")] = score.value
    exports = [exported.to_wire() for exported in exports_to_register(status)]
    return {
        "adapter_uri": training.adapter_uri, "training_run_id": training.mlflow_run_id,
        "records_uri": evaluation.records_uri if evaluation else None, "exports": exports,
        "tags": tags, "metrics": metrics, "job_status": status.to_wire(),
        "set_challenger": passed,
        "set_champion": passed and spec.registry.promotion == "auto" and beat_champion,
        "expected_champion": evaluation.baseline_version if evaluation else None,
    }


def exports_to_register(status: FineTuneJobStatus) -> list[ExportedFile]:
    """The exports registered with the version: all of them, but a GGUF file that failed its check."""
    export = status.export
    if export is None:
        return []
    failed_check = export.agreement is not None and not export.agreement.passed
    return [exported for exported in export.files if not (exported.kind == "gguf" and failed_check)]


def _record_data_check(status: FineTuneJobStatus, spec: FineTuneJobSpec, raw: dict[str, Any],
                       decision: Decision, generation: int | None, now: str) -> str:
    result = DataCheckResult.model_validate(raw)
    if result.dataset is None or result.report is None:
        raise ValueError("the data check reported success without its report")
    status.dataset, status.cleaning, status.data_report = result.dataset, result.cleaning, result.report
    return _data_summary(result.dataset, result.report)


def _data_summary(dataset: DatasetStats, report: DataReportSummary) -> str:
    truncated = (f"{report.truncated_rows:,} of {report.training_rows:,} training rows longer than maxSeqLength "
                 f"{report.max_seq_length} (cut)" if report.truncated_rows else
                 f"no training row longer than maxSeqLength {report.max_seq_length}")
    return (f"{dataset.rows:,} {dataset.format} rows read: {report.training_rows:,} to train on, "
            f"{dataset.validation_rows:,} to validate, {dataset.test_rows:,} to test, {dataset.train_tokens:,} tokens; "
            f"{_contamination_summary(dataset)}{truncated}; "
            f"about {report.estimated_steps:,} optimizer steps")


def _contamination_summary(dataset: DatasetStats) -> str:
    found = dataset.contamination
    if found is None or not found.contaminated:
        return ""
    return (f"{found.contaminated:,} training rows near test or regression rows "
            f"({'removed' if found.removed else 'kept: dataset.contamination.remove is false'}); ")


def _record_training(status: FineTuneJobStatus, spec: FineTuneJobSpec, raw: dict[str, Any],
                     decision: Decision, generation: int | None, now: str) -> str:
    result = TrainerResult.model_validate(raw)
    _record_result(status, result)
    if status.cost is not None:
        cost.training_efficiency(status.cost, result.tokens_per_second, getattr(result, "achieved_tflops", None),
                                 getattr(result, "mfu", None))
    return _summary(result)


def _record_evaluation(status: FineTuneJobStatus, spec: FineTuneJobSpec, raw: dict[str, Any],
                       decision: Decision, generation: int | None, now: str) -> str:
    result = EvaluatorResult.model_validate(raw)
    if result.test is None:
        raise ValueError("the evaluator reported success without test scores")
    primary = spec.evaluation.gate.primary_metric
    gate_result = gate.decide(result.tests, result.warnings)
    candidate, baseline = result.test.candidate.get(primary), result.test.baseline.get(primary)
    status.evaluation = EvaluationResults(
        baseline=result.baseline, baseline_version=result.baseline_version, primary_metric=primary,
        score=round(candidate.value, 4) if candidate else None,
        baseline_score=round(baseline.value, 4) if baseline else None,
        test=result.test, regression=result.regression, regressed_rows=result.regressed_rows,
        general=result.general, judge=result.judge,
        records_uri=result.records_path, gate=gate_result,
    )
    _price_improvement(status)
    status.conditions = set_condition(status.conditions, "GatePassed", "True" if gate_result.passed else "False",
                                      "Passed" if gate_result.passed else "BelowThreshold", gate_result.message,
                                      observed_generation=generation, now=now)
    decision.event("Normal" if gate_result.passed else "Warning",
                   "GatePassed" if gate_result.passed else "GateFailed", gate_result.message)
    return _evaluation_summary(status.evaluation)


def _price_improvement(status: FineTuneJobStatus) -> None:
    """GPU-hours (and money) per point of the gated metric, over the stages closed so far."""
    evaluation = status.evaluation
    if status.cost is None or evaluation is None:
        return
    candidate = evaluation.test.candidate.get(evaluation.primary_metric)
    baseline = evaluation.test.baseline.get(evaluation.primary_metric)
    if candidate is not None and baseline is not None:
        cost.improvement(status.cost, evaluation.primary_metric, candidate.value, baseline.value)


def _record_registration(status: FineTuneJobStatus, spec: FineTuneJobSpec, raw: dict[str, Any],
                         decision: Decision, generation: int | None, now: str) -> str:
    result = RegisterResult.model_validate(raw)
    if not (result.model_name and result.version and result.uri):
        raise ValueError("the registry reported success without a model version")
    status.registry = RegistryResults(model_name=result.model_name, version=result.version, uri=result.uri,
                                      aliases=result.aliases, run_id=result.run_id,
                                      exports={exported.kind: exported.uri for exported in result.exports} or None)
    if any(c.type == "RegistryUnavailable" for c in status.conditions):
        status.conditions = set_condition(status.conditions, "RegistryUnavailable", "False", "Reachable",
                                          "registered once MLflow was reachable again",
                                          observed_generation=generation, now=now)
    aliases = f" (aliases: {', '.join(result.aliases)})" if result.aliases else " (no alias moved)"
    note = f"; {result.message}" if result.message else ""
    return f"registered {result.uri}{aliases}{note}"


def _record_augmentation(status: FineTuneJobStatus, spec: FineTuneJobSpec, raw: dict[str, Any],
                         decision: Decision, generation: int | None, now: str) -> str:
    result = AugmentResult.model_validate(raw)
    if result.stats is None:
        raise ValueError("the augment stage reported success without its counts")
    stats = result.stats.model_copy(update={"uri": result.synthetic_path, "seconds": result.seconds})
    stats.summary = stats.describe()
    status.augmentation = stats
    if stats.wanted and stats.accepted < stats.wanted:
        decision.event("Warning", "FewerSyntheticRows", f"{stats.summary}: training goes on with what was kept")
    return stats.summary


def _record_export(status: FineTuneJobStatus, spec: FineTuneJobSpec, raw: dict[str, Any],
                   decision: Decision, generation: int | None, now: str) -> str:
    result = ExportResult.model_validate(raw)
    if not result.files:
        raise ValueError("the export stage reported success without a file")
    export = ExportResults(files=result.files, agreement=result.agreement, seconds=result.seconds)
    export.summary = export.describe()
    status.export = export
    if export.agreement is not None and not export.agreement.passed:
        decision.event("Warning", "GgufDisagrees", f"{export.summary}: the GGUF file is not registered")
    return export.summary


RECORDERS = {VALIDATE.name: _record_data_check, AUGMENT.name: _record_augmentation, TRAIN.name: _record_training,
             EVALUATE.name: _record_evaluation, EXPORT.name: _record_export, REGISTER.name: _record_registration}


def _note_spec_change(status: FineTuneJobStatus, spec: FineTuneJobSpec, generation: int | None, now: str,
                      decision: Decision) -> None:
    """A spec changed after the job started is not applied: the job finishes with the spec it accepted.
    spec.suspend is the exception: a change of it alone is the generation the job now runs with.

    Restarting training silently would throw work away; to train with the new spec, create a new
    FineTuneJob (or delete and re-create this one).
    """
    if generation is None or status.observed_generation is None or generation <= status.observed_generation:
        return
    if status.spec_digest is not None and status.spec_digest == spec_digest(spec):
        status.observed_generation = generation
        return
    message = (f"spec changed (generation {generation}) after the job started with generation "
               f"{status.observed_generation}; nothing is restarted and workloads already launched keep the spec "
               f"they started with: create a new FineTuneJob to train with the new spec")
    previous = next((c for c in status.conditions if c.type == "SpecChangeIgnored"), None)
    if previous is None or previous.message != message:
        decision.event("Warning", "SpecChangeIgnored", message)
    status.conditions = set_condition(status.conditions, "SpecChangeIgnored", "True", "StartedWithEarlierSpec",
                                      message, observed_generation=generation, now=now)


def _evaluation_summary(evaluation: EvaluationResults) -> str:
    metric = evaluation.primary_metric
    candidate = evaluation.test.candidate.get(metric)
    baseline = evaluation.test.baseline.get(metric)
    parts = [f"{metric} on {evaluation.test.examples} test examples:"]
    if candidate:
        parts.append(f"candidate {candidate.value:.3f} [{candidate.low:.3f}, {candidate.high:.3f}]")
    if baseline:
        parts.append(f"vs {evaluation.baseline} {baseline.value:.3f} [{baseline.low:.3f}, {baseline.high:.3f}]")
    return " ".join(parts) + ("; gate passed" if evaluation.gate and evaluation.gate.passed else "; gate failed")


def _final_summary(status: FineTuneJobStatus) -> str:
    parts = []
    if status.training:
        parts.append(f"validation loss {status.training.validation_loss_before:.4f} -> "
                     f"{status.training.validation_loss_after:.4f}")
    if status.evaluation:
        parts.append(_evaluation_summary(status.evaluation))
    if status.registry:
        parts.append(f"registered {status.registry.uri}"
                     + (f" ({', '.join(status.registry.aliases)})" if status.registry.aliases else "")
                     + (f" with {' and '.join(sorted(status.registry.exports))}" if status.registry.exports else ""))
    return "; ".join(parts)


def _summary(result: TrainerResult) -> str:
    summary = (f"validation loss {result.validation_loss_before:.4f} -> {result.validation_loss_after:.4f} "
               f"in {result.steps} steps")
    return summary + (f"; {result.preference.summary()}" if result.preference else "")


def _record_result(status: FineTuneJobStatus, result: TrainerResult) -> None:
    status.dataset = result.dataset
    status.cleaning = result.cleaning
    status.training = TrainingResults(
        validation_loss_before=result.validation_loss_before,
        validation_loss_after=result.validation_loss_after,
        train_loss=result.train_loss,
        steps=result.steps,
        tokens_per_second=round(result.tokens_per_second or 0.0, 1),
        seconds=round(result.seconds or 0.0, 1),
        adapter_uri=result.adapter_path,
        test_uri=result.test_path,
        resumed_from_step=result.resumed_from_step,
        stopped_early=result.stopped_early,
        best_step=result.best_step,
        mlflow_run_id=result.mlflow_run_id,
        preference=result.preference,
    )
    if status.progress is None:  # it finished before any progress was read: the columns still show its end
        status.progress = Progress(loss=float(f"{result.train_loss:.4g}"))
    status.progress.step = status.progress.total_steps = result.steps
    status.progress.steps = f"{result.steps}/{result.steps}"
    status.progress.eta_seconds = 0
