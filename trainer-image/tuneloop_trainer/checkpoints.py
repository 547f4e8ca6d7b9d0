"""Checkpoints that survive preemption, on top of the transformers Trainer's own.

The Trainer writes `<output>/checkpoints/checkpoint-<step>/` in place: trainable weights
(safetensors), optimizer, scheduler, the RNG states of every device and trainer_state.json, which
with the seeded sampler fixes the exact data position. `mark_complete` runs right after that (a
callback's on_save): it flushes every file and the folder itself to disk, and only then writes
and flushes the COMPLETE marker. A folder without it (a write cut short by SIGKILL, a lost node,
a full disk) is never resumed from, and `remove_incomplete` clears it away before a run starts.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

log = logging.getLogger("tuneloop_trainer")

COMPLETE = "COMPLETE"
PREFIX = "checkpoint-"  # transformers' PREFIX_CHECKPOINT_DIR
_STEP = re.compile(rf"^{PREFIX}(\d+)$")


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def mark_complete(folder: Path) -> None:
    """Every file of the checkpoint on disk, then the marker that says so and lists them with their sizes
    (a checkpoint whose deletion was cut short keeps its marker but not all of its files)."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            _fsync(path)
            files[str(path.relative_to(folder))] = path.stat().st_size
    for directory in sorted({p for p in folder.rglob("*") if p.is_dir()} | {folder}, key=lambda p: -len(p.parts)):
        _fsync(directory)
    marker = folder / COMPLETE
    marker.write_text(json.dumps(files), encoding="utf-8")
    _fsync(marker)
    _fsync(folder)


def missing_files(folder: Path) -> str | None:
    """What the marker lists that is gone or changed size; None when all is there."""
    try:
        files = json.loads((folder / COMPLETE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"{COMPLETE} is unreadable"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, not {size}"
    return None


def step_of(folder: Path) -> int:
    match = _STEP.match(folder.name)
    return int(match.group(1)) if match else -1


def checkpoint_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and step_of(p) >= 0), key=step_of)


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    return [folder for folder in checkpoint_folders(root) if (folder / COMPLETE).is_file()]


def remove_incomplete(root: Path) -> None:
    for folder in checkpoint_folders(root):
        if not (folder / COMPLETE).is_file():
            log.warning("removing %s: it was never completed (the run was killed while writing it)", folder)
            shutil.rmtree(folder, ignore_errors=True)


def remove_all(root: Path) -> None:
    for folder in checkpoint_folders(root):
        shutil.rmtree(folder, ignore_errors=True)
