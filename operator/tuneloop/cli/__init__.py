"""The `tuneloop` command. Each command lives in a module of this package that adds its own parser.

    tuneloop run FILE --local     run a FineTuneJob manifest to the end on this machine
                                  (a FineTuneSchedule: --once, one cycle now)
    tuneloop validate FILE...     check manifests; say what is wrong and where (--data: the datasets too)
    tuneloop crds                 print the CustomResourceDefinitions
    tuneloop promote FILE --version V | --from-alias A [--commit]
                                  pin a ModelDeployment's adapter version in a Git working tree
    tuneloop rollout promote|abort|retry|status NAME [-n NS]
                                  manual control of a ModelDeployment's blue-green rollout
    tuneloop suspend|resume NAME [-n NS]
                                  stop a FineTuneJob's running stage (it checkpoints), go on later
    tuneloop feedback serve       the feedback service (corrections in, snapshots out)
    tuneloop images [--config FILE] [--registry REG]
                                  the images to mirror for an air-gapped cluster, one a line
    tuneloop operator             run the Kubernetes operator (kopf)
    tuneloop list|status|logs     the local runs in a work folder, one run's report, a workload's log
    tuneloop chat [RUN]           ask a local run's base and tuned model side by side
    tuneloop serve --local [RUN]  an OpenAI-compatible endpoint over them on 127.0.0.1
    tuneloop report [RUN] [--open]  a local run's HTML report (loss, metrics, gate, examples)
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import metadata

from tuneloop.cli import (
    chat,
    images,
    local_runs,
    operator,
    promote,
    report,
    rollout,
    run,
    serve,
    suspend,
    validate,
)
from tuneloop.cli.help_text import EXAMPLES, add_examples, examples_epilog
from tuneloop.cli.operator import all_crds
from tuneloop.cli.validate import validate_document
from tuneloop.workload_output import quiet_libraries

__all__ = ["all_crds", "build_parser", "main", "validate_document"]

COMMAND_MODULES = (run, validate, operator, promote, rollout, suspend, images, local_runs, report, chat, serve)


def version() -> str:
    try:
        return metadata.version("tuneloop")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuneloop", description="Fine-tune and ship private LLMs on Kubernetes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=examples_epilog(("tuneloop run examples/finetunejob.yaml --local", "tuneloop list",
                                "tuneloop validate examples/cluster/", "tuneloop COMMAND --help")))
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    examples = dict(EXAMPLES)
    for module in COMMAND_MODULES:
        module.add_parser(commands)
        examples.update(getattr(module, "EXAMPLES", {}))
    feedback = commands.add_parser("feedback", help="the feedback service: reviewers' corrections come in here")
    feedback_commands = feedback.add_subparsers(dest="feedback_command", required=True)
    # `tuneloop feedback serve ARGS` is handed to the service's own parser whole (see main).
    feedback_commands.add_parser("serve", help="serve POST /v1/feedback (`tuneloop feedback serve --help`)")
    add_examples(commands, examples)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["feedback", "serve"]:
        from tuneloop.feedback.server import main as feedback_main

        return feedback_main(argv[2:])
    args = build_parser().parse_args(argv)
    if args.command != "operator":  # the operator's logging is kopf's (text or JSON)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        quiet_libraries()
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
