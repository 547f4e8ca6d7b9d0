"""`tuneloop list`, `tuneloop status [RUN]`, `tuneloop logs [RUN]`: the local runs in a work folder.

A run is a folder `<workdir>/<job name>/<spec hash>/` with the job's `status.json` (see
runtime/local.py). RUN names one: the job name (its newest run), `name/hash`, or a spec hash (or
its first characters); without RUN, the newest run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError

from tuneloop.api.finetunejob import TERMINAL_PHASES, FineTuneJobStatus
from tuneloop.reconcile.finetunejob import STAGES
from tuneloop.report.summary_lines import aligned

EXAMPLES = {
    "list": ("tuneloop list", "tuneloop list --workdir /data/tuneloop-work"),
    "status": ("tuneloop status                    # the newest run",
               "tuneloop status acme-tickets       # that job's newest run",
               "tuneloop status acme-tickets/3f2a  # a run by its spec hash"),
    "logs": ("tuneloop logs                      # the newest run's latest workload",
             "tuneloop logs acme-tickets --stage train -f"),
}
STAGE_ORDER = tuple(stage.name for stage in STAGES)
FOLLOW_POLL_SECONDS = 0.5


class RunNotFound(Exception):
    pass


@dataclass(frozen=True)
class LocalRun:
    name: str
    spec_hash: str
    folder: Path
    status: FineTuneJobStatus
    updated: float

    def workloads(self) -> dict[str, Path]:
        """stage -> workload folder, for the stages that have started."""
        found = {}
        for folder in self.folder.iterdir():
            stage = folder.name.rsplit("-", 1)[-1]
            if folder.is_dir() and (folder / "workload.json").is_file() and stage in STAGE_ORDER:
                found[stage] = folder
        return dict(sorted(found.items(), key=lambda item: STAGE_ORDER.index(item[0])))


def find_runs(workdir: Path) -> list[LocalRun]:
    """Every run in the work folder, newest first."""
    runs = []
    for status_file in workdir.glob("*/*/status.json"):
        try:
            status = FineTuneJobStatus.model_validate_json(status_file.read_text(encoding="utf-8"))
        except (OSError, ValidationError):
            continue  # not a run of this version of Tuneloop; `list` shows what it can read
        folder = status_file.parent
        runs.append(LocalRun(folder.parent.name, folder.name, folder, status, status_file.stat().st_mtime))
    return sorted(runs, key=lambda run: run.updated, reverse=True)


def select_run(workdir: Path, wanted: str | None) -> LocalRun:
    runs = find_runs(workdir)
    if not runs:
        raise RunNotFound(f"no local runs in {workdir} (start one: tuneloop run FILE --local"
                          + ("" if workdir == Path("tuneloop-work") else f" --workdir {workdir}") + ")")
    if wanted is None:
        return runs[0]
    name, _, hash_prefix = wanted.partition("/")
    matches = ([run for run in runs if run.name == name and run.spec_hash.startswith(hash_prefix)] if hash_prefix
               else [run for run in runs if run.name == wanted] or
               [run for run in runs if run.spec_hash.startswith(wanted)])
    if not matches:
        known = ", ".join(sorted({f"{run.name}/{run.spec_hash}" for run in runs}))
        raise RunNotFound(f"no run {wanted!r} in {workdir}; there are: {known}")
    return matches[0]


def step_of(status: FineTuneJobStatus) -> str:
    if status.progress and status.progress.total_steps:
        return f"{status.progress.step}/{status.progress.total_steps}"
    if status.training:
        return f"{status.training.steps}/{status.training.steps}"  # finished before any progress was read
    return "-"


def gate_of(status: FineTuneJobStatus) -> str:
    gate = status.evaluation.gate if status.evaluation else None
    return "-" if gate is None else "passed" if gate.passed else "failed"


def command_list(args: argparse.Namespace) -> int:
    runs = find_runs(args.workdir)
    if not runs:
        print(f"no local runs in {args.workdir}")
        return 0
    rows = [("NAME", "SPEC HASH", "PHASE", "STEP", "GATE", "UPDATED")]
    rows += [(run.name, run.spec_hash, run.status.phase, step_of(run.status), gate_of(run.status),
              datetime.fromtimestamp(run.updated).strftime("%Y-%m-%d %H:%M:%S")) for run in runs]
    print("\n".join(aligned(rows)))
    return 0


def command_status(args: argparse.Namespace) -> int:
    from tuneloop.api.common import SpecError
    from tuneloop.api.finetunejob import parse_manifest
    from tuneloop.cli.terminal_report import print_evaluation, print_report
    from tuneloop.runtime.local import JOB_FILE, LocalRuntime

    try:
        run = select_run(args.workdir, args.run)
    except RunNotFound as error:
        print(error, file=sys.stderr)
        return 1
    try:
        job = parse_manifest(json.loads((run.folder / JOB_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError, SpecError):
        print(f"{run.name}/{run.spec_hash}: {run.status.phase}; {run.folder / JOB_FILE} is missing or unreadable "
              "(a run from before `tuneloop status`): run its manifest again to see the full report", file=sys.stderr)
        return 1
    runtime = LocalRuntime(workdir=args.workdir, manifest_dir=Path.cwd())
    result = runtime.read_result(job, "train") or {}
    print_report(job, run.status, result.get("previews", []))
    print_evaluation(job, run.status)
    if run.status.phase not in TERMINAL_PHASES:
        print(f"\n  still {run.status.phase} (or stopped there): tuneloop logs {run.name} -f")
    print(f"\n  work folder {run.folder.resolve()}")
    return 0


def finished(run_folder: Path) -> bool:
    """The run ended (a workload that died without a result ends it too)."""
    try:
        status = FineTuneJobStatus.model_validate_json((run_folder / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValidationError):
        return False
    return status.phase in TERMINAL_PHASES


def command_logs(args: argparse.Namespace) -> int:
    from tuneloop.runtime.workload_log import LOG_FILE

    try:
        run = select_run(args.workdir, args.run)
    except RunNotFound as error:
        print(error, file=sys.stderr)
        return 1
    workloads = run.workloads()
    if not workloads:
        print(f"{run.name}/{run.spec_hash}: no workload has started yet", file=sys.stderr)
        return 1
    if args.stage:
        if args.stage not in workloads:
            print(f"{run.name}/{run.spec_hash}: stage {args.stage!r} has not run (stages that did: "
                  f"{', '.join(workloads)})", file=sys.stderr)
            return 1
        folder = workloads[args.stage]
    else:
        folder = max(workloads.values(), key=lambda path: (path / LOG_FILE).stat().st_mtime
                     if (path / LOG_FILE).is_file() else 0)
    log_file = folder / LOG_FILE
    if not log_file.is_file():
        print(f"{folder}: no {LOG_FILE} (a run from before logs were kept)", file=sys.stderr)
        return 1
    try:
        with log_file.open("rb") as log:
            sys.stdout.buffer.write(log.read())
            sys.stdout.flush()
            while args.follow and not (folder / "result.json").is_file() and not finished(run.folder):
                time.sleep(FOLLOW_POLL_SECONDS)
                sys.stdout.buffer.write(log.read())
                sys.stdout.flush()
            sys.stdout.buffer.write(log.read())
    except KeyboardInterrupt:
        return 130
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    def workdir_option(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--workdir", type=Path, default=Path("tuneloop-work"),
                            help="the work folder of `tuneloop run --local` (default: %(default)s)")

    listing = commands.add_parser("list", help="the local runs in the work folder, newest first",
                                  description="The local runs in the work folder, newest first: job name, spec "
                                              "hash, phase, training step, gate, last update.")
    workdir_option(listing)
    listing.set_defaults(handler=command_list)
    run_help = "the job name (its newest run), NAME/HASH, or a spec hash (default: the newest run)"
    status = commands.add_parser("status", help="the report of a local run",
                                 description="The report `tuneloop run --local` printed at the end of a run.")
    status.add_argument("run", nargs="?", metavar="RUN", help=run_help)
    workdir_option(status)
    status.set_defaults(handler=command_status)
    logs = commands.add_parser("logs", help="the log of a local run's workload",
                               description="What a workload of a local run wrote (its log.txt).")
    logs.add_argument("run", nargs="?", metavar="RUN", help=run_help)
    logs.add_argument("--stage", choices=STAGE_ORDER, help="whose log (default: the workload that wrote last)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until the workload ends (Ctrl-C stops)")
    workdir_option(logs)
    logs.set_defaults(handler=command_logs)
