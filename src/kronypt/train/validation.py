"""The validation loss of a run: token-weighted mean cross-entropy on the first batches of val.bin, shared
out over the ranks, the same number whatever their count."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from kronypt.data.tokens import sequential_batches
from kronypt.train import distributed


@torch.no_grad()
def val_loss(model: torch.nn.Module, tokens: np.ndarray, micro_batch_size: int, seq_len: int, batches: int,
             env: distributed.DistEnv, device: torch.device,
             autocast: Callable[[], contextlib.AbstractContextManager], sharded: bool) -> float:
    """The mean loss per token of `model` on the first `batches` batches of `tokens`: rank r scores batches
    r, r + ranks, ...; a `sharded` model needs every rank in every forward, so ranks left without a batch
    in the last round score one more time, uncounted."""
    model.eval()
    total = count = 0.0
    val = list(sequential_batches(tokens, micro_batch_size, seq_len, batches))
    rounds = -(-len(val) // env.world_size)
    for i in range(env.rank, rounds * env.world_size if sharded else len(val), env.world_size):
        x, y = val[min(i, len(val) - 1)]
        with autocast():
            logits = model(input_ids=x.to(device)).logits
        if i < len(val):  # a padding round's batch is not counted
            total += F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten(), reduction="sum").item()
            count += y.numel()
    model.train()
    total, count = distributed.sum_across_ranks([total, count], device)
    return total / count
