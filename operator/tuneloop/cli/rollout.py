"""`tuneloop rollout`: manual control of a ModelDeployment's blue-green rollout."""

from __future__ import annotations

import argparse
import sys


def command_rollout(args: argparse.Namespace) -> int:
    from tuneloop.runtime.rollout_control import RolloutControlError, run

    if args.watch and args.verb != "status":
        print("error: --watch goes with `tuneloop rollout status`", file=sys.stderr)
        return 2
    try:
        if args.watch:
            from tuneloop.cli.rollout_watch import watch

            return watch(args.name, args.namespace, args.interval)
        print(run(args.verb, args.name, args.namespace))
    except RolloutControlError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0




def add_parser(commands: argparse._SubParsersAction) -> None:
    rollout = commands.add_parser("rollout", help="promote, abort or retry a ModelDeployment's rollout, "
                                                  "or show its status")
    rollout.add_argument("verb", choices=("promote", "abort", "retry", "status"), metavar="VERB",
                         help="promote: switch to the preview now; abort: tear the preview down; retry: roll a "
                              "failed revision out again; status: show the rollout")
    rollout.add_argument("name", help="the ModelDeployment")
    rollout.add_argument("-n", "--namespace", help="default: the kubeconfig context's namespace")
    rollout.add_argument("-w", "--watch", action="store_true",
                         help="with status: both colours, their pods and the analysis as a tree, refreshed until "
                              "the rollout ends (Ctrl-C stops)")
    rollout.add_argument("--interval", type=float, default=2.0, help="seconds between looks with --watch "
                                                                      "(default: %(default)s)")
    rollout.set_defaults(handler=command_rollout)
