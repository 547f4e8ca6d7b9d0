r"""The FineTuneSchedule as a pure function: (spec, status, observed world, now) -> Decision.

    a slot is due (cron, time zone; missed slots while the operator was down: the latest, once)
        suspended                                  -> nothing starts
        the last run still going, Forbid           -> this slot is skipped
        the last run still going, Replace          -> its FineTuneJob is deleted, this run starts
        fewer than minNewCorrections new rows      -> Skipped
        else: Snapshot (a workload: the rows (trainedUpToId, upToId], cleaned, hashed JSONL: the
              corrections as SFT rows, preference pairs, KTO rows)
              -> Training (a FineTuneJob from the template: the snapshot as its dataset, the
                 template's dataset replayed; for a dpo or sft-then-dpo objective the pairs, for
                 kto the KTO rows as its dataset.preferences; none of them: Skipped)
              -> Promoted | NotPromoted | Failed

trainedUpToId only moves when a run's adapter became champion: corrections the serving model
has not learned stay in the next snapshot. Runtimes carry out the actions.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal
from zoneinfo import ZoneInfo

from croniter import croniter

from tuneloop.api.common import API_VERSION, fitted, get_condition, parse_time, rfc3339, set_condition
from tuneloop.api.finetuneschedule import (
    FineTuneSchedule,
    FineTuneScheduleSpec,
    FineTuneScheduleStatus,
    RunOutcome,
    RunStep,
    ScheduleRun,
    SnapshotInfo,
)
from tuneloop.api.finetunejob import KIND as FINETUNEJOB_KIND
from tuneloop.api.finetunejob import PAIR_OBJECTIVES, PREFERENCE_OBJECTIVES
from tuneloop.reconcile import core
from tuneloop.reconcile.refusals import Refusal

HISTORY = 10
SCHEDULE_LABEL = "tuneloop.dev/schedule"
SCHEDULED_TIME_ANNOTATION = "tuneloop.dev/scheduled-time"


@dataclass(frozen=True)
class JobView:
    """A FineTuneJob the schedule created, as the runtime saw it."""

    phase: str
    created: str = ""
    message: str = ""
    gate_passed: bool | None = None
    version: str | None = None
    aliases: tuple[str, ...] = ()
    score: float | None = None
    baseline_score: float | None = None


@dataclass(frozen=True)
class SnapshotState:
    state: Literal["Absent", "Running", "Succeeded", "Failed"]
    result: dict[str, Any] | None = None  # SnapshotResult's wire form
    message: str = ""


@dataclass(frozen=True)
class Observed:
    jobs: dict[str, JobView] = field(default_factory=dict)
    new_corrections: int | None = None  # rows after trainedUpToId; None: not asked, or not answered
    last_feedback_id: int | None = None
    feedback_problem: str | None = None
    snapshot: SnapshotState | None = None
    spec_problem: str | None = None  # what makes a valid spec impossible here (no snapshot folder on a cluster)
    # The feedback service's address or token Secret may not be used (the Secret is looked at only when
    # the service is asked: new_corrections is set once both have served).
    refusal: Refusal | None = None


@dataclass(frozen=True)
class LaunchSnapshot:
    name: str  # the snapshot workload's name (<job>-snapshot)
    after_id: int
    up_to_id: int


@dataclass(frozen=True)
class CreateJob:
    name: str
    manifest: dict[str, Any]


@dataclass(frozen=True)
class DeleteJob:
    name: str


Action = LaunchSnapshot | CreateJob | DeleteJob
Decision = core.Decision[FineTuneScheduleStatus, Action]
Resource = core.Resource[FineTuneSchedule, FineTuneScheduleStatus]


def job_name(schedule: str, slot: datetime) -> str:
    """Like a CronJob's Jobs: the schedule's name and the slot in minutes since the epoch."""
    return f"{schedule}-{int(slot.timestamp()) // 60}"


def snapshot_name(job: str) -> str:
    return f"{job}-snapshot"


def _zone(spec: FineTuneScheduleSpec) -> ZoneInfo:
    return ZoneInfo(spec.time_zone or "UTC")


def latest_slot(spec: FineTuneScheduleSpec, now: datetime) -> datetime:
    """The latest cron slot at or before now."""
    local_now = now.astimezone(_zone(spec))
    if croniter.match(spec.schedule, local_now.replace(second=0, microsecond=0)):
        return local_now.replace(second=0, microsecond=0).astimezone(timezone.utc)
    return croniter(spec.schedule, local_now).get_prev(datetime).astimezone(timezone.utc)


def next_slot(spec: FineTuneScheduleSpec, after: datetime) -> datetime:
    return croniter(spec.schedule, after.astimezone(_zone(spec))).get_next(datetime).astimezone(timezone.utc)


def due_slot(spec: FineTuneScheduleSpec, status: FineTuneScheduleStatus, created: str | None,
             now: datetime) -> datetime | None:
    """The slot to act on now, if any: the latest slot after the last one acted on (or after the
    schedule's creation). Several missed slots give one run, for the latest of them."""
    slot = latest_slot(spec, now)
    since = status.last_schedule_time or created
    if since is not None and slot <= parse_time(since):
        return None
    return slot


def snapshot_info(result: dict[str, Any], up_to_id: int) -> SnapshotInfo:
    """SnapshotInfo from a snapshot's result (SnapshotResult's wire form; the runtime has put storage URIs
    in `uri`, or in the files' `path`)."""
    pairs, kto = result.get("pairs") or {}, result.get("kto") or {}
    return SnapshotInfo(uri=result.get("uri") or result.get("path"), sha256=result.get("sha256"),
                        rows=result.get("rows", 0), after_id=result.get("afterId", 0),
                        up_to_id=result.get("upToId", up_to_id),
                        pairs_uri=pairs.get("uri") or pairs.get("path"), pairs_rows=pairs.get("rows", 0),
                        pairs_sha256=pairs.get("sha256"),
                        kto_uri=kto.get("uri") or kto.get("path"), kto_rows=kto.get("rows", 0),
                        kto_sha256=kto.get("sha256"))


def preference_data(objective: str, snapshot: SnapshotInfo) -> dict[str, str] | None:
    """The run's dataset.preferences: the snapshot's pairs for dpo and sft-then-dpo, its KTO rows for
    kto, none for sft (or when the snapshot has no such rows)."""
    if objective in PAIR_OBJECTIVES and snapshot.pairs_uri and snapshot.pairs_rows:
        return {"uri": snapshot.pairs_uri, "format": "pairs"}
    if objective == "kto" and snapshot.kto_uri and snapshot.kto_rows:
        return {"uri": snapshot.kto_uri, "format": "kto"}
    return None


def job_manifest(name: str, namespace: str, schedule_name: str, schedule_uid: str | None,
                 spec: FineTuneScheduleSpec, snapshot_uri: str, slot: datetime,
                 preferences: dict[str, str] | None = None) -> dict[str, Any]:
    """The run's FineTuneJob: the template, training on the snapshot with the template's dataset replayed
    (and on the snapshot's preference rows, for a preference objective), writing to a folder of its own
    under the template's output."""
    job_spec = copy.deepcopy(spec.job_template.spec.to_wire())
    base = job_spec["dataset"]
    job_spec["dataset"] = {**{k: v for k, v in base.items() if k not in ("uri", "format", "replay", "preferences")},
                           "uri": snapshot_uri, "format": "messages",
                           "replay": {"uri": base["uri"], "format": base.get("format", "auto"),
                                      "fraction": spec.replay_fraction}}
    if preferences is not None:
        job_spec["dataset"]["preferences"] = preferences
    if (job_spec.get("output") or {}).get("uri"):  # every run its own folder: checkpoints must not mix
        job_spec["output"]["uri"] = f"{job_spec['output']['uri'].rstrip('/')}/{name}"
    metadata: dict[str, Any] = {
        "name": name, "namespace": namespace,
        "labels": {**spec.job_template.metadata.labels, SCHEDULE_LABEL: fitted(schedule_name)},
        "annotations": {**spec.job_template.metadata.annotations, SCHEDULED_TIME_ANNOTATION: rfc3339(slot)},
    }
    if schedule_uid:
        metadata["ownerReferences"] = [{"apiVersion": API_VERSION, "kind": "FineTuneSchedule", "name": schedule_name,
                                        "uid": schedule_uid, "controller": True, "blockOwnerDeletion": True}]
    return {"apiVersion": API_VERSION, "kind": FINETUNEJOB_KIND, "metadata": metadata, "spec": job_spec}


class Pass:
    def __init__(self, name: str, namespace: str, uid: str | None, spec: FineTuneScheduleSpec,
                 status: FineTuneScheduleStatus, observed: Observed, now: datetime, created: str | None = None):
        self.name, self.namespace, self.uid, self.created = name, namespace, uid, created
        self.spec, self.status, self.observed, self.now = spec, status, observed, now
        self.decision = Decision(status)
        self.act, self.event = self.decision.act, self.decision.event

    def record(self, run: ScheduleRun) -> None:
        self.status.last_run = run
        self.status.history = [*self.status.history, run][-HISTORY:]

    def finish(self, outcome: RunOutcome, message: str, job: JobView | None = None) -> None:
        run = self.status.run
        assert run is not None
        record = ScheduleRun(scheduled_time=run.scheduled_time, job_name=run.job_name if run.step == "Training"
                             else None, outcome=outcome, message=message, snapshot=run.snapshot)
        if job is not None:
            record.gate_passed, record.version = job.gate_passed, job.version
            record.score, record.baseline_score = job.score, job.baseline_score
        self.record(record)
        self.status.run, self.status.active = None, []
        if outcome == "Promoted" and run.up_to_id is not None:
            self.status.trained_up_to_id = run.up_to_id
        if outcome in ("Promoted", "NotPromoted"):
            self.status.last_successful_time = rfc3339(self.now)
        self.event("Warning" if outcome == "Failed" else "Normal", f"Run{outcome}", message)
        self.status.message = message

    # --- the run in progress ------------------------------------------------------------------
    def continue_run(self) -> None:
        run = self.status.run
        assert run is not None
        if run.step == "Snapshot":
            self.snapshot_step(run)
        else:
            self.training_step(run)

    def snapshot_step(self, run: RunStep) -> None:
        snapshot = self.observed.snapshot or SnapshotState("Absent")
        if snapshot.state in ("Absent", "Running"):
            self.act(LaunchSnapshot(snapshot_name(run.job_name), self.status.trained_up_to_id, run.up_to_id or 0))
            self.status.message = f"run {run.job_name}: snapshotting {run.new_corrections} new corrections"
            return
        if snapshot.state == "Failed" or not (snapshot.result or {}).get("succeeded"):
            self.finish("Failed", f"run {run.job_name}: the snapshot failed: "
                                  f"{snapshot.message or (snapshot.result or {}).get('message', '')}".rstrip(": "))
            return
        run.snapshot = snapshot_info(snapshot.result or {}, run.up_to_id or 0)
        run.up_to_id = run.snapshot.up_to_id
        if run.snapshot.rows < self.spec.feedback.min_new_corrections:
            self.finish("Skipped", f"run {run.job_name}: {run.snapshot.rows} corrections left after cleaning, "
                                   f"fewer than minNewCorrections {self.spec.feedback.min_new_corrections}")
            return
        objective = self.spec.job_template.spec.method.objective
        preferences = preference_data(objective, run.snapshot)
        if objective in PREFERENCE_OBJECTIVES and preferences is None:
            wanted = ("preference pairs (a correction that changed the served answer)" if objective in PAIR_OBJECTIVES
                      else "KTO rows (a verdict, a rating other than 3, or a correction)")
            self.finish("Skipped", f"run {run.job_name}: the template's objective {objective} learns from {wanted}, "
                                   f"and the snapshot of feedback ids {run.snapshot.after_id + 1}.."
                                   f"{run.snapshot.up_to_id} has none after cleaning")
            return
        slot = parse_time(run.scheduled_time)
        self.act(CreateJob(run.job_name, job_manifest(run.job_name, self.namespace, self.name, self.uid,
                                                      self.spec, run.snapshot.uri or "", slot, preferences)))
        run.step = "Training"
        self.status.active = [run.job_name]
        trained_on = f"{run.snapshot.rows} corrections"
        if preferences is not None:
            extra = (f"{run.snapshot.pairs_rows} preference pairs" if preferences["format"] == "pairs"
                     else f"{run.snapshot.kto_rows} KTO rows")
            trained_on += f" and {extra} ({objective})"
        message = (f"run {run.job_name}: FineTuneJob created on {trained_on} "
                   f"(sha256 {(run.snapshot.sha256 or '')[:12]})")
        self.event("Normal", "RunStarted", message)
        self.status.message = message

    def training_step(self, run: RunStep) -> None:
        job = self.observed.jobs.get(run.job_name)
        if job is None:
            self.finish("Failed", f"run {run.job_name}: its FineTuneJob was deleted")
        elif job.phase == "Succeeded":
            promoted = "champion" in job.aliases
            gate = "gate passed" if job.gate_passed else "gate failed" if job.gate_passed is False else "no gate"
            version = f"version {job.version}" if job.version else "not registered"
            outcome: RunOutcome = "Promoted" if promoted else "NotPromoted"
            self.finish(outcome, f"run {run.job_name}: {gate}, {version}"
                                 + (", now champion" if promoted else ", champion unchanged"), job)
        elif job.phase == "Failed":
            self.finish("Failed", f"run {run.job_name}: FineTuneJob failed: {job.message}", job)
        else:
            self.status.message = f"run {run.job_name}: FineTuneJob {job.phase}"

    # --- the schedule -------------------------------------------------------------------------------
    def schedule(self) -> None:
        slot = due_slot(self.spec, self.status, self.created, self.now)
        upcoming = next_slot(self.spec, self.now)
        self.status.next_schedule_time = None if self.spec.suspend else rfc3339(upcoming)
        self.decision.wake_in((upcoming - self.now).total_seconds())
        if self.spec.suspend:
            if self.status.run is None:
                self.status.message = "suspended"
            return
        if slot is None:
            return
        deadline = self.spec.starting_deadline_seconds
        late = (self.now - slot).total_seconds()
        if deadline is not None and late > deadline:
            self.status.last_schedule_time = rfc3339(slot)
            self.record(ScheduleRun(scheduled_time=rfc3339(slot), outcome="Skipped",
                                    message=f"missed by {late:.0f}s, more than startingDeadlineSeconds {deadline}"))
            self.event("Warning", "RunMissed", self.status.last_run.message)
            return
        if self.status.run is not None:
            if self.spec.concurrency_policy == "Forbid":
                self.status.last_schedule_time = rfc3339(slot)
                message = f"slot {rfc3339(slot)} skipped: run {self.status.run.job_name} is still going (Forbid)"
                self.record(ScheduleRun(scheduled_time=rfc3339(slot), outcome="Skipped", message=message))
                self.event("Normal", "RunSkipped", message)
                return
            replaced = self.status.run.job_name
            self.act(DeleteJob(replaced))
            self.finish("Replaced", f"run {replaced} replaced by the run of {rfc3339(slot)} (Replace)")
        self.maybe_start(slot)

    def maybe_start(self, slot: datetime) -> None:
        new, last_id = self.observed.new_corrections, self.observed.last_feedback_id
        if new is None or last_id is None:
            problem = self.observed.feedback_problem or "no answer"
            self.status.message = f"slot {rfc3339(slot)} waits for the feedback service: {problem}"
            return  # the slot stays due: the next pass asks again
        self.status.last_schedule_time = rfc3339(slot)
        minimum = self.spec.feedback.min_new_corrections
        if new < minimum:
            message = f"slot {rfc3339(slot)}: {new} new corrections, fewer than minNewCorrections {minimum}"
            self.record(ScheduleRun(scheduled_time=rfc3339(slot), outcome="Skipped", message=message))
            self.event("Normal", "RunSkipped", message)
            self.status.message = message
            return
        name = job_name(self.name, slot)
        self.status.run = RunStep(step="Snapshot", scheduled_time=rfc3339(slot), job_name=name,
                                  new_corrections=new, up_to_id=last_id)
        self.act(LaunchSnapshot(snapshot_name(name), self.status.trained_up_to_id, last_id))
        self.status.message = f"run {name}: snapshotting {new} new corrections"
        self.event("Normal", "RunDue", self.status.message)

    def prune_history(self) -> None:
        """Keep the newest successfulJobsHistoryLimit succeeded and failedJobsHistoryLimit failed FineTuneJobs."""
        active = set(self.status.active)
        for phase, limit in (("Succeeded", self.spec.successful_jobs_history_limit),
                             ("Failed", self.spec.failed_jobs_history_limit)):
            finished = sorted((view.created, name) for name, view in self.observed.jobs.items()
                              if view.phase == phase and name not in active)
            for _, name in finished[:max(len(finished) - limit, 0)]:
                self.act(DeleteJob(name))

    def run(self) -> Decision:
        if self.status.run is not None:
            self.continue_run()
        self.schedule()
        self.prune_history()
        return self.decision


def reconcile(resource: Resource, observed: Observed, now: datetime) -> Decision:
    """One pass; the returned status is a new object (the resource's is not changed)."""
    decision = _pass(resource, observed, now)
    suspended = resource.spec is not None and resource.spec.suspend
    decision.status.conditions = core.with_readiness(decision.status.conditions,
                                                     *readiness(decision.status, suspended),
                                                     generation=resource.generation, now=rfc3339(now))
    return decision


def readiness(status: FineTuneScheduleStatus, suspended: bool) -> tuple[core.Readiness, str, str]:
    """Ready while the schedule can run (a run in progress included: a schedule never finishes, and
    each run's FineTuneJob reports its own readiness). Stalled when its spec is refused or the
    feedback service may not be used."""
    for type in ("SpecValid", "Permitted"):
        condition = get_condition(status.conditions, type)
        if condition is not None and condition.status == "False":
            return "Stalled", condition.reason, status.message
    reason = "RunInProgress" if status.run else "Suspended" if suspended else "Scheduled"
    return "Ready", reason, status.message


def _pass(resource: Resource, observed: Observed, now: datetime) -> Decision:
    status, generation = resource.status.model_copy(deep=True), resource.generation
    decision = Decision(status)
    error = str(resource.spec_error) if resource.spec_error is not None else observed.spec_problem
    if error:
        message = f"invalid spec: {error}"
        if status.message != message:
            decision.event("Warning", "InvalidSpec", error)
        status.message = message
        status.conditions = set_condition(status.conditions, "SpecValid", "False", "InvalidSpec", error,
                                          observed_generation=generation, now=rfc3339(now))
        status.observed_generation = generation  # seen, and refused: not still in progress
        return decision
    status.observed_generation = generation
    if get_condition(status.conditions, "SpecValid") is not None:  # the spec was fixed
        status.conditions = set_condition(status.conditions, "SpecValid", "True", "Valid",
                                          observed_generation=generation, now=rfc3339(now))
    refused = next((c for c in status.conditions if c.type == "Permitted" and c.status == "False"), None)
    if observed.refusal:
        reason, message = observed.refusal.reason, observed.refusal.message
        if not (refused and refused.message == message):
            decision.event("Warning", reason, message)
        status.message = f"no run starts: {message}"
        status.conditions = set_condition(status.conditions, "Permitted", "False", reason, message,
                                          observed_generation=generation, now=rfc3339(now))
        return decision
    if refused and observed.new_corrections is not None:  # the service answered with the token: both may be used
        status.conditions = set_condition(status.conditions, "Permitted", "True", "Allowed",
                                          "the feedback service's address and token may be used",
                                          observed_generation=generation, now=rfc3339(now))
    return Pass(resource.name, resource.namespace, resource.uid, resource.spec, status, observed, now,
                resource.created).run()


def needs_feedback_count(resource: Resource, now: datetime) -> bool:
    """Whether this pass may start a run, so the runtime should ask the feedback service for the count."""
    spec, status = resource.spec, resource.status
    if spec is None or spec.suspend:
        return False
    slot = due_slot(spec, status, resource.created, now)
    if slot is None:
        return False
    return status.run is None or spec.concurrency_policy == "Replace"



def advance_run(name: str, namespace: str, uid: str | None, spec: FineTuneScheduleSpec,
                status: FineTuneScheduleStatus, observed: Observed, now: datetime) -> Decision:
    """Only the run in progress, no slots: what `tuneloop run SCHEDULE --local --once` steps through."""
    status = status.model_copy(deep=True)
    step = Pass(name, namespace, uid, spec, status, observed, now)
    if status.run is not None:
        step.continue_run()
    return step.decision


def start_run(name: str, namespace: str, uid: str | None, spec: FineTuneScheduleSpec,
              status: FineTuneScheduleStatus, observed: Observed, slot: datetime) -> Decision:
    """A run for `slot` now, whatever the cron says (`--once`): Skipped with too few corrections,
    else its snapshot is launched."""
    status = status.model_copy(deep=True)
    step = Pass(name, namespace, uid, spec, status, observed, slot)
    step.maybe_start(slot)
    return step.decision
