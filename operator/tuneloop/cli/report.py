"""`tuneloop report [RUN]`: the HTML report of a local run: built when missing or stale, its path printed."""

from __future__ import annotations

import argparse
import sys
import webbrowser
from pathlib import Path

from tuneloop.cli.local_runs import RunNotFound, select_run

EXAMPLES = {
    "report": ("tuneloop report                        # the newest run in ./tuneloop-work",
               "tuneloop report acme-tickets           # that job's newest run",
               "tuneloop report acme-tickets --open    # ... opened in a web browser",
               "tuneloop report tuneloop-work/acme-tickets/f0158f20d6e3   # the run in that job folder",
               "tuneloop report --workdir /data/runs --rebuild"),
}
DESCRIPTION = """\
Print the path of a local run's HTML report (loss curves, metric table with intervals, the gate's
decision, lineage, base vs tuned examples), building it first when it is missing or older than the
run's status. The report is one file with no outside references: copy it, mail it, open it offline.
"""


def find_run(run: str | None, workdir: Path) -> Path:
    """The job folder RUN names: a job folder's path, or what `tuneloop status` takes (see local_runs)."""
    if run is not None and (Path(run) / "status.json").is_file():
        return Path(run)
    return select_run(workdir, run).folder


def report_path(job_dir: Path, rebuild: bool = False, tracking_uri: str | None = None) -> Path:
    """The job folder's report.html, (re)built when missing, older than the job's status, or asked for."""
    from tuneloop.registry.run_report import collect
    from tuneloop.report import REPORT_FILE, write_report

    path = job_dir / REPORT_FILE
    status = job_dir / "status.json"
    if rebuild or not path.is_file() or path.stat().st_mtime < status.stat().st_mtime:
        path = write_report(collect(job_dir, tracking_uri=tracking_uri), job_dir)
    return path


def command_report(args: argparse.Namespace) -> int:
    from tuneloop.registry.run_report import RunReportError

    try:
        job_dir = find_run(args.run, args.workdir)
        path = report_path(job_dir.resolve(), rebuild=args.rebuild, tracking_uri=args.tracking_uri)
    except (RunNotFound, RunReportError, OSError) as error:
        print(f"tuneloop report: {error}", file=sys.stderr)
        return 1
    except ImportError as error:
        print(f"tuneloop report: {error.name} is not installed (pip install 'tuneloop[local]')", file=sys.stderr)
        return 1
    print(path)
    if args.open and not webbrowser.open(path.as_uri()):
        print("tuneloop report: no web browser found here; open the file above in one", file=sys.stderr)
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser(
        "report", help="the HTML report of a local run (loss, metrics, gate, base vs tuned examples)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    report.add_argument("run", nargs="?", metavar="RUN",
                        help="the job name (its newest run), NAME/HASH, a spec hash, or the path of a job folder "
                             "(default: the newest run)")
    report.add_argument("--workdir", type=Path, default=Path("tuneloop-work"),
                        help="work folder of `tuneloop run --local` (default: %(default)s)")
    report.add_argument("--open", action="store_true", help="open the report in a web browser")
    report.add_argument("--rebuild", action="store_true", help="build the report again even when it is up to date")
    report.add_argument("--tracking-uri", default=None,
                        help="MLflow to read the loss curves from (default: the one the run's trainer logged to)")
    report.set_defaults(handler=command_report)
