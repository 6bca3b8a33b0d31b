"""The process group under `torchrun` (DDP), and the few collectives the trainer needs.

Without torchrun's environment (WORLD_SIZE unset or 1) everything here is a no-op, so one loop serves a
CPU, one GPU and many GPUs or nodes. The backend is NCCL on CUDA and Gloo on CPU.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from kronypt.errors import KronyptError
from kronypt.models.loading import check_device

T = TypeVar("T")


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


def from_main_rank(make: Callable[[], T]) -> T:
    """`make()` computed on rank 0 only and sent (pickled) to every rank; plain `make()` without a process
    group. Every rank must call it. What only needs doing once (reading and tokenising a corpus, which may
    download it) then happens once, and every rank holds the very same result. An error on rank 0 is
    raised on every rank, so no rank waits for a result that never comes."""
    if not dist.is_initialized():
        return make()
    payload: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            payload = [(make(), None)]
            pickle.dumps(payload)  # a result that cannot be sent fails here, where the others can be told
        except Exception as exc:
            dist.broadcast_object_list([(None, _sendable(exc))], src=0)
            raise
    dist.broadcast_object_list(payload, src=0)
    result, error = payload[0]
    if error is not None:
        raise error
    return result


def _sendable(exc: Exception) -> Exception:
    """`exc` if it survives pickling (KronyptError, OSError, ...), else a KronyptError with its first line."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001  (any exception type may refuse to pickle)
        text = str(exc).strip()
        return KronyptError(f"on rank 0: {text.splitlines()[0] if text else type(exc).__name__}")
    return exc


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
