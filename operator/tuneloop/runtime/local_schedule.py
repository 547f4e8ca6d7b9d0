"""One cycle of a FineTuneSchedule on this machine: `tuneloop run SCHEDULE --local --once`.

The same steps as on a cluster, driven by the same decisions (reconcile.finetuneschedule): ask
the feedback service how many corrections are new, snapshot them with the snapshot workload (a
subprocess, as the trainer is), run the resulting FineTuneJob with the local runtime (evaluation
against the champion in the work folder's MLflow, the gate, registration), and keep the schedule's
status (the watermark above all) in the work folder for the next cycle.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tuneloop import clock
from tuneloop.api.finetunejob import FineTuneJob, FineTuneJobStatus
from tuneloop.api.finetunejob import parse_manifest as parse_job
from tuneloop.api.finetuneschedule import FineTuneSchedule, FineTuneScheduleStatus, ScheduleRun
from tuneloop.api.workloads import SnapshotWorkload
from tuneloop.reconcile.finetuneschedule import (
    CreateJob,
    Decision,
    JobView,
    Observed,
    SnapshotState,
    advance_run,
    snapshot_name,
    start_run,
)
from tuneloop.runtime.feedback_client import FeedbackUnavailable, feedback_stats
from tuneloop.runtime.local import LocalRuntime, resolve_path
from tuneloop.runtime.schedule_manifests import TOKEN_ENV


@dataclass
class CycleOutcome:
    run: ScheduleRun
    job: FineTuneJob | None = None
    job_status: FineTuneJobStatus | None = None


class LocalSchedule:
    def __init__(self, schedule: FineTuneSchedule, runtime: LocalRuntime, on_event: Callable[[Any], None]):
        self.schedule, self.runtime, self.on_event = schedule, runtime, on_event
        self.folder = runtime.workdir / "schedules" / schedule.metadata.name
        self.status_path = self.folder / "status.json"

    def load_status(self) -> FineTuneScheduleStatus:
        if self.status_path.is_file():
            return FineTuneScheduleStatus.model_validate_json(self.status_path.read_text(encoding="utf-8"))
        return FineTuneScheduleStatus()

    def save_status(self, status: FineTuneScheduleStatus) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.status_path.write_text(json.dumps(status.to_wire(), indent=2), encoding="utf-8")

    def token(self) -> str | None:
        feedback = self.schedule.spec.feedback
        return os.environ.get(feedback.token_env or TOKEN_ENV) or None

    def carry_out(self, decision: Decision) -> tuple[FineTuneScheduleStatus, list]:
        for event in decision.events:
            self.on_event(event)
        self.save_status(decision.status)
        return decision.status, decision.actions

    def step(self, status: FineTuneScheduleStatus, observed: Observed) -> tuple[FineTuneScheduleStatus, list]:
        meta = self.schedule.metadata
        return self.carry_out(advance_run(meta.name, meta.namespace, None, self.schedule.spec, status, observed,
                                          clock.now()))

    def run_once(self) -> CycleOutcome:
        spec, meta = self.schedule.spec, self.schedule.metadata
        slot = clock.now().replace(second=0, microsecond=0)
        status = self.load_status()
        try:
            stats = asyncio.run(feedback_stats(spec.feedback.url, self.token(), spec.feedback.model,
                                               status.trained_up_to_id))
        except FeedbackUnavailable as error:
            raise RuntimeError(f"spec.feedback.url: {error}") from None
        status, _ = self.carry_out(start_run(meta.name, meta.namespace, None, spec, status, Observed(
            new_corrections=stats.new_rows, last_feedback_id=stats.last_id), slot))
        if status.run is None:  # too few corrections
            assert status.last_run is not None
            return CycleOutcome(status.last_run)
        name = status.run.job_name
        status, actions = self.step(status, Observed(snapshot=self.snapshot(name, status)))
        create = next((action for action in actions if isinstance(action, CreateJob)), None)
        if create is None:  # skipped or failed at the snapshot
            assert status.last_run is not None
            return CycleOutcome(status.last_run)
        job = parse_job(create.manifest)
        job_status = self.runtime.run(job)
        status, _ = self.step(status, Observed(jobs={name: job_view(job_status)}))
        assert status.last_run is not None
        return CycleOutcome(status.last_run, job, job_status)

    def snapshot(self, name: str, status: FineTuneScheduleStatus) -> SnapshotState:
        """The snapshot workload as a subprocess; its result, as a Job's would be observed."""
        spec, run = self.schedule.spec, status.run
        assert run is not None
        folder = self.folder / snapshot_name(name)
        folder.mkdir(parents=True, exist_ok=True)
        dataset = spec.job_template.spec.dataset
        workload = SnapshotWorkload(
            feedback_url=spec.feedback.url, token_env=spec.feedback.token_env or TOKEN_ENV, model=spec.feedback.model,
            after_id=status.trained_up_to_id, up_to_id=run.up_to_id,
            output_dir=str(resolve_path(spec.feedback.snapshot_uri, self.runtime.manifest_dir)
                           if spec.feedback.snapshot_uri else self.folder / "snapshots"),
            cleaning=dataset.cleaning, system_prompt=dataset.system_prompt)
        (folder / "workload.json").write_text(workload.model_dump_json(by_alias=True, indent=2), encoding="utf-8")
        (folder / "result.json").unlink(missing_ok=True)
        process = subprocess.run([sys.executable, "-m", "tuneloop_trainer.snapshot", "--spec",
                                  str(folder / "workload.json"), "--result", str(folder / "result.json")])
        result = json.loads((folder / "result.json").read_text()) if (folder / "result.json").is_file() else None
        if result is not None and result.get("path"):
            result["uri"] = result["path"]
        if process.returncode != 0 or result is None:
            return SnapshotState("Failed", result, f"the snapshot workload exited with code {process.returncode}")
        return SnapshotState("Succeeded", result)


def job_view(status: FineTuneJobStatus) -> JobView:
    evaluation, registry = status.evaluation, status.registry
    return JobView(phase=status.phase, message=status.message,
                   gate_passed=evaluation.gate.passed if evaluation and evaluation.gate else None,
                   version=registry.version if registry else None,
                   aliases=tuple(registry.aliases) if registry else (),
                   score=evaluation.score if evaluation else None,
                   baseline_score=evaluation.baseline_score if evaluation else None)
