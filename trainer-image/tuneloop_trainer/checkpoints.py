"""Checkpoints that survive preemption: written aside, marked complete, then moved into place.

    <output>/checkpoints/step-000120/   trainable weights (safetensors), optimizer and scheduler
                                        state, RNG state, loop state (state.json), COMPLETE marker
    <output>/checkpoints/best/          trainable weights of the lowest hold-out loss so far

A folder without COMPLETE (a write cut short by SIGKILL or a full disk) is never loaded and is
cleaned away by the next save.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger("tuneloop_trainer")

COMPLETE = "COMPLETE"
WEIGHTS = "trainable.safetensors"


@dataclass
class LoopState:
    """Where training stands; with the seed it fixes the data order of everything still to come."""

    dataset_sha256: str | None = None
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    tokens_seen: int = 0
    lowest_loss: float | None = None
    recent_losses: list[float] = field(default_factory=list)
    hold_out_loss_before: float | None = None
    base_answers: list[str] = field(default_factory=list)
    evaluations: list[dict] = field(default_factory=list)
    best_step: int | None = None
    best_loss: float | None = None
    evaluations_without_improvement: int = 0


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: param.detach().contiguous().cpu() for name, param in model.named_parameters() if param.requires_grad}


def load_trainable_state(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [name for name, param in params.items() if param.requires_grad and name not in weights]
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} trainable tensors, e.g. {missing[0]}")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)


def _write_folder(target: Path, writer) -> None:
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    writer(partial)
    (partial / COMPLETE).write_text("ok", encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)


class CheckpointStore:
    def __init__(self, output_dir: Path, keep_last: int):
        self.root = output_dir / "checkpoints"
        self.keep_last = keep_last

    def complete_steps(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        folders = [p for p in self.root.glob("step-*") if (p / COMPLETE).is_file()]
        return sorted(folders, key=lambda p: int(p.name.split("-")[1]))

    def latest(self) -> Path | None:
        folders = self.complete_steps()
        return folders[-1] if folders else None

    def save(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, state: LoopState) -> Path:
        def write(folder: Path) -> None:
            save_file(trainable_state(model), folder / WEIGHTS)
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "torch_rng": torch.get_rng_state()}, folder / "optimizer.pt")
            (folder / "state.json").write_text(json.dumps(asdict(state)), encoding="utf-8")

        target = self.root / f"step-{state.step:06d}"
        _write_folder(target, write)
        for stale in self.complete_steps()[: -self.keep_last]:
            shutil.rmtree(stale, ignore_errors=True)
        for partial in self.root.glob(".*.partial"):
            shutil.rmtree(partial, ignore_errors=True)
        log.info("checkpoint saved: %s", target)
        return target

    def restore(self, folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler) -> LoopState:
        load_trainable_state(model, load_file(folder / WEIGHTS))
        saved = torch.load(folder / "optimizer.pt", weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        return LoopState(**json.loads((folder / "state.json").read_text(encoding="utf-8")))

    def save_best(self, model: torch.nn.Module, step: int, loss: float) -> None:
        def write(folder: Path) -> None:
            save_file(trainable_state(model), folder / WEIGHTS)
            (folder / "best.json").write_text(json.dumps({"step": step, "holdOutLoss": loss}), encoding="utf-8")

        _write_folder(self.root / "best", write)

    def restore_best(self, model: torch.nn.Module) -> int | None:
        folder = self.root / "best"
        if not (folder / COMPLETE).is_file():
            return None
        load_trainable_state(model, load_file(folder / WEIGHTS))
        return json.loads((folder / "best.json").read_text(encoding="utf-8"))["step"]
