"""What `tuneloop --help`, `tuneloop COMMAND --help` and `tuneloop --version` tell a user."""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib import metadata

import pytest

from tuneloop.cli import build_parser, main


def command_paths(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [path]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                paths += command_paths(subparser, path + (name,))
    return paths


COMMANDS = command_paths(build_parser())


def parser_of(path: tuple[str, ...]) -> argparse.ArgumentParser:
    if path == ("feedback", "serve"):  # handed whole to the service's own parser (tuneloop.cli.main)
        from tuneloop.feedback.server import build_parser as feedback_parser

        return feedback_parser()
    parser = build_parser()
    for name in path:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    return parser


def test_every_command_is_walked():
    assert {("run",), ("validate",), ("list",), ("status",), ("logs",), ("rollout",),
            ("feedback", "serve")} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda path: " ".join(path) or "tuneloop")
def test_each_help_has_examples_names_the_command_and_explains_every_positional(path, capsys):
    with pytest.raises(SystemExit) as exited:
        main([*path, "--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"usage: {' '.join(('tuneloop',) + path)}"), shown[:200]
    assert "python -m" not in shown and "tuneloop.cli" not in shown
    assert "\nexamples:\n" in shown, shown
    examples = shown.split("\nexamples:\n", 1)[1].split("\n\n")[0].splitlines()
    assert examples and all(line.startswith("  ") and "tuneloop" in line for line in examples), shown
    unexplained = [action.dest for action in parser_of(path)._actions
                   if not action.option_strings and not isinstance(action, argparse._SubParsersAction)
                   and not action.help]
    assert unexplained == [], f"positionals without help in `tuneloop {' '.join(path)}`"


def test_version_is_the_installed_distributions():
    shown = subprocess.run([sys.executable, "-m", "tuneloop.cli", "--version"], capture_output=True, text=True,
                           check=True).stdout
    assert shown == f"tuneloop {metadata.version('tuneloop')}\n"
