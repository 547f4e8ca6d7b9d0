"""Examples at the foot of every command's --help.

A command module may define `EXAMPLES = {"command": ("tuneloop command ...", ...)}` for its own
commands; the ones below cover the modules that do not.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable

EXAMPLES: dict[str, tuple[str, ...]] = {
    "run": ("tuneloop run examples/finetunejob.yaml --local",
            "tuneloop run examples/finetunejob.yaml --local --fresh      # discard the earlier run of this spec",
            "tuneloop run examples/finetuneschedule.yaml --local --once  # one cycle of a schedule"),
    "validate": ("tuneloop validate examples/finetunejob.yaml",
                 "tuneloop validate examples/cluster/                 # every manifest in the folder",
                 "tuneloop validate examples/finetunejob.yaml --data  # read the dataset as the trainer would"),
    "crds": ("tuneloop crds | kubectl apply -f -",),
    "operator": ("tuneloop operator --namespace ml-team",
                 "tuneloop operator --standalone --log-format text --verbose"),
    "promote": ("tuneloop promote deploy/modeldeployment.yaml --version 7 --commit",
                "tuneloop promote deploy/modeldeployment.yaml --from-alias champion --tracking-uri http://mlflow:5000"),
    "rollout": ("tuneloop rollout status acme-tickets -n ml-team --watch",
                "tuneloop rollout promote acme-tickets   # switch traffic to the preview colour now",
                "tuneloop rollout abort acme-tickets     # tear the preview down; the active colour keeps serving"),
    "images": ("tuneloop images --registry registry.internal:5000",
               "tuneloop images --config values.yaml"),
    "feedback": ("tuneloop feedback serve --database-url sqlite:///feedback.db --insecure-no-auth",),
}


def examples_epilog(lines: Iterable[str]) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def add_examples(commands: argparse._SubParsersAction, examples: dict[str, tuple[str, ...]]) -> None:
    """Put each command's examples under its help, kept as written (line breaks and all)."""
    for name, parser in commands.choices.items():
        if name in examples:
            parser.formatter_class = argparse.RawDescriptionHelpFormatter
            parser.epilog = examples_epilog(examples[name])
