"""How the model is spread over the ranks of a `torchrun` job: DDP (replicas) or FSDP2 (shards).

DDP keeps a full copy of the model and the optimizer state on every rank and all-reduces gradients.
FSDP (PyTorch's `fully_shard`, one unit per transformer block plus the root) keeps 1/N of the parameters,
gradients and AdamW moments on each rank and all-gathers a block's weights just before it runs, so the
memory per rank falls with N at the cost of more communication. Both give the same updates as one
process with the same global batch.

Checkpoints do not depend on the choice: the weights are gathered into one Hugging Face folder, and the
optimizer state is saved keyed by parameter name with full tensors, so a run can resume on another
number of ranks or with the other strategy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor, Shard
from torch.nn.parallel import DistributedDataParallel

from kronypt.errors import KronyptError

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def shard(model: nn.Module, strategy: str, enabled: bool, compute_dtype: torch.dtype | None = None) -> None:
    """FSDP: shard `model` in place (each transformer block a unit, then the root). A no-op otherwise.

    With a `compute_dtype` (bf16 training), a block's weights are all-gathered in that dtype, which halves
    the all-gather traffic and memory, and gradients are reduce-scattered in float32; the sharded weights
    and the optimizer state stay float32 (as torchtitan trains). Must run before the optimizer is built:
    it replaces the parameters by sharded ones.
    """
    if not (enabled and strategy == "fsdp"):
        return
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32 if compute_dtype else None)
    for block in _transformer_blocks(model):
        fully_shard(block, shard_placement_fn=_placement, mp_policy=policy)
    fully_shard(model, shard_placement_fn=_placement, mp_policy=policy)


def _placement(param: nn.Parameter) -> Shard | None:
    """Where to cut a parameter into shards: the first dimension (FSDP's default, `None`) unless it is
    shorter than the number of ranks, as the factor count k of Kronecker factors (k, m, n) is; then the
    longest other dimension that divides evenly (FSDP2 allows uneven shards on the first dimension only).
    With none, the first dimension after all: some ranks then hold none of that parameter."""
    world = torch.distributed.get_world_size()
    if param.ndim == 0 or param.shape[0] >= world:
        return None
    even = [dim for dim in range(1, param.ndim) if param.shape[dim] % world == 0]
    return Shard(max(even, key=lambda dim: param.shape[dim])) if even else None


def wrap(model: nn.Module, strategy: str, enabled: bool, device: torch.device) -> nn.Module:
    """The module the training step calls: DDP's wrapper, or the (already sharded) model itself."""
    if enabled and strategy == "ddp":
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


@contextlib.contextmanager
def gradient_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce / reduce-scatter of a micro-batch that is not the last of its step."""
    if sync:
        yield
    elif isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def is_sharded(model: nn.Module) -> bool:
    return any(_is_dtensor(p) for p in model.parameters())


def full_norm(norm: torch.Tensor) -> float:
    """A gradient norm as a float, gathering it first when FSDP returned a distributed tensor."""
    return (norm.full_tensor() if _is_dtensor(norm) else norm).item()


def parameters_finite(model: nn.Module) -> bool:
    """Whether every parameter of `model` is finite on this rank (its shard of each, when sharded)."""
    local = [p.to_local() if _is_dtensor(p) else p for p in model.parameters()]
    return bool(torch.stack([torch.isfinite(t).all() for t in local]).all()) if local else True


def model_state(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """Full weights on the CPU for `save_pretrained`: on rank 0 only when sharded (collective), else `None`
    (the model's own state dict is then used)."""
    if not is_sharded(model):
        return None
    return get_model_state_dict(model, options=_FULL)


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state keyed by parameter name, full tensors on the CPU (collective when sharded;
    complete on rank 0)."""
    return get_optimizer_state_dict(model, optimizer, options=_FULL)


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Restore `optimizer_state`'s output (on every rank; each takes its shard when sharded)."""
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def _transformer_blocks(model: nn.Module) -> list[nn.Module]:
    base = getattr(model, "transformer", None)
    blocks = getattr(base, "h", None)
    if not isinstance(blocks, nn.ModuleList):
        raise KronyptError(f"FSDP needs a GPT-2-style model with transformer.h blocks, not {type(model).__name__}")
    return list(blocks)


def _is_dtensor(tensor: torch.Tensor) -> bool:
    return isinstance(tensor, DTensor)
