"""Run FineTuneJobs on this machine: workloads are subprocesses in a work folder.

The work folder of a job is `<workdir>/<name>/<spec hash>/`; it holds the job's manifest and status
and one folder per workload (spec, progress, result, output, log.txt). Running the same manifest
again picks up where the last run stopped: a finished workload is not run twice (the run says which
it reused), a succeeded job just reports. `tuneloop list|status|logs` read these folders.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from tuneloop import catalog, clock
from tuneloop.api.common import rfc3339
from tuneloop.api.finetunejob import TERMINAL_PHASES, FineTuneJob, FineTuneJobStatus
from tuneloop.api.workloads import (
    AugmentResult,
    AugmentWorkload,
    EvaluatorResult,
    EvaluatorWorkload,
    Tracking,
    TrainerWorkload,
    write_result,
)
from tuneloop.runtime.local_judge import LocalJudgeError, serving_local_judge
from tuneloop.offline_env import OFFLINE_ENV
from tuneloop.storage_uris import file_uri_path
from tuneloop.registry.lineage import lineage_tags
from tuneloop.runtime import stage_workloads
from tuneloop.reconcile.core import EmitEvent, resource_of
from tuneloop.reconcile.finetunejob import (
    STAGES,
    LaunchWorkload,
    Observed,
    ReconcileContext,
    WorkloadState,
    reconcile,
    workload_name,
)
from tuneloop.runtime.manifests import CPU_TRAINER_ENV
from tuneloop.runtime.workload_log import LOG_FILE, WorkloadLog

log = logging.getLogger("tuneloop.local")

WORKLOAD_PROGRAMS = {"validate": "tuneloop_trainer.check_data", "augment": "tuneloop_trainer.augment",
                     "train": "tuneloop_trainer", "evaluate": "tuneloop_evaluator",
                     "export": "tuneloop_trainer.export", "register": "tuneloop_evaluator.register"}
EXPERIMENT = "tuneloop"
JOB_FILE = "job.json"
JUDGE_LOG_FILE = "judge-log.txt"
TEACHER_LOG_FILE = "teacher-log.txt"

LOCAL_CONTEXT = ReconcileContext(mode="local", catalog=frozenset(catalog.LOCAL_CATALOG))


def spec_hash(job: FineTuneJob) -> str:
    return hashlib.sha256(json.dumps(job.spec.to_wire(), sort_keys=True).encode()).hexdigest()[:12]


def resolve_path(uri: str, base: Path) -> Path:
    """file:///abs/path, or a plain path relative to the manifest's folder."""
    path = file_uri_path(uri) if uri.startswith("file://") else Path(uri)
    return path if path.is_absolute() else (base / path).resolve()


def local_mlflow(workdir: Path) -> tuple[str, str]:
    """The local run's MLflow: a SQLite store and an artifact folder in the work folder."""
    folder = workdir / "mlflow"
    return f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri()


def prepare_tracking(tracking_uri: str, artifact_uri: str | None) -> str:
    """The local run's experiment, created with its artifact folder in the work folder; its id."""
    from tuneloop.registry.experiments import prepare_tracking as prepare_experiment

    return prepare_experiment(tracking_uri, EXPERIMENT, artifact_uri)


def local_job_uid(job: FineTuneJob) -> str:
    return job.metadata.uid or f"local-{job.metadata.name}-{spec_hash(job)}"


