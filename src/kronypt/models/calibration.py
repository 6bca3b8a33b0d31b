"""Calibration: a few thousand tokens run through a model to see what its MLP matrices are fed and how the loss
moves, for activation-aware fits, sensitivity allocation and choosing blocks to drop.

    calibration = load_calibration("data/gutenberg-smollm2", tokens=32768)     # a token folder, or a text file
    moments = second_moments(model, layout.sites(), calibration)              # {path: XᵀX / tokens}
    mean_loss(model, calibration)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PretrainedConfig

from kronypt.data.tokens import open_tokens, read_meta
from kronypt.defaults import CALIBRATION_TOKENS as DEFAULT_TOKENS
from kronypt.errors import KronyptError
from kronypt.models.configuration import config_context_length
from kronypt.models.families import Family, MlpSite

SEQ_LEN = 1024


@dataclass(frozen=True)
class Calibration:
    """Calibration token windows (sequences, seq_len), and where they came from."""

    tokens: torch.Tensor
    source: str

    @property
    def count(self) -> int:
        return self.tokens.numel()

    def batches(self, batch_size: int = 4) -> Iterator[torch.Tensor]:
        for start in range(0, self.tokens.shape[0], batch_size):
            yield self.tokens[start: start + batch_size]


def calibration_window(config: PretrainedConfig) -> int:
    """The calibration window length for a model: SEQ_LEN, or its context length where that is shorter."""
    return min(SEQ_LEN, config_context_length(config) or SEQ_LEN)


def load_calibration(source: str | Path, tokens: int = DEFAULT_TOKENS, seq_len: int = SEQ_LEN,
                     tokenizer=None, seed: int = 0) -> Calibration:
    """`tokens` calibration tokens as windows of `seq_len`: seeded random windows of a token folder's train split,
    or the start of a text file tokenised with `tokenizer` (the model's)."""
    path = Path(source).expanduser()
    windows = max(1, tokens // seq_len)
    if path.is_dir():
        data = open_tokens(path, "train")
        if len(data) < seq_len + 1:
            raise KronyptError(f"{path} holds {len(data):,} training tokens, fewer than one calibration window")
        rng = np.random.default_rng(seed)
        starts = np.sort(rng.choice(len(data) - seq_len, size=windows, replace=len(data) - seq_len < windows))
        rows = np.stack([np.asarray(data[s: s + seq_len], dtype=np.int64) for s in starts])
        return Calibration(torch.from_numpy(rows), f"{path} ({read_meta(path).get('vocab_size')}-token vocabulary)")
    if not path.is_file():
        raise FileNotFoundError(f"calibration data {path} does not exist (give a token folder or a text file)")
    if tokenizer is None:
        raise KronyptError("calibration from a text file needs the model's tokenizer")
    text = path.read_text(encoding="utf-8", errors="replace")
    ids = tokenizer(text[: tokens * 16], add_special_tokens=False).input_ids[: windows * seq_len]
    if len(ids) < seq_len:
        raise KronyptError(f"{path} holds {len(ids):,} tokens, fewer than one calibration window of {seq_len}")
    usable = len(ids) // seq_len * seq_len
    return Calibration(torch.tensor(ids[:usable]).view(-1, seq_len), str(path))


def check_vocabulary(model: nn.Module, calibration: Calibration) -> None:
    """Refuse calibration tokens the model has no embedding for (another tokenizer's data)."""
    vocab = model.config.vocab_size
    highest = int(calibration.tokens.max())
    if highest >= vocab:
        raise KronyptError(f"calibration data {calibration.source} holds token id {highest}, but the model's "
                           f"vocabulary has {vocab:,}: prepare it with the model's tokenizer")


@torch.no_grad()
def mean_loss(model: nn.Module, calibration: Calibration, batch_size: int = 4) -> float:
    """The model's mean next-token loss over the calibration windows."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for ids in calibration.batches(batch_size):
            ids = ids.to(device)
            logits = model(input_ids=ids).logits[:, :-1].float()
            total += nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                 reduction="sum").item()
            count += ids[:, 1:].numel()
    finally:
        model.train(was_training)
    return total / count


@torch.no_grad()
def second_moments(model: nn.Module, sites: Sequence[MlpSite], calibration: Calibration, batch_size: int = 4,
                   progress: bool = False) -> dict[str, torch.Tensor]:
    """{path: E[x xᵀ]} (float64, (in, in)) of the inputs each MLP matrix receives on the calibration windows."""
    sums = {site.path: torch.zeros(site.in_features, site.in_features, dtype=torch.float64) for site in sites}

    def hook(path: str):
        def record(module: nn.Module, args: tuple) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            sums[path] += (x.T @ x).double().cpu()
        return record

    with _hooks(model, {site.path: hook(site.path) for site in sites}):
        _run(model, calibration, batch_size, progress, "calibrating")
    return {path: total / calibration.count for path, total in sums.items()}


@torch.no_grad()
def block_influence(model: nn.Module, family: Family, calibration: Calibration, batch_size: int = 4) -> list[float]:
    """ShortGPT's Block Influence of every block: 1 − the mean cosine similarity of a token's hidden state
    before and after the block. A block that barely turns the hidden state changes the model least."""
    blocks = model.get_submodule(family.blocks)
    totals = [0.0] * len(blocks)
    handles = []

    def hook(index: int):
        def record(module: nn.Module, args: tuple, kwargs: dict, output) -> None:
            before = (args[0] if args else kwargs["hidden_states"]).float()
            after = (output[0] if isinstance(output, tuple) else output).float()
            totals[index] += nn.functional.cosine_similarity(before, after, dim=-1).sum().item()
        return record

    for index, block in enumerate(blocks):
        handles.append(block.register_forward_hook(hook(index), with_kwargs=True))
    try:
        _run(model, calibration, batch_size, False, "block influence")
    finally:
        for handle in handles:
            handle.remove()
    return [1 - total / calibration.count for total in totals]


def _run(model: nn.Module, calibration: Calibration, batch_size: int, progress: bool, desc: str) -> None:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        batches = list(calibration.batches(batch_size))
        for ids in tqdm(batches, desc=desc, unit="batch", disable=None if progress else True, leave=False):
            model(input_ids=ids.to(device), use_cache=False)
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _hooks(model: nn.Module, hooks: dict) -> Iterator[None]:
    handles = [model.get_submodule(path).register_forward_pre_hook(fn) for path, fn in hooks.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
