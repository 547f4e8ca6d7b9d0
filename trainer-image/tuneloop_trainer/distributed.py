"""Data-parallel training under torchrun: one process per GPU (NCCL) or per CPU worker (gloo).

Gradients are summed across processes explicitly after backward; every process divides its loss
by the number of answer tokens of the whole step across all processes, so the update equals
single-process training on the same examples.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_world() -> World:
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return World(rank=dist.get_rank(), size=dist.get_world_size())


def _sum(world: World, value: float, dtype: torch.dtype, device: torch.device) -> float:
    if world.size == 1:
        return value
    tensor = torch.tensor([value], dtype=dtype, device=device)
    dist.all_reduce(tensor)
    return tensor.item()


def sum_int(world: World, value: int, device: torch.device) -> int:
    return int(_sum(world, value, torch.long, device))


def sum_float(world: World, value: float, device: torch.device) -> float:
    return float(_sum(world, value, torch.float64, device))


def sum_gradients(world: World, params: list[torch.nn.Parameter]) -> None:
    if world.size == 1:
        return
    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
    flat = torch.cat([param.grad.reshape(-1) for param in params])
    dist.all_reduce(flat)
    offset = 0
    for param in params:
        count = param.grad.numel()
        param.grad.copy_(flat[offset:offset + count].view_as(param.grad))
        offset += count


def any_flag(world: World, flag: bool, device: torch.device) -> bool:
    """True on every process when any process raised the flag (a SIGTERM reaches pods one by one)."""
    return sum_int(world, int(flag), device) > 0


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def shutdown(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
