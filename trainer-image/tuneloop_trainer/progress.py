"""Report progress: a bar on a terminal, plain log lines otherwise, and a progress file for the runtime."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from tuneloop.api.workloads import TrainerProgress

log = logging.getLogger("tuneloop_trainer")


def write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


class ProgressReporter:
    def __init__(self, progress_file: Path | None, *, interactive: bool | None = None, quiet: bool = False,
                 file_every_s: float = 2.0):
        self.progress_file = progress_file
        self.quiet = quiet
        self.interactive = not quiet and (sys.stderr.isatty() if interactive is None else interactive)
        self.file_every_s = file_every_s
        self._last_file_write = 0.0
        self._bar = None
        self._last_logged_step = 0

    def stage(self, stage: str) -> None:
        self._write(TrainerProgress(stage=stage), force=True)

    def start(self, total_steps: int) -> None:
        if self.interactive:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, desc="training", unit="step", dynamic_ncols=True)

    def step(self, progress: TrainerProgress) -> None:
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.update(progress.step - self._bar.n)
            self._bar.set_postfix(loss=f"{progress.loss:.3f}", tok_s=f"{progress.tokens_per_second:.0f}")
        else:
            every = max(1, progress.total_steps // 20)
            if progress.step - self._last_logged_step >= every or progress.step == progress.total_steps:
                self._last_logged_step = progress.step
                log.info(
                    "step %d/%d epoch %.2f loss %.4f %.0f tokens/s eta %.0fs",
                    progress.step, progress.total_steps, progress.epoch, progress.loss or 0.0,
                    progress.tokens_per_second or 0.0, progress.eta_seconds or 0.0,
                )
        self._write(progress, force=progress.step == progress.total_steps)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _write(self, progress: TrainerProgress, force: bool = False) -> None:
        now = time.monotonic()
        if self.progress_file is None or (not force and now - self._last_file_write < self.file_every_s):
            return
        self._last_file_write = now
        write_atomic(self.progress_file, progress.model_dump_json(by_alias=True))
