"""`tuneloop images`: the container images to mirror for an air-gapped cluster."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml


def command_images(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from tuneloop.config import load_config
    from tuneloop.images import check_registry, image_list

    registry = None
    if args.registry is not None:
        try:
            registry = check_registry(args.registry)
        except ValueError as error:
            print(error, file=sys.stderr)
            return 2
    try:
        config = load_config(args.config)
    except (OSError, yaml.YAMLError, ValidationError) as error:
        print(f"{args.config or os.environ.get('TUNELOOP_CONFIG')}: {error}", file=sys.stderr)
        return 2
    print("\n".join(image_list(config, registry)))
    return 0




def add_parser(commands: argparse._SubParsersAction) -> None:
    images = commands.add_parser("images", help="list the container images the operator runs and launches")
    images.add_argument("--config", type=Path,
                        help="operator configuration file (default: $TUNELOOP_CONFIG, else the defaults)")
    images.add_argument("--registry", metavar="REG",
                        help="rewrite each reference to this private registry (HOST[:PORT][/PATH]), "
                             "keeping repository path, tag and digest")
    images.set_defaults(handler=command_images)
