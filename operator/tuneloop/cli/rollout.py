"""`tuneloop rollout`: manual control of a ModelDeployment's blue-green rollout."""

from __future__ import annotations

import argparse
import sys


def command_rollout(args: argparse.Namespace) -> int:
    from tuneloop.runtime.rollout_control import RolloutControlError, run

    try:
        print(run(args.verb, args.name, args.namespace))
    except RolloutControlError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0




def add_parser(commands: argparse._SubParsersAction) -> None:
    rollout = commands.add_parser("rollout", help="promote, abort or retry a ModelDeployment's rollout, "
                                                  "or show its status")
    rollout.add_argument("verb", choices=("promote", "abort", "retry", "status"))
    rollout.add_argument("name", help="the ModelDeployment")
    rollout.add_argument("-n", "--namespace", help="default: the kubeconfig context's namespace")
    rollout.set_defaults(handler=command_rollout)
