"""python -m tuneloop_trainer.check_data --spec SPEC.json --result RESULT.json [--termination-log PATH]

A FineTuneJob's first stage: on a CPU, with the base model's tokenizer and none of its weights, read
every row as the trainer will (the preference rows too, for a dpo, kto or sft-then-dpo objective), and
say what training will see (rows per format, token lengths, truncation, steps) or every bad row by file
and line. It prints the report, and writes the result file in every case. Exit status 0: the data is
good; 1: it is not, or the spec is unreadable.
"""

from __future__ import annotations

import logging
import sys
import time

from tuneloop.api.workloads import DataCheckResult, DataCheckWorkload, write_result
from tuneloop.offline_env import go_offline
from tuneloop.workload_output import quiet_libraries
from tuneloop.workload_cli import report, run_workload, workload_parser

log = logging.getLogger("tuneloop_trainer.check_data")


def check(workload: DataCheckWorkload) -> DataCheckResult:
    from tuneloop.workload_data.chat import load_tokenizer
    from tuneloop.workload_data.rows import BadRows, DataError
    from tuneloop_trainer.data_report import data_report

    started = time.monotonic()
    try:
        tokenizer = load_tokenizer(workload.model_path)
    except (OSError, ValueError) as error:
        return failure("InvalidModel", f"the base model's tokenizer cannot be loaded from {workload.model_path}: "
                                       f"{error}")
    try:
        found = data_report(workload, tokenizer, world_size=workload.world_size)
    except BadRows as error:
        return DataCheckResult(succeeded=False, reason="InvalidData", message=str(error),
                               bad_rows=len(error.problems))
    except DataError as error:
        return failure("InvalidData", str(error))
    for line in found.lines():
        print(line, flush=True)
    return DataCheckResult(succeeded=True, dataset=found.stats, cleaning=found.cleaning,
                           report=found.summary(), seconds=round(time.monotonic() - started, 1))


def failure(reason: str, message: str) -> DataCheckResult:
    return DataCheckResult(succeeded=False, reason=reason, message=message)


def main(argv: list[str] | None = None) -> int:
    parser = workload_parser("python -m tuneloop_trainer.check_data", __doc__, DataCheckWorkload, DataCheckResult)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    go_offline()
    quiet_libraries()
    result = run_workload(args.spec, DataCheckWorkload, check, failure, "DataCheckFailed")
    if result.succeeded:
        write_result(result, args.result, args.termination_log)  # the report is printed above
    else:
        report(result, log, args.result, args.termination_log)
    return 0 if result.succeeded else 1


if __name__ == "__main__":
    sys.exit(main())
