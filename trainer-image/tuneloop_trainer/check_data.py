"""python -m tuneloop_trainer.check_data --spec SPEC.json --result RESULT.json [--termination-log PATH]

A FineTuneJob's first stage: on a CPU, with the base model's tokenizer and none of its weights, read
every row as the trainer will, and say what training will see (rows per format, token lengths,
truncation, steps) or every bad row by file and line. It prints the report, and writes the result
file in every case. Exit status 0: the data is good; 1: it is not, or the spec is unreadable.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path

from pydantic import ValidationError

from tuneloop.api.workloads import DataCheckResult, DataCheckWorkload, write_result

log = logging.getLogger("tuneloop_trainer.check_data")


def check(workload: DataCheckWorkload) -> DataCheckResult:
    from tuneloop_trainer.data import BadRows, DataError
    from tuneloop_trainer.data_report import data_report
    from tuneloop_trainer.model import load_tokenizer

    started = time.monotonic()
    try:
        tokenizer = load_tokenizer(workload.model_path)
    except (OSError, ValueError) as error:
        return DataCheckResult(succeeded=False, reason="InvalidModel",
                               message=f"the base model's tokenizer cannot be loaded from {workload.model_path}: "
                                       f"{error}")
    try:
        report = data_report(workload, tokenizer, world_size=workload.world_size)
    except BadRows as error:
        return DataCheckResult(succeeded=False, reason="InvalidData", message=str(error),
                               bad_rows=len(error.problems))
    except DataError as error:
        return DataCheckResult(succeeded=False, reason="InvalidData", message=str(error))
    for line in report.lines():
        print(line, flush=True)
    return DataCheckResult(succeeded=True, dataset=report.stats, cleaning=report.cleaning,
                           report=report.summary(), seconds=round(time.monotonic() - started, 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuneloop_trainer.check_data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, required=True, help="DataCheckWorkload JSON")
    parser.add_argument("--result", type=Path, required=True, help="where the DataCheckResult JSON goes")
    parser.add_argument("--termination-log", type=Path,
                        help="also write the result, compacted to 4 KiB, here (a pod's /dev/termination-log)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        workload = DataCheckWorkload.model_validate(json.loads(args.spec.read_text(encoding="utf-8")))
    except (OSError, ValueError, ValidationError) as error:
        result = DataCheckResult(succeeded=False, reason="InvalidWorkload", message=f"{args.spec}: {error}")
    else:
        try:
            result = check(workload)
        except Exception as error:  # the result must say why, whatever broke
            traceback.print_exc()
            result = DataCheckResult(succeeded=False, reason="DataCheckFailed", message=f"{type(error).__name__}: {error}")
    if not result.succeeded:
        log.error("%s: %s", result.reason, result.message)
    write_result(result, args.result, args.termination_log)
    return 0 if result.succeeded else 1


if __name__ == "__main__":
    sys.exit(main())
