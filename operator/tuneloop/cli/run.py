"""`tuneloop run FILE --local`: a FineTuneJob to the end on this machine, or one FineTuneSchedule cycle."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from tuneloop.api import finetuneschedule
from tuneloop.api.finetunejob import FineTuneJob
from tuneloop.cli.terminal_report import print_evaluation, print_report
from tuneloop.cli.validate import load_job, validate_document
from tuneloop.manifest_files import ManifestError, load_documents


def command_run(args: argparse.Namespace) -> int:
    if not args.local:
        print("tuneloop run: only --local is supported here; on a cluster, kubectl apply the manifest",
              file=sys.stderr)
        return 2
    from tuneloop.catalog import CatalogError
    from tuneloop.registry.experiments import ui_path
    from tuneloop.runtime.local import LocalRuntime, local_mlflow, prepare_tracking

    try:
        kinds = {document.get("kind") for document in load_documents(args.file)}
        if finetuneschedule.KIND in kinds:
            return run_schedule_once(args)
        job = load_job(args.file)
    except ManifestError as error:
        print(error, file=sys.stderr)
        return 2

    def on_event(event: Any) -> None:
        print(f"[{event.type}] {event.reason}: {event.message}", flush=True)

    workdir = args.workdir.resolve()
    tracking_uri, artifact_uri = args.tracking_uri, None
    if not tracking_uri:
        tracking_uri, artifact_uri = local_mlflow(workdir)
        (workdir / "mlflow").mkdir(parents=True, exist_ok=True)
    runtime = LocalRuntime(workdir=workdir, manifest_dir=args.file.resolve().parent,
                           on_event=on_event, tracking_uri=tracking_uri)
    if args.fresh:
        import shutil

        shutil.rmtree(runtime.job_dir(job), ignore_errors=True)
    try:
        experiment_id = prepare_tracking(tracking_uri, artifact_uri)
    except Exception as error:  # MLflow's errors have no common base worth naming here
        print(f"MLflow at {tracking_uri} cannot be used: {error}", file=sys.stderr)
        return 1
    try:
        status = runtime.run(job)
    except CatalogError as error:
        print(f"{args.file}: spec.baseModel: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to pick up where it stopped", file=sys.stderr)
        return 130
    result = runtime.read_result(job, "train") or {}
    print_report(job, status, result.get("previews", []))
    print_evaluation(job, status)
    print(f"\n  work folder {runtime.job_dir(job)}")
    if artifact_uri:
        print(f"  MLflow UI   mlflow ui --backend-store-uri {tracking_uri} --default-artifact-root {artifact_uri}")
        run_id = status.training.mlflow_run_id if status.training else None
        print(f"              then open http://127.0.0.1:5000/{ui_path(experiment_id, run_id)}")
    if status.training is not None:
        write_run_report(job, runtime.job_dir(job), tracking_uri)
    return 0 if status.phase == "Succeeded" else 1


def write_run_report(job: FineTuneJob, job_dir: Path, tracking_uri: str | None) -> None:
    """The HTML report beside the job's status; a report that cannot be written costs a warning, not the run."""
    from tuneloop.registry.run_report import RunReportError, collect
    from tuneloop.report import write_report

    try:
        path = write_report(collect(job_dir, job=job, tracking_uri=tracking_uri), job_dir)
    except (RunReportError, OSError) as error:
        print(f"  report      not written: {error}", file=sys.stderr)
        return
    except ImportError as error:
        print(f"  report      not written: {error.name} is not installed (pip install 'tuneloop[local]')",
              file=sys.stderr)
        return
    print(f"  report      {path}")


def run_schedule_once(args: argparse.Namespace) -> int:
    """One cycle of a FineTuneSchedule, now: snapshot the new corrections, train, judge, register."""
    from tuneloop.runtime.local import LocalRuntime, local_mlflow, prepare_tracking
    from tuneloop.runtime.local_schedule import LocalSchedule

    if not args.once:
        print(f"{args.file}: a FineTuneSchedule runs locally one cycle at a time: add --once "
              "(on a cluster the operator keeps its schedule)", file=sys.stderr)
        return 2
    schedules = [doc for doc in load_documents(args.file) if doc.get("kind") == finetuneschedule.KIND]
    problems = validate_document(schedules[0], local=False) if len(schedules) == 1 else [
        f"expected exactly one FineTuneSchedule, found {len(schedules)}"]
    if problems:
        for problem in problems:
            print(f"{args.file}: {problem}", file=sys.stderr)
        return 2
    schedule = finetuneschedule.parse_manifest(schedules[0])
    workdir = args.workdir.resolve()
    tracking_uri, artifact_uri = args.tracking_uri, None
    if not tracking_uri:
        tracking_uri, artifact_uri = local_mlflow(workdir)
        (workdir / "mlflow").mkdir(parents=True, exist_ok=True)
    prepare_tracking(tracking_uri, artifact_uri)
    runtime = LocalRuntime(workdir=workdir, manifest_dir=args.file.resolve().parent,
                           on_event=lambda event: print(f"[{event.type}] {event.reason}: {event.message}", flush=True),
                           tracking_uri=tracking_uri)
    cycle = LocalSchedule(schedule, runtime, runtime.on_event)
    try:
        outcome = cycle.run_once()
    except RuntimeError as error:
        print(f"{args.file}: {error}", file=sys.stderr)
        return 1
    if outcome.job is not None and outcome.job_status is not None:
        result = runtime.read_result(outcome.job, "train") or {}
        print_report(outcome.job, outcome.job_status, result.get("previews", []))
        print_evaluation(outcome.job, outcome.job_status)
        if outcome.job_status.training is not None:
            write_run_report(outcome.job, runtime.job_dir(outcome.job), tracking_uri)
    run = outcome.run
    print(f"\nFineTuneSchedule {schedule.metadata.name}: {run.outcome}: {run.message}")
    if run.snapshot and run.snapshot.sha256:
        print(f"  snapshot   {run.snapshot.rows} corrections, rows {run.snapshot.after_id + 1}..{run.snapshot.up_to_id},"
              f" sha256 {run.snapshot.sha256[:16]} ({run.snapshot.uri})")
        if run.snapshot.pairs_rows or run.snapshot.kto_rows:
            print(f"             {run.snapshot.pairs_rows} preference pairs, {run.snapshot.kto_rows} KTO rows")
    if run.score is not None:
        print(f"  on the corrected cases: new version {run.score:.3f} vs champion {run.baseline_score:.3f}"
              if run.baseline_score is not None else f"  on the corrected cases: new version {run.score:.3f}")
    print(f"  schedule status {cycle.status_path}")
    return 1 if run.outcome == "Failed" else 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser("run", help="run a FineTuneJob manifest")
    run.add_argument("file", type=Path, help="a FineTuneJob manifest (or a FineTuneSchedule with --once)")
    run.add_argument("--local", action="store_true", help="run on this machine with subprocesses")
    run.add_argument("--workdir", type=Path, default=Path("tuneloop-work"), help="work folder (default: %(default)s)")
    run.add_argument("--fresh", action="store_true", help="discard an earlier run of the same spec")
    run.add_argument("--once", action="store_true",
                     help="a FineTuneSchedule: run one cycle now (snapshot, train, evaluate, register)")
    run.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                     help="MLflow tracking URI for training metrics (default: $MLFLOW_TRACKING_URI)")
    run.set_defaults(handler=command_run)
