"""The FineTuneSchedule resource: reviewers' corrections become a new FineTuneJob on a schedule.

Shaped like a batch/v1 CronJob (schedule, timeZone, suspend, concurrencyPolicy,
startingDeadlineSeconds, history limits, a job template; status lastScheduleTime,
lastSuccessfulTime, active). Each due run takes the corrections the feedback service holds since
the last promoted run, snapshots them into a hashed JSONL file, and creates a FineTuneJob from the
template that trains on them with the template's own dataset replayed against forgetting. The
existing chain does the rest: evaluation against champion, gate, registration, alias move, and
the ModelDeployment following champion rolls the better adapter out.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter
from pydantic import Field, field_validator, model_validator

from tuneloop.api.common import (
    API_VERSION,
    Conditions,
    WireModel,
    validated,
    validated_manifest,
)
from tuneloop.api.crd import Kind, Printer
from tuneloop.api.evaluation import SecretKeyRef
from tuneloop.api.fields import EnvName, HttpUrl, LabelValue, Name, StorageUri, label_map
from tuneloop.api.finetunejob import KTO_BATCH_RULE, PAIRS_RULE, FineTuneJobSpec, ObjectMeta, cel

KIND = "FineTuneSchedule"
PLURAL = "finetuneschedules"
TOKEN_RULE = "give at most one of tokenSecret (cluster) or tokenEnv (local)"
CRON_FIELDS = "^[ \t]*[^ \t]+([ \t]+[^ \t]+){4}[ \t]*$"  # five fields; croniter checks what they say


class FeedbackSource(WireModel):
    """Where the corrections come from: the feedback service (`tuneloop feedback serve`)."""

    model_config = cel(("!(has(self.tokenSecret) && has(self.tokenEnv))", TOKEN_RULE))

    url: HttpUrl = Field(description="Base URL of the feedback service, e.g. http://tuneloop-feedback.tuneloop:8080.")
    model: Name = Field(description="Served model name whose corrections are used (the "
                                                 "ModelDeployment's name, as clients send it).")
    token_secret: SecretKeyRef | None = Field(None, description="Secret holding the service's bearer token.")
    token_env: EnvName | None = Field(None, description="Environment variable holding the token (local runs).")
    min_new_corrections: int = Field(50, ge=1, le=10**7, description="Skip a run with fewer new corrections than this.")
    snapshot_uri: StorageUri | None = Field(None, description="Folder the snapshots are written to, each file named by "
                                                       "its content hash: pvc://claim/path on a cluster; unset in "
                                                       "a local run: the work folder.")


    @model_validator(mode="after")
    def _one_token(self) -> "FeedbackSource":
        if self.token_secret is not None and self.token_env is not None:
            raise ValueError(TOKEN_RULE)
        return self


Labels = label_map(LabelValue, "Labels of each run's FineTuneJob.")
Annotations = label_map(Annotated[str, Field(max_length=65536)], "Annotations of each run's FineTuneJob.")


class JobTemplateMeta(WireModel):
    """Metadata of each run's FineTuneJob."""

    labels: Labels
    annotations: Annotations


class JobTemplateSpec(FineTuneJobSpec):
    """A FineTuneJob spec whose dataset.preferences each run sets from its snapshot (the pairs for dpo and
    sft-then-dpo, the KTO rows for kto), so a template with such an objective needs none of its own."""

    # FineTuneJobSpec's CEL rules but the one that asks for dataset.preferences
    model_config = cel(PAIRS_RULE, KTO_BATCH_RULE)

    @model_validator(mode="after")
    def _preference_data(self) -> "JobTemplateSpec":
        return self


class JobTemplate(WireModel):
    metadata: JobTemplateMeta = Field(default_factory=JobTemplateMeta, description="Labels and annotations of "
                                                                                "each run's FineTuneJob.")
    spec: JobTemplateSpec = Field(description="The FineTuneJob each run creates. Its dataset is the base "
                                              "dataset: the run trains on the new corrections and replays "
                                              "this dataset at replayFraction; for a dpo, kto or sft-then-dpo "
                                              "objective its dataset.preferences is the snapshot's pairs or "
                                              "KTO rows.")


