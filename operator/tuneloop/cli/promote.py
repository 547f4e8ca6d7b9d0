"""`tuneloop promote`: pin a ModelDeployment's adapter version in a Git working tree (GitOps)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def command_promote(args: argparse.Namespace) -> int:
    """Pin a ModelDeployment's adapter version in a manifest file (GitOps); optionally commit it on a branch."""
    from tuneloop.gitops import GitOpsError, adapter_name, commit_on_branch, pin_version, resolve_alias

    try:
        version = args.version
        if args.from_alias:
            if not args.tracking_uri:
                print("--from-alias needs --tracking-uri (or MLFLOW_TRACKING_URI)", file=sys.stderr)
                return 2
            model = args.model or adapter_name(args.file, name=args.name)
            version = resolve_alias(args.tracking_uri, model, args.from_alias)
            print(f"{model}@{args.from_alias} is version {version}")
        change = pin_version(args.file, version, name=args.name)
        print(change.describe())
        if args.commit:
            if not change.changed:
                print("nothing to commit: the manifest already pins this version")
                return 0
            branch = args.branch or f"promote/{change.name}-{change.new}"
            message = args.message or f"Promote {change.name} to adapter version {change.new}"
            commit = commit_on_branch(args.file.resolve().parent, [args.file.resolve()], branch, message)
            print(f"committed {commit[:12]} on branch {branch}")
    except GitOpsError as error:
        print(error, file=sys.stderr)
        return 1
    return 0




def add_parser(commands: argparse._SubParsersAction) -> None:
    promote = commands.add_parser("promote", help="pin a ModelDeployment's adapter version in a manifest (GitOps)")
    promote.add_argument("file", type=Path, help="ModelDeployment manifest in a Git working tree")
    source = promote.add_mutually_exclusive_group(required=True)
    source.add_argument("--version", help="the MLflow model version to pin, e.g. 7")
    source.add_argument("--from-alias", metavar="ALIAS", help="pin the version this MLflow alias points at now")
    promote.add_argument("--name", help="the ModelDeployment to edit when the file holds several")
    promote.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                         help="MLflow tracking URI for --from-alias (default: $MLFLOW_TRACKING_URI)")
    promote.add_argument("--model",
                         help="MLflow registered model for --from-alias (default: the manifest's spec.adapter.name)")
    promote.add_argument("--commit", action="store_true", help="commit the file on a branch")
    promote.add_argument("--branch", help="branch for --commit (default: promote/<name>-<version>)")
    promote.add_argument("--message", help="commit message (default: Promote <name> to adapter version <v>)")
    promote.set_defaults(handler=command_promote)
