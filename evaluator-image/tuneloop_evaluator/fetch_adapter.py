"""python -m tuneloop_evaluator.fetch_adapter models:/NAME/VERSION DEST

Downloads a registered adapter version from MLflow (MLFLOW_TRACKING_URI) into DEST, with the
adapter files at DEST's root: the init container of a ModelDeployment's vLLM pods. Exit status 0
when the files are in place, 1 with the reason otherwise.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from tuneloop.registry.artifacts import fetch_version

log = logging.getLogger("tuneloop_evaluator.fetch_adapter")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tuneloop_evaluator.fetch_adapter", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="models:/<name>/<version>")
    parser.add_argument("destination", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri:
        print("MLFLOW_TRACKING_URI is not set: no registry to fetch the adapter from", file=sys.stderr)
        return 1
    try:
        folder = fetch_version(args.source, args.destination, tracking_uri)
    except Exception as error:  # the pod's termination message must say why, whatever broke
        print(f"{args.source} from {tracking_uri}: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    log.info("%s -> %s (%s)", args.source, folder, ", ".join(sorted(path.name for path in folder.iterdir())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
