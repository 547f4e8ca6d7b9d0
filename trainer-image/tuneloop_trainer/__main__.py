"""python -m tuneloop_trainer --spec SPEC.json --result RESULT.json [--progress PROGRESS.json]

Exit status 0 when the run succeeded. The result file is written in every case; a failed run
says why in `reason` and `message`. In a pod, pass --result /dev/termination-log.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from pathlib import Path

from pydantic import ValidationError

from tuneloop.api.workloads import TrainerResult, TrainerWorkload, write_result
from tuneloop.offline_env import go_offline
from tuneloop.workload_output import quiet_libraries

log = logging.getLogger("tuneloop_trainer")
PREEMPTED_EXIT = 143  # 128 + SIGTERM, what a pod stopped by its kubelet reports


def failure(reason: str, message: str) -> TrainerResult:
    return TrainerResult(succeeded=False, reason=reason, message=message)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tuneloop_trainer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, required=True, help="TrainerWorkload JSON")
    parser.add_argument("--result", type=Path, required=True, help="where the TrainerResult JSON goes")
    parser.add_argument("--progress", type=Path, help="progress JSON, rewritten every few seconds")
    parser.add_argument("--termination-log", type=Path,
                        help="also write the result, compacted to 4 KiB, here (a pod's /dev/termination-log)")
    args = parser.parse_args(argv)
    # Under torchrun only the first process reports; the others log warnings and errors only.
    is_main = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    go_offline()
    quiet_libraries()

    try:
        workload = TrainerWorkload.model_validate(json.loads(args.spec.read_text(encoding="utf-8")))
    except (OSError, ValueError, ValidationError) as error:
        result = failure("InvalidWorkload", f"{args.spec}: {error}")
    else:
        # Heavy imports only after the spec is known to be good.
        from tuneloop.workload_data.rows import DataError
        from tuneloop_trainer.model import UnsupportedHardware
        from tuneloop_trainer.progress import ProgressReporter
        from tuneloop_trainer.callbacks import LossDiverged
        from tuneloop_trainer.train import Preempted, run

        try:
            result = run(workload, ProgressReporter(args.progress))
        except DataError as error:
            result = failure("InvalidData", str(error))
        except UnsupportedHardware as error:
            result = failure("UnsupportedHardware", str(error))
        except LossDiverged as error:
            result = failure("LossDiverged", str(error))
        except Preempted as error:
            result = failure("Preempted", str(error))
        except Exception as error:  # the result must say why, whatever broke
            traceback.print_exc()
            result = failure("TrainingFailed", f"{type(error).__name__}: {error}")
    if not result.succeeded:
        log.error("%s: %s", result.reason, result.message)
    if is_main:
        write_result(result, args.result, args.termination_log)
    if result.succeeded:
        return 0
    return PREEMPTED_EXIT if result.reason == "Preempted" else 1


if __name__ == "__main__":
    sys.exit(main())