class FineTuneScheduleSpec(WireModel):
    schedule: str = Field(max_length=128, json_schema_extra={"pattern": CRON_FIELDS},
                          description="Cron expression (5 fields), e.g. '0 2 * * *' for 02:00 every day.")
    time_zone: str | None = Field(None, max_length=64, description="IANA time zone of the schedule, e.g. Europe/Amsterdam; "
                                                    "unset: UTC.")
    suspend: bool = Field(False, description="No new runs while true; a running one carries on.")
    concurrency_policy: Literal["Forbid", "Replace"] = Field(
        "Forbid", description="Forbid: a due run is skipped while the last one still runs. Replace: the "
                              "running FineTuneJob is deleted and the new run starts.")
    starting_deadline_seconds: int | None = Field(
        None, ge=1, le=2_678_400, description="A run missed (operator down) by more than this is skipped; unset: the most "
                                "recent missed run starts on return, once.")
    successful_jobs_history_limit: int = Field(3, ge=0, le=100, description="Succeeded FineTuneJobs kept.")
    failed_jobs_history_limit: int = Field(1, ge=0, le=100, description="Failed FineTuneJobs kept.")
    feedback: FeedbackSource
    replay_fraction: float = Field(0.8, gt=0, le=0.95, description=(
        "Share of the training mix taken from the template's dataset: each run trains a new adapter from the "
        "base model, so the base data must be there as well as the corrections."))
    job_template: JobTemplate = Field(description="The FineTuneJob each run creates.")

    @field_validator("schedule")
    @classmethod
    def _cron(cls, schedule: str) -> str:
        if len(schedule.split()) != 5 or not croniter.is_valid(schedule):
            raise ValueError(f"{schedule!r} is not a 5-field cron expression (minute hour day month weekday)")
        try:
            croniter(schedule, datetime(2000, 1, 1)).get_next(datetime)
        except CroniterBadDateError:
            raise ValueError(f"{schedule!r} never fires: no date has that day of the month in those months "
                             "(e.g. 30 February)") from None
        return schedule

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, zone: str | None) -> str | None:
        if zone is not None:
            try:
                ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"{zone!r} is not an IANA time zone") from None
        return zone


class SnapshotInfo(WireModel):
    """The feedback a run trains on, frozen into hashed files: the corrections as SFT rows, and the
    preference pairs and KTO rows made from the same feedback."""

    uri: str | None = Field(None, description="The JSONL file; unset when there were no rows.")
    sha256: str | None = Field(None, description="Hash of the file (names it; tags the registered version).")
    rows: int = Field(0, description="Corrections in the file, after cleaning.")
    pairs_uri: str | None = Field(None, description=(
        "JSONL file of preference pairs (messages, chosen = the correction, rejected = the served answer): "
        "dataset.preferences of a dpo or sft-then-dpo run; unset when there were none."))
    pairs_rows: int = Field(0, description="Pairs in the pairs file: corrections kept by cleaning that changed "
                                           "the answer.")
    pairs_sha256: str | None = Field(None, description="Hash of the pairs file (names it).")
    kto_uri: str | None = Field(None, description=(
        "JSONL file of KTO rows (messages, completion, label) from verdicts, ratings and corrections: "
        "dataset.preferences of a kto run; unset when there were none."))
    kto_rows: int = Field(0, description="Rows in the KTO file.")
    kto_sha256: str | None = Field(None, description="Hash of the KTO file (names it).")
    after_id: int = Field(0, description="Feedback rows after this id were taken.")
    up_to_id: int = Field(0, description="Feedback rows up to and including this id were taken.")


RunOutcome = Literal["Running", "Promoted", "NotPromoted", "Failed", "Skipped", "Replaced"]


