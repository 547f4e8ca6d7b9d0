"""What a workload (trainer, evaluator) prints: our own log lines, progress of every long step, and
nothing else. The libraries' deprecation notices are for us, not for the person running a job, and
their progress bars belong on a terminal only: in a log file or a pod's log a bar is one line of
thousands of characters."""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings

LIBRARIES = ("transformers", "peft", "trl", "torch", "accelerate", "datasets", "huggingface_hub", "tokenizers",
             "mlflow", "pydantic", "rouge_score")
PROGRESS_SECONDS_ENV = "TUNELOOP_PROGRESS_SECONDS"  # seconds between progress lines; default 10


def progress_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get(PROGRESS_SECONDS_ENV, "10")))
    except ValueError:
        return 10.0


def on_terminal() -> bool:
    return sys.stderr.isatty()


def quiet_libraries() -> None:
    """No library warnings, no progress bars off a terminal: a workload's second act (after go_offline),
    and the `tuneloop` command's first.

    Deprecation notices (FutureWarning, DeprecationWarning) are silenced wherever they come from: a
    library raises them about its own API. UserWarnings only from the libraries' own modules; ours
    and our errors stay. Transformers' logger keeps its errors.
    """
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    for library in LIBRARIES:
        warnings.filterwarnings("ignore", category=UserWarning, module=rf"{library}(\.|$)")
    for library in LIBRARIES:  # MLflow's warnings say when tracking fails: they stay
        logging.getLogger(library).setLevel(logging.WARNING if library == "mlflow" else logging.ERROR)
    # Read when the libraries are imported; for those already imported, their own switches below.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if not on_terminal():
        os.environ.setdefault("TQDM_DISABLE", "1")  # tqdm reads its defaults from TQDM_* (4.66+)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' bars follow the hub's
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        if not on_terminal():
            transformers_logging.disable_progress_bar()
    if not on_terminal() and "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


class ProgressLog:
    """Progress of a long step as log lines: one every progress_seconds() at most, none for a step
    that ends sooner, and a closing line when any was written."""

    def __init__(self, log: logging.Logger, what: str, total: int, unit: str = "") -> None:
        self.log, self.what, self.total, self.unit, self.every = log, what, total, unit, progress_seconds()
        self.started = self.last = time.monotonic()
        self.done = 0
        self.wrote = False

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last >= self.every and self.done < self.total:
            self.last, self.wrote = now, True
            self.log.info("%s %d/%d%s, %.0fs", self.what, self.done, self.total, self.unit, now - self.started)

    def finish(self) -> None:
        if self.wrote:
            self.log.info("%s %d/%d%s, done in %.0fs", self.what, self.done, self.total, self.unit,
                          time.monotonic() - self.started)
