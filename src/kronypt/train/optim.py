"""AdamW with decay / no-decay parameter groups, and the learning-rate schedules of the recipes.

Weight decay applies to matrices (dense weights and the Kronecker factors A, B) and, by default, not to
biases, LayerNorm parameters, embeddings or Kronecker scalars; `OptimArgs.no_decay` picks which kinds
are exempt. Schedules are multipliers of the peak LR, so a resumed `LambdaLR` continues exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from kronypt.nn import KroneckerLinear
from kronypt.train.args import OptimArgs


def parameter_kind(module: nn.Module, name: str, param: nn.Parameter) -> str:
    """'bias', 'norm', 'embedding', 'scalars' or 'weight' for one parameter of `module`."""
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, nn.LayerNorm) or "norm" in type(module).__name__.lower():
        return "norm"
    if isinstance(module, KroneckerLinear) and name == "scalars":
        return "scalars"
    if name == "bias" or param.ndim < 2:
        return "bias"
    return "weight"


def param_groups(model: nn.Module, args: OptimArgs) -> list[dict]:
    """Trainable parameters split into a decayed and an undecayed group (tied tensors listed once)."""
    seen: set[int] = set()
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            kind = parameter_kind(module, name, param)
            (no_decay if kind in args.no_decay else decay).append(param)
    return [{"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, args: OptimArgs, fused: bool = False) -> torch.optim.AdamW:
    """AdamW over `param_groups`; `fused` uses the fused CUDA kernel."""
    groups = [g for g in param_groups(model, args) if g["params"]]
    return torch.optim.AdamW(groups, lr=args.lr, betas=tuple(args.betas), eps=args.eps,
                             **({"fused": True} if fused else {}))


def lr_multiplier(args: OptimArgs, max_steps: int) -> Callable[[int], float]:
    """step -> LR / peak LR for the chosen schedule.

    constant: linear warm-up, then 1. cosine: linear warm-up, then cosine from 1 to min_lr/lr at index
    max_steps, one past the last step (the convention of PyTorch's CosineAnnealingLR and transformers'
    cosine schedule: the last step trains just above min_lr). wsd (warm-up, stable, decay): warm-up, flat,
    then linear down to min_lr/lr at the last step over the last `decay_fraction` of the steps (0: no decay).
    """
    warmup = args.warmup_steps
    floor = args.min_lr / args.lr if args.lr > 0 else 0.0

    def warm(step: int) -> float | None:
        return (step + 1) / warmup if step < warmup else None

    def constant(step: int) -> float:
        return warm(step) or 1.0

    def cosine(step: int) -> float:
        if step < warmup:
            return warm(step)
        progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def wsd(step: int) -> float:
        if step < warmup:
            return warm(step)
        if args.decay_fraction == 0:
            return 1.0
        decay_steps = max(1, round(args.decay_fraction * max_steps))
        decay_start = max_steps - decay_steps
        if step < decay_start:
            return 1.0
        return 1.0 - (1.0 - floor) * min(1.0, (step - decay_start + 1) / decay_steps)

    return {"constant": constant, "cosine": cosine, "wsd": wsd}[args.schedule]


def build_scheduler(optimizer: torch.optim.Optimizer, args: OptimArgs, max_steps: int
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over `lr_multiplier`; its state (the step) goes into checkpoints."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(args, max_steps))


def restart_schedule(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR) -> list[float]:
    """Set each group's LR to this step's value of `scheduler`'s own schedule, and return them: a loaded
    checkpoint's last LR comes from its schedule, which differs where max_steps changed (cosine, wsd)."""
    lrs = [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)]
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler._last_lr = lrs
    return lrs
