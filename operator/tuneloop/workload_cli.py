"""The command line that workloads share: `--spec SPEC.json --result RESULT.json [--termination-log PATH]`,
a spec checked before anything runs, and a result written in every case (the older workloads spell
the same steps out in their own `main`)."""

from __future__ import annotations

import argparse
import json
import logging
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError

from tuneloop.api.common import WireModel
from tuneloop.api.workloads import write_result


Spec = TypeVar("Spec", bound=WireModel)
Result = TypeVar("Result", bound=WireModel)


def workload_parser(prog: str, description: str | None, spec_type: type[WireModel],
                    result_type: type[WireModel]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, required=True, help=f"{spec_type.__name__} JSON")
    parser.add_argument("--result", type=Path, required=True, help=f"where the {result_type.__name__} JSON goes")
    parser.add_argument("--termination-log", type=Path,
                        help="also write the result, compacted to 4 KiB, here (a pod's /dev/termination-log)")
    return parser


def run_workload(spec_path: Path, spec_type: type[Spec], run: Callable[[Spec], Result],
                 failure: Callable[[str, str], Result], crash_reason: str) -> Result:
    """`run` on the checked spec; a spec that does not parse fails as InvalidWorkload, and anything
    `run` did not expect fails as `crash_reason` with the exception named."""
    try:
        spec = spec_type.model_validate(json.loads(spec_path.read_text(encoding="utf-8")))
    except (OSError, ValueError, ValidationError) as error:
        return failure("InvalidWorkload", f"{spec_path}: {error}")
    try:
        return run(spec)
    except Exception as error:  # the result must say why, whatever broke
        traceback.print_exc()
        return failure(crash_reason, f"{type(error).__name__}: {error}")


def report(result: Result, log: logging.Logger, result_path: Path, termination_log: Path | None) -> None:
    """Logs the outcome (results have succeeded, reason, message) and writes the result files."""
    if result.succeeded:
        log.info("%s", result.message)
    else:
        log.error("%s: %s", result.reason, result.message)
    write_result(result, result_path, termination_log)


def workload_main(argv: list[str] | None, prog: str, description: str | None, spec_type: type[Spec],
                  result_type: type[Result], run: Callable[[Spec], Result], failure: Callable[[str, str], Result],
                  crash_reason: str, log: logging.Logger) -> int:
    """A workload program's whole `main`: parse the command line, go offline and quiet, run, report, and exit 0
    when the result succeeded, 1 when not."""
    from tuneloop.offline_env import go_offline
    from tuneloop.workload_output import quiet_libraries

    args = workload_parser(prog, description, spec_type, result_type).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    go_offline()
    quiet_libraries()
    result = run_workload(args.spec, spec_type, run, failure, crash_reason)
    report(result, log, args.result, args.termination_log)
    return 0 if result.succeeded else 1
