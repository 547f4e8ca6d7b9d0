"""python -m tuneloop_evaluator --spec SPEC.json --result RESULT.json [--termination-log PATH]

Exit status 0 when the evaluation ran (whether the candidate is better is for the gate to say).
The result file is written in every case; a failed run says why in `reason` and `message`.
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

from tuneloop.api.workloads import EvaluatorResult, EvaluatorWorkload, write_result
from tuneloop.offline_env import go_offline
from tuneloop.workload_output import quiet_libraries

log = logging.getLogger("tuneloop_evaluator")


def failure(reason: str, message: str) -> EvaluatorResult:
    return EvaluatorResult(succeeded=False, reason=reason, message=message)


def evaluate(workload: EvaluatorWorkload) -> EvaluatorResult:
    # Heavy imports only after the spec is known to be good.
    from tuneloop.workload_data.rows import DataError
    from tuneloop_evaluator.champion import ChampionUnavailable
    from tuneloop_evaluator.evaluate import InvalidWorkload, run
    from tuneloop_evaluator.judge import JudgeNotConfigured, JudgeUnavailable

    try:
        return run(workload)
    except InvalidWorkload as error:
        return failure("InvalidWorkload", str(error))
    except DataError as error:
        return failure("InvalidData", str(error))
    except ChampionUnavailable as error:
        return failure("ChampionUnavailable", str(error))
    except JudgeNotConfigured as error:
        return failure("JudgeNotConfigured", str(error))
    except JudgeUnavailable as error:
        return failure("JudgeUnavailable", str(error))
    except Exception as error:  # the result must say why, whatever broke
        traceback.print_exc()
        return failure("EvaluationFailed", f"{type(error).__name__}: {error}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tuneloop_evaluator", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, required=True, help="EvaluatorWorkload JSON")
    parser.add_argument("--result", type=Path, required=True, help="where the EvaluatorResult JSON goes")
    parser.add_argument("--termination-log", type=Path,
                        help="also write the result, compacted to 4 KiB, here (a pod's /dev/termination-log)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    go_offline()
    quiet_libraries()
    # MLflow's default (7 retries, doubling from 2 s) waits about 4 minutes on a dead server.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "4")

    try:
        workload = EvaluatorWorkload.model_validate(json.loads(args.spec.read_text(encoding="utf-8")))
    except (OSError, ValueError, ValidationError) as error:
        result = failure("InvalidWorkload", f"{args.spec}: {error}")
    else:
        result = evaluate(workload)
    if not result.succeeded:
        log.error("%s: %s", result.reason, result.message)
    write_result(result, args.result, args.termination_log)
    return 0 if result.succeeded else 1


if __name__ == "__main__":
    sys.exit(main())
