"""`tuneloop suspend NAME` and `tuneloop resume NAME`: stop a FineTuneJob's running stage and free its GPUs,
then let it go on from the trainer's checkpoint (see runtime/suspend_control.py)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tuneloop.runtime.suspend_control import SuspendOutcome

EXAMPLES = {
    "suspend": ("tuneloop suspend acme-tickets -n ml-team   # free the GPUs; the trainer checkpoints first",
                "tuneloop suspend acme-tickets             # in the kubeconfig context's namespace"),
    "resume": ("tuneloop resume acme-tickets -n ml-team    # go on from the checkpoint",),
}
DESCRIPTION = {
    "suspend": """\
Set spec.suspend of a FineTuneJob to true. The operator deletes the running stage's Job: its pods get
SIGTERM and the operator's terminationGraceSeconds, in which the trainer saves a checkpoint. The job shows
phase Suspended and holds no GPU until `tuneloop resume`.
""",
    "resume": """\
Set spec.suspend of a FineTuneJob back to false. The operator creates the stage's Job again (through the
job's Kueue queue, if it has one) and training goes on from the last checkpoint, at the same step.
""",
}


def describe(outcome: SuspendOutcome) -> str:
    """What was done, in words, and the same request with kubectl."""
    from tuneloop.runtime.suspend_control import kubectl_equivalent

    subject = f"finetunejob.tuneloop.dev/{outcome.name}"
    if not outcome.changed:
        said = "already suspended (spec.suspend is true)" if outcome.suspend else "not suspended (spec.suspend is false)"
        done = f"{subject} is {said}: nothing changed"
    elif outcome.suspend:
        done = (f"{subject} suspended (it was {outcome.phase}): the operator stops its running stage and frees the "
                f"GPUs, the trainer saving a checkpoint first; `tuneloop resume {outcome.name} -n {outcome.namespace}` "
                "goes on from it")
    else:
        done = (f"{subject} resumed: the operator launches its stage again and training goes on from the last "
                "checkpoint")
    return f"{done}\n  same as: {kubectl_equivalent(outcome.name, outcome.namespace, outcome.suspend)}"


def command_suspend(args: argparse.Namespace) -> int:
    from tuneloop.runtime.suspend_control import SuspendError, run

    try:
        outcome = run(args.name, args.namespace, suspend=args.command == "suspend")
    except SuspendError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(describe(outcome))
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    for command, summary in (("suspend", "stop a FineTuneJob's running stage and free its GPUs (it checkpoints)"),
                             ("resume", "let a suspended FineTuneJob go on from its checkpoint")):
        parser = commands.add_parser(command, help=summary, description=DESCRIPTION[command],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("name", help="the FineTuneJob")
        parser.add_argument("-n", "--namespace", help="default: the kubeconfig context's namespace")
        parser.set_defaults(handler=command_suspend)
