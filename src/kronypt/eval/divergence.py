"""Loss on held-out token windows, and how far a model's predictions are from a reference model's (KL).

A compressed model can keep its perplexity and still predict differently from the model it came from; the mean
per-token KL(reference ‖ model) over the same windows says how much. Windows are the first `windows`
non-overlapping `seq_len` windows of a token folder's split (its validation split by default), so every model
is scored on exactly the same tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from kronypt.data.tokens import open_tokens, sequential_batches
from kronypt.eval.scoring import model_device


@dataclass(frozen=True)
class WindowScores:
    """Mean next-token loss (nats) of the model, and of the reference with the mean KL(reference ‖ model), on
    `tokens` predicted tokens of `windows` windows."""

    loss: float
    reference_loss: float | None
    kl: float | None
    tokens: int
    windows: int

    def to_json(self) -> dict:
        return asdict(self)


@torch.no_grad()
def window_scores(model: torch.nn.Module, data_dir: str | Path, reference: torch.nn.Module | None = None,
                  split: str = "val", windows: int = 32, seq_len: int = 1024, progress: bool = False) -> WindowScores:
    """Score `model` (and `reference`, when given) on the first `windows` windows of a token folder's split."""
    tokens = open_tokens(data_dir, split)
    batches = list(sequential_batches(tokens, 1, seq_len, max_batches=windows))
    device = model_device(model)
    sums = {"loss": 0.0, "reference_loss": 0.0, "kl": 0.0}
    count = 0
    states = [(m, m.training) for m in (model, reference) if m is not None]
    for m, _ in states:
        m.eval()
    try:
        for x, y in tqdm(batches, desc="window scores", unit="window", disable=None if progress else True,
                         leave=False):
            x, y = x.to(device), y.to(device)
            logp = F.log_softmax(model(input_ids=x).logits.float(), dim=-1)
            sums["loss"] += F.nll_loss(logp.flatten(0, 1), y.flatten(), reduction="sum").item()
            if reference is not None:
                ref = F.log_softmax(reference(input_ids=x.to(model_device(reference))).logits.float().to(device), -1)
                sums["reference_loss"] += F.nll_loss(ref.flatten(0, 1), y.flatten(), reduction="sum").item()
                sums["kl"] += (ref.exp() * (ref - logp)).sum().item()
            count += y.numel()
    finally:
        for m, training in states:
            m.train(training)
    with_reference = reference is not None
    return WindowScores(sums["loss"] / count, sums["reference_loss"] / count if with_reference else None,
                        sums["kl"] / count if with_reference else None, count, len(batches))
