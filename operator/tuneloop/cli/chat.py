"""`tuneloop chat [RUN]`: ask a local run's base model and tuned model the same thing, side by side."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

from tuneloop.local_serving.run_model import BASE, TUNED, RunNotServable, ServedRun

EPILOG = """examples:
  tuneloop chat                          # the newest run in ./tuneloop-work
  tuneloop chat acme-tickets             # that job's newest run
  tuneloop chat tuneloop-work/acme-tickets/f0158f20d6e3
  tuneloop chat acme-tickets --prompt "Printer on floor 3 is jammed"   # one answer each, then exit

In the conversation: /reset forgets it, /quit (or Ctrl-D) leaves; an empty line is ignored."""
RUN_HELP = ("the job name (its newest run), NAME/HASH, a spec hash, or a run folder "
            "(default: the newest run in --workdir)")
LABEL_WIDTH = len(f"{TUNED}: ")


def selected_run(workdir: Path, wanted: str | None) -> ServedRun:
    """The run RUN names (see RUN_HELP); RunNotFound or RunNotServable say why not."""
    from pydantic import ValidationError

    from tuneloop.api.finetunejob import FineTuneJobStatus
    from tuneloop.cli.local_runs import RunNotFound, select_run
    from tuneloop.local_serving.run_model import served_run

    folder = Path(wanted) if wanted else None
    if folder is not None and folder.is_dir():
        status_files = ([folder / "status.json"] if (folder / "status.json").is_file()
                        else sorted(folder.glob("*/status.json"), key=lambda path: path.stat().st_mtime))
        if not status_files:
            raise RunNotFound(f"{folder} is not a run folder: it has no status.json (nor do its subfolders)")
        try:
            status = FineTuneJobStatus.model_validate_json(status_files[-1].read_text(encoding="utf-8"))
        except (OSError, ValueError, ValidationError) as error:
            raise RunNotFound(f"{status_files[-1]}: not a readable run status ({error.__class__.__name__})") from error
        return served_run(status_files[-1].parent.resolve(), status)
    run = select_run(workdir, wanted)
    return served_run(run.folder.resolve(), run.status)


def load_run(args: argparse.Namespace):
    """(run, its loaded models), or None after saying on stderr why not."""
    from tuneloop.cli.local_runs import RunNotFound
    from tuneloop.local_serving.chat_models import ChatModels, EvaluatorNotInstalled

    try:
        run = selected_run(args.workdir, args.run)
    except (RunNotFound, RunNotServable) as error:
        print(error, file=sys.stderr)
        return None
    print(f"loading {run.label}: base model {run.model_path} + adapter {run.adapter_path}", file=sys.stderr)
    warnings.filterwarnings("ignore", category=FutureWarning)  # libraries' deprecation notes, not the user's
    try:
        return run, ChatModels(run)
    except EvaluatorNotInstalled as error:
        print(error, file=sys.stderr)
        return None


def print_labelled(label: str, text: str) -> None:
    lines = [line.rstrip() for line in text.splitlines()] or [""]
    print(f"{label}:".ljust(LABEL_WIDTH) + lines[0], *(f"{' ' * LABEL_WIDTH}{line}".rstrip() for line in lines[1:]),
          sep="\n", flush=True)


def answer_both(models, conversations: dict[str, list[dict[str, str]]], text: str, max_tokens: int) -> None:
    """Each model continues its own conversation with the user's message."""
    for variant in (BASE, TUNED):
        conversation = conversations[variant]
        conversation.append({"role": "user", "content": text})
        answer = models.answer(variant, conversation, max_tokens)
        conversation.append({"role": "assistant", "content": answer.text})
        print_labelled(variant, answer.text)


def command_chat(args: argparse.Namespace) -> int:
    if args.prompt is not None and not args.prompt.strip():
        print("--prompt is empty: give the message to answer", file=sys.stderr)
        return 2
    logging.getLogger("tuneloop.local_serving").setLevel(logging.WARNING)  # timings are for the server's log
    loaded = load_run(args)
    if loaded is None:
        return 1
    run, models = loaded
    max_tokens = args.max_tokens or run.max_new_tokens
    conversations: dict[str, list[dict[str, str]]] = {BASE: [], TUNED: []}
    if args.prompt is not None:
        answer_both(models, conversations, args.prompt.strip(), max_tokens)
        return 0
    system = f'system prompt "{run.system_prompt}"' if run.system_prompt else "no system prompt"
    print(f"{run.label}: base and tuned answer side by side (greedy, up to {max_tokens} tokens, {system}). "
          "/reset forgets the conversation, /quit or Ctrl-D leaves.", file=sys.stderr)
    while True:
        try:
            text = input("you> " if sys.stdin.isatty() else "").strip()
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print()
            return 130
        if not text:
            continue
        if text == "/quit":
            return 0
        if text == "/reset":
            conversations = {BASE: [], TUNED: []}
            print("(conversation forgotten)", file=sys.stderr)
            continue
        if text.startswith("/") and " " not in text:
            print(f"unknown command {text}: /reset or /quit", file=sys.stderr)
            continue
        try:
            answer_both(models, conversations, text, max_tokens)
        except Exception as error:  # e.g. a conversation longer than the model's context: keep the session
            print(f"could not answer ({error.__class__.__name__}: {error}); /reset starts a fresh conversation",
                  file=sys.stderr)


def positive_tokens(value: str) -> int:
    from tuneloop.local_serving.app import MAX_TOKENS

    try:
        tokens = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if not 1 <= tokens <= MAX_TOKENS:
        raise argparse.ArgumentTypeError(f"{tokens} is outside 1..{MAX_TOKENS}")
    return tokens


def add_parser(commands: argparse._SubParsersAction) -> None:
    chat = commands.add_parser(
        "chat", help="ask a local run's base and tuned model side by side",
        description="Ask a local run's base model and tuned model (base + its adapter) the same messages;\n"
                    "both answer greedily with the run's system prompt and chat template, as the evaluator\n"
                    "asked them.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    chat.add_argument("run", nargs="?", metavar="RUN", help=RUN_HELP)
    chat.add_argument("--workdir", type=Path, default=Path("tuneloop-work"),
                      help="the work folder of `tuneloop run --local` (default: %(default)s)")
    chat.add_argument("--prompt", metavar="TEXT", help="answer this one message and exit (no conversation)")
    chat.add_argument("--max-tokens", type=positive_tokens, metavar="N",
                      help="longest answer in tokens (default: the run's evaluation.maxNewTokens)")
    chat.set_defaults(handler=command_chat)