class ScheduleRun(WireModel):
    """One run of the schedule, finished or skipped."""

    scheduled_time: str = Field(description="The slot it ran for (RFC 3339).")
    job_name: str | None = Field(None, description="Its FineTuneJob; unset when none was created.")
    outcome: RunOutcome = Field(description="Promoted, NotPromoted (gate failed or champion kept), Failed, "
                                            "Skipped or Replaced.")
    message: str = Field("", description="How it ended.")
    snapshot: SnapshotInfo | None = Field(None, description="The corrections it trained on.")
    gate_passed: bool | None = Field(None, description="The FineTuneJob's gate verdict; unset: not evaluated.")
    version: str | None = Field(None, description="Registered model version of the run's adapter.")
    score: float | None = Field(None, description="The adapter's primary metric on the test set.")
    baseline_score: float | None = Field(None, description="The baseline's primary metric on the test set.")


class RunStep(WireModel):
    """The run in progress: which step, so that a restarted operator carries on from there."""

    step: Literal["Snapshot", "Training"] = Field(description="Snapshot (freezing the corrections) or Training "
                                                           "(its FineTuneJob runs).")
    scheduled_time: str = Field(description="The slot it runs for (RFC 3339).")
    job_name: str = Field(description="Its FineTuneJob (and, with -snapshot, the snapshot Job).")
    new_corrections: int = Field(0, description="New corrections the feedback service reported.")
    up_to_id: int | None = Field(None, description="The last feedback id the run takes.")
    snapshot: SnapshotInfo | None = Field(None, description="The snapshot, once taken.")


class FineTuneScheduleStatus(WireModel):
    last_schedule_time: str | None = Field(None, description="The latest slot the schedule acted on (run or skip).")
    last_successful_time: str | None = Field(None, description="When a run last ended with a FineTuneJob "
                                                               "that succeeded.")
    active: list[str] = Field(default_factory=list, description="FineTuneJobs of runs in progress.")
    run: RunStep | None = None
    trained_up_to_id: int = Field(0, description="Feedback rows up to this id reached a promoted adapter: the "
                                                 "next snapshot starts after it.")
    last_run: ScheduleRun | None = Field(None, description="The latest run, finished or skipped.")
    history: list[ScheduleRun] = Field(default_factory=list, description="The last runs, newest last.")
    next_schedule_time: str | None = Field(None, description="The next slot; unset while suspended.")
    message: str = Field("", description="What the schedule is doing, or why it cannot.")
    conditions: Conditions
    observed_generation: int | None = Field(None, description="metadata.generation this status was computed from.")


class FineTuneSchedule(WireModel):
    api_version: Literal["tuneloop.dev/v1alpha1"] = API_VERSION
    kind: Literal["FineTuneSchedule"] = KIND
    metadata: ObjectMeta
    spec: FineTuneScheduleSpec
    status: FineTuneScheduleStatus = Field(default_factory=FineTuneScheduleStatus)


def parse_spec(raw: Any) -> FineTuneScheduleSpec:
    """Validate a raw spec; SpecError lists every problem with its field path (`spec.x.y: ...`)."""
    return validated(FineTuneScheduleSpec, raw, "spec")


def parse_manifest(raw: Any) -> FineTuneSchedule:
    return validated_manifest(FineTuneSchedule, raw)


CRD = Kind(
    kind=KIND,
    plural=PLURAL,
    short_names=("ftsched",),
    spec=FineTuneScheduleSpec,
    status=FineTuneScheduleStatus,
    description="Retrains on reviewers' corrections on a schedule, CronJob-shaped; each run is a FineTuneJob.",
    printers=(
        Printer("Schedule", "string", ".spec.schedule"),
        Printer("Suspend", "boolean", ".spec.suspend"),
        Printer("Active", "string", ".status.active[0]", "FineTuneJob of the run in progress"),
        Printer("Last", "string", ".status.lastRun.outcome", "Outcome of the last run"),
        Printer("Version", "string", ".status.lastRun.version", "Model version of the last run"),
        Printer("Last Schedule", "date", ".status.lastScheduleTime"),
        Printer("Age", "date", ".metadata.creationTimestamp"),
        Printer("Score", "number", ".status.lastRun.score", "Primary metric of the last run's adapter", priority=1),
        Printer("Next", "string", ".status.nextScheduleTime", "Next slot (RFC 3339)", priority=1),
        Printer("Message", "string", ".status.message", priority=1),
    ),
)