def terminated_with_parent() -> None:
    """In a workload's process before it starts: SIGTERM when the process that launched it dies, even
    by SIGKILL, so a killed `tuneloop run` leaves no trainer behind (a trainer checkpoints on SIGTERM)."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class LocalRuntime:
    workdir: Path
    manifest_dir: Path
    model_cache: Path | None = None
    tracking_uri: str | None = None
    on_event: Callable[[EmitEvent], None] = lambda event: None
    on_note: Callable[[str], None] = lambda line: print(line, flush=True)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, WorkloadLog] = field(default_factory=dict)
    services: ExitStack = field(default_factory=ExitStack)  # what a workload needs while it runs: a local judge
    registry_retry_seconds: float = 30

    def job_dir(self, job: FineTuneJob) -> Path:
        return self.workdir / job.metadata.name / spec_hash(job)

    # -- status ---------------------------------------------------------------------------

    def load_status(self, job: FineTuneJob) -> FineTuneJobStatus:
        """The saved status of an earlier run of the same spec.

        A failed run starts over from Pending, but its workload folders stay: the trainer resumes
        from its newest complete checkpoint when the data is unchanged.
        """
        status_file = self.job_dir(job) / "status.json"
        if status_file.is_file():
            status = FineTuneJobStatus.model_validate_json(status_file.read_text(encoding="utf-8"))
            if status.phase != "Failed":
                return status
        return FineTuneJobStatus()

    def save_status(self, job: FineTuneJob, status: FineTuneJobStatus) -> None:
        folder = self.job_dir(job)
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / ".status.json.tmp"
        temporary.write_text(status.model_dump_json(by_alias=True, exclude_none=True, indent=2), encoding="utf-8")
        os.replace(temporary, folder / "status.json")

    def save_job(self, job: FineTuneJob) -> None:
        """The manifest beside its status, for `tuneloop status` to report on the run later."""
        folder = self.job_dir(job)
        folder.mkdir(parents=True, exist_ok=True)
        manifest = {key: value for key, value in job.to_wire().items() if key != "status"}
        (folder / JOB_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")

    # -- workloads ------------------------------------------------------------------------

    def workload_dir(self, job: FineTuneJob, name: str) -> Path:
        return self.job_dir(job) / name

    def read_result(self, job: FineTuneJob, stage: str) -> dict | None:
        return _read_json(self.workload_dir(job, workload_name(job.metadata.name, stage, job.spec.resources.nodes)) / "result.json")

    def context(self) -> ReconcileContext:
        return dataclasses.replace(LOCAL_CONTEXT, registry_configured=bool(self.tracking_uri))

    def observe(self, job: FineTuneJob) -> Observed:
        workloads = {}
        root = self.job_dir(job)
        if root.is_dir():
            for folder in root.iterdir():
                if folder.is_dir() and (folder / "workload.json").is_file():
                    workloads[folder.name] = self._observe_one(folder)
        return Observed(context=self.context(), workloads=workloads)

    def _observe_one(self, folder: Path) -> WorkloadState:
        process = self.processes.get(folder.name)
        if process is not None and process.poll() is None:
            progress = _read_json(folder / "progress.json")
            return WorkloadState("Running", progress=progress)
        result = _read_json(folder / "result.json")
        if result is not None:
            for key in ("adapterPath", "testPath", "recordsPath", "syntheticPath"):
                if result.get(key):
                    result[key] = Path(result[key]).resolve().as_uri()
            for exported in result.get("files") or []:  # the export stage's
                exported["uri"] = Path(exported["uri"]).resolve().as_uri()
            finished = rfc3339(datetime.fromtimestamp((folder / "result.json").stat().st_mtime, timezone.utc))
            return WorkloadState("Succeeded" if result.get("succeeded") else "Failed", result=result, since=finished)
        if process is not None:
            return WorkloadState("Failed", message=f"the workload exited with code {process.returncode} "
                                                   f"and wrote no result; its log is above and in "
                                                   f"{folder / LOG_FILE}")
        return WorkloadState("Absent")

    def launch(self, job: FineTuneJob, action: LaunchWorkload) -> None:
        if action.name in self.processes and self.processes[action.name].poll() is None:
            return
        folder = self.workload_dir(job, action.name)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in ("result.json", "progress.json"):
            (folder / stale).unlink(missing_ok=True)
        workload = self.workload(job, action, folder)
        if isinstance(workload, EvaluatorWorkload) and workload.evaluation.judge and workload.evaluation.judge.local:
            try:
                # A copy: the job's own spec (whose hash names the run's folder) keeps what the user wrote.
                workload.evaluation = workload.evaluation.model_copy(
                    update={"judge": self.start_local_judge(workload, folder)})
            except LocalJudgeError as error:  # the evaluation fails as it would with an unreachable judge
                (folder / "workload.json").write_text(workload.model_dump_json(by_alias=True, indent=2),
                                                      encoding="utf-8")
                write_result(EvaluatorResult(succeeded=False, reason="JudgeUnavailable", message=str(error)),
                             folder / "result.json")
                return
        if isinstance(workload, AugmentWorkload) and workload.dataset.augment and workload.dataset.augment.teacher.local:
            try:
                teacher = self.start_local_teacher(workload, folder)
                workload.dataset = workload.dataset.model_copy(update={
                    "augment": workload.dataset.augment.model_copy(update={"teacher": teacher})})
            except LocalJudgeError as error:
                (folder / "workload.json").write_text(workload.model_dump_json(by_alias=True, indent=2),
                                                      encoding="utf-8")
                write_result(AugmentResult(succeeded=False, reason="TeacherUnavailable", message=str(error)),
                             folder / "result.json")
                return
        (folder / "workload.json").write_text(workload.model_dump_json(by_alias=True, indent=2), encoding="utf-8")
        command = [sys.executable, "-m", WORKLOAD_PROGRAMS[action.stage], "--spec", str(folder / "workload.json"),
                   "--result", str(folder / "result.json")]
        if action.stage == "train":
            command += ["--progress", str(folder / "progress.json")]
        env = {**os.environ, **OFFLINE_ENV, "PYTHONUNBUFFERED": "1"}
        if action.stage == "train" and sys.platform.startswith("linux") and not os.path.exists("/dev/nvidiactl"):
            env = {**CPU_TRAINER_ENV, **env}
        process = subprocess.Popen(command, env=env, preexec_fn=terminated_with_parent,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.processes[action.name] = process
        self.logs[action.name] = WorkloadLog(process, folder / LOG_FILE, f"{action.stage} ({action.name})")

    def workload(self, job: FineTuneJob, action: LaunchWorkload, folder: Path):
        def resolve(uri: str) -> str:
            return str(resolve_path(uri, self.manifest_dir))

        if action.stage == "validate":
            return stage_workloads.data_check_workload(job, self.trainer_workload(job, folder))
        if action.stage == "augment":
            teacher = job.spec.dataset.augment.teacher if job.spec.dataset.augment else None
            return stage_workloads.augment_workload(job, self.trainer_workload(job, folder),
                                                    teacher.api_key_env if teacher else None)
        if action.stage == "train":
            synthetic = action.inputs.get("synthetic_uri")
            return self.trainer_workload(job, folder, resolve(synthetic) if synthetic else None)
        if action.stage == "export":
            return stage_workloads.export_workload(job, action.inputs, model_path=str(self.model_path(job)),
                                                   resolve=resolve, output_dir=str(folder / "output"))
        if action.stage == "evaluate":
            general = job.spec.evaluation.general_set
            return stage_workloads.evaluator_workload(
                job, action.inputs, model_path=str(self.model_path(job)), resolve=resolve,
                output_dir=str(folder / "output"), tracking=self.tracking(job),
                general_set_path=resolve(general.uri) if general else None)
        if action.stage == "register":
            tracking = self.tracking(job)
            if tracking is None:
                raise RuntimeError("registration needs an MLflow tracking URI")
            return stage_workloads.register_workload(
                job, action.inputs, resolve=resolve, tracking=tracking,
                job_uid=local_job_uid(job),
                retry_seconds=self.registry_retry_seconds)
        raise ValueError(f"unknown stage {action.stage!r}")

    def start_local_judge(self, workload: EvaluatorWorkload, folder: Path):
        """`transformers serve` with the judge model, until the run ends; the judge spec as the evaluator
        then asks it. One CPU thread: the evaluator keeps the other cores busy, and more threads contend."""
        self.on_note(f"evaluate: starting the local judge ({workload.evaluation.judge.model}, "
                     f"transformers serve) at {workload.evaluation.judge.url}; its log: {folder / JUDGE_LOG_FILE}")
        return self.services.enter_context(serving_local_judge(
            workload.evaluation.judge, folder / JUDGE_LOG_FILE, self.model_cache, threads=1))

    def start_local_teacher(self, workload: AugmentWorkload, folder: Path):
        """`transformers serve` with the teacher model while the augment stage runs (it is the only workload
        then, so the server gets the cores)."""
        teacher = workload.dataset.augment.teacher
        self.on_note(f"augment: starting the local teacher ({teacher.model}, transformers serve) at {teacher.url}; "
                     f"its log: {folder / TEACHER_LOG_FILE}")
        return self.services.enter_context(serving_local_judge(
            teacher, folder / TEACHER_LOG_FILE, self.model_cache, field="dataset.augment.teacher"))

    def model_path(self, job: FineTuneJob) -> Path:
        spec = job.spec
        if spec.base_model.name is not None:
            return catalog.materialize(catalog.lookup(spec.base_model.name), self.model_cache)
        return resolve_path(spec.base_model.uri or "", self.manifest_dir)

    def tracking(self, job: FineTuneJob) -> Tracking | None:
        if not self.tracking_uri:
            return None
        return Tracking(tracking_uri=self.tracking_uri, experiment=EXPERIMENT, run_name=job.metadata.name,
                        tags=lineage_tags(job, local_job_uid(job)))

    def trainer_workload(self, job: FineTuneJob, folder: Path, synthetic_path: str | None = None) -> TrainerWorkload:
        output = job.spec.output.uri
        return stage_workloads.trainer_workload(
            job, model_path=str(self.model_path(job)),
            input_file=lambda uri, _name: str(resolve_path(uri, self.manifest_dir)),
            output_dir=str(resolve_path(output, self.manifest_dir) if output else folder / "output"),
            tracking=self.tracking(job), synthetic_path=synthetic_path)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
        for workload_log in self.logs.values():
            workload_log.close()
        self.services.close()

    def note_reused(self, job: FineTuneJob, observed: Observed) -> None:
        """One line per stage whose finished result an earlier run left and this run takes as it is."""
        for stage in STAGES:
            name = workload_name(job.metadata.name, stage.name, job.spec.resources.nodes)
            state = observed.workloads.get(name)
            if state is not None and state.phase == "Succeeded" and name not in self.processes:
                self.on_note(f"{stage.name}: reusing the finished result from {self.workload_dir(job, name)}")

    # -- the loop -------------------------------------------------------------------------

    def run(self, job: FineTuneJob, poll_seconds: float = 1.0) -> FineTuneJobStatus:
        """Reconcile until the job reaches Succeeded or Failed."""
        status = self.load_status(job)
        self.save_job(job)
        self.note_reused(job, self.observe(job))
        try:
            while True:
                observed = self.observe(job)
                for name, process in self.processes.items():
                    if process.poll() is not None and name in self.logs:
                        self.logs.pop(name).close()  # its last lines come out before the events about it
                decision = reconcile(resource_of(job, status), observed, clock.now())
                for action in decision.actions:
                    if isinstance(action, LaunchWorkload):
                        self.launch(job, action)
                    elif (process := self.processes.get(action.name)) is not None and process.poll() is None:
                        process.terminate()  # StopWorkload: the trainer checkpoints on SIGTERM
                for event in decision.events:
                    self.on_event(event)
                status = decision.status
                self.save_status(job, status)
                if status.phase in TERMINAL_PHASES:
                    return status
                time.sleep(poll_seconds)
        finally:
            self.stop_all()


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None

