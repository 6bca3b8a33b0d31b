"""The process group under `torchrun` (DDP), and the few collectives the trainer needs.

Without torchrun's environment (WORLD_SIZE unset or 1) everything here is a no-op, so one loop serves a
CPU, one GPU and many GPUs or nodes. The backend is NCCL on CUDA and Gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from kronypt.models.loading import check_device


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, env: DistEnv) -> torch.device:
    """'auto' -> this rank's GPU if CUDA is available, else the CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda", env.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = check_device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", env.local_rank)
    return device


def setup(device_name: str) -> tuple[DistEnv, torch.device]:
    """Join the process group torchrun described in the environment (if any) and pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    env = DistEnv(int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world_size)
    device = resolve_device(device_name, env)
    if env.enabled and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    return env, device


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def mean_across_ranks(values: list[float], device: torch.device) -> list[float]:
    """Element-wise mean of a few floats over all ranks (identity without a process group)."""
    if not dist.is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return (tensor / dist.get_world_size()).tolist()


def sum_across_ranks(values: list[float], device: torch.device) -> list[float]:
    if not dist.is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather_objects(obj: Any) -> list[Any]:
    """`obj` from every rank, in rank order, on every rank."""
    if not dist.is_initialized():
        return [obj]
    result: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(result, obj)
    return result


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
