"""python -m tuneloop_evaluator.register --spec SPEC.json --result RESULT.json [--termination-log PATH]

Registers a trained adapter as a new version of an MLflow registered model, idempotently: a
version already tagged with the job's uid is returned instead of creating another. The result
file is written in every case; exit status 0 when the adapter is registered.

Artifacts: `adapter/` (safetensors weights, configs, tokenizer) and `evaluation/` (per-example
records) on the training run, or on a run of its own; the version's source is
`runs:/<run_id>/adapter`, so `models:/<name>@champion` downloads the adapter files. The checked
exports of the export stage (the workload's `exports`) go under `export/` of the same run
(`export/merged/`, `export/<name>-<type>.gguf`), each named by a version tag
`tuneloop.dev/export-<kind>` = "<artifact URI> sha256=<sha256>".
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

from tuneloop.api.workloads import RegisterWorkload, write_result
from tuneloop.registry.lineage import JOB_UID_TAG
from tuneloop.registry.registration import MLFLOW_HTTP_SETTINGS, failure, register
from tuneloop.workload_output import quiet_libraries

log = logging.getLogger("tuneloop_evaluator.register")
__all__ = ["JOB_UID_TAG", "main", "register"]


def limit_mlflow_http_retries() -> None:
    """MLflow's client must not retry on its own (our retry policy does); its request timeout may be set by the user."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = MLFLOW_HTTP_SETTINGS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", MLFLOW_HTTP_SETTINGS["MLFLOW_HTTP_REQUEST_TIMEOUT"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tuneloop_evaluator.register", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, required=True, help="RegisterWorkload JSON")
    parser.add_argument("--result", type=Path, required=True, help="where the RegisterResult JSON goes")
    parser.add_argument("--termination-log", type=Path,
                        help="also write the result, compacted to 4 KiB, here (a pod's /dev/termination-log)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_libraries()
    limit_mlflow_http_retries()

    try:
        workload = RegisterWorkload.model_validate(json.loads(args.spec.read_text(encoding="utf-8")))
    except (OSError, ValueError, ValidationError) as error:
        result = failure("InvalidWorkload", f"{args.spec}: {error}")
    else:
        try:
            result = register(workload)
        except Exception as error:  # the result must say why, whatever broke
            traceback.print_exc()
            result = failure("RegistrationFailed", f"{type(error).__name__}: {error}")
    if result.succeeded:
        log.info("%s", result.message)
    else:
        log.error("%s: %s", result.reason, result.message)
    write_result(result, args.result, args.termination_log)
    return 0 if result.succeeded else 1


if __name__ == "__main__":
    sys.exit(main())
