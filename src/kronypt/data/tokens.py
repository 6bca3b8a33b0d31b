"""Read a prepared token folder and draw training batches from it (nanoGPT style).

A token folder holds `train.bin` and `val.bin` (flat token ids, uint16, or uint32 for vocabularies beyond
65,536; every document followed by the end-of-text token) and `meta.json`, which is written last and is the
proof that the folder is complete.

    tokens = open_tokens(data_dir, "train")                  # read-only np.memmap of uint16 (or uint32)
    generator = torch.Generator().manual_seed(seed + rank)   # one stream per rank; save its state to resume
    x, y = sample_batch(tokens, batch_size, seq_len, generator)

Batches are random windows of seq_len + 1 consecutive tokens (windows may cross document boundaries,
as in nanoGPT); y is x shifted by one token. Given the generator state, the batches are exactly
reproducible, so `generator.get_state()` is the whole data position of a training run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kronypt.data.writer import META_NAME, SPLITS
from kronypt.errors import KronyptError


def read_meta(data_dir: str | Path) -> dict[str, Any]:
    """The meta.json of a prepared token folder (tokenizer, vocab_size, eot_token, token counts, inputs)."""
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"token folder {path} does not exist")
    meta_path = path / META_NAME
    if not meta_path.is_file():
        raise KronyptError(f"{path} has no {META_NAME}: not a prepared token folder, or its preparation was "
                           "interrupted; run `kronypt data prepare --out " + str(path) + " --force ...`")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KronyptError(f"{meta_path} is not valid JSON ({exc}); prepare the folder again") from None
    splits = meta.get("splits") if isinstance(meta, dict) else None
    if not (isinstance(splits, dict) and set(SPLITS) <= set(splits)
            and all(isinstance(v, dict) and isinstance(v.get("file"), str) and isinstance(v.get("tokens"), int)
                    for v in splits.values())):
        raise KronyptError(f"{meta_path} is not a token folder's {META_NAME} (expected splits train and val with a "
                           "file and a token count each); prepare the folder again")
    for split in SPLITS:
        name = splits[split]["file"]
        if name in ("", ".", "..") or Path(name).name != name or "\\" in name:
            raise KronyptError(f"{meta_path}: the {split} split's file {name!r} is not a file name inside {path} "
                               "(a token folder names its own train.bin and val.bin); prepare the folder again")
    vocab_size = meta.get("vocab_size")
    if vocab_size is not None and (not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 1):
        raise KronyptError(f"{meta_path}: vocab_size must be a positive whole number, got {vocab_size!r}; prepare "
                           "the folder again")
    return meta


def fingerprint(meta: dict[str, Any]) -> str:
    """A digest of what a token folder holds: its splits' token counts, how val was split and the inputs'
    SHA-256. Equal for the same text prepared again anywhere (any workers, any copy of the vocabulary files);
    different when it was prepared from other inputs or split otherwise (another tokenizer changes the
    token counts)."""
    inputs = meta.get("inputs") if isinstance(meta.get("inputs"), list) else []
    content = {
        "splits": {name: split.get("tokens") for name, split in sorted(meta["splits"].items())},
        "val_split": meta.get("val_split"),
        "inputs": sorted((str(i.get("sha256")), str(i.get("role"))) for i in inputs if isinstance(i, dict)),
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def open_tokens(data_dir: str | Path, split: str = "train") -> np.ndarray:
    """The tokens of `split` ('train' or 'val') as a read-only memmap of the folder's dtype (an empty array if none).

    The file size is checked against meta.json, so a truncated or replaced file is refused.
    """
    if split not in SPLITS:
        raise KronyptError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    meta = read_meta(data_dir)
    dtype = file_dtype(meta)
    path = Path(data_dir).expanduser() / meta["splits"][split]["file"]
    expected = meta["splits"][split]["tokens"]
    size = path.stat().st_size if path.is_file() else None
    if size != dtype.itemsize * expected:
        found = "no file" if size is None else f"{size:,} bytes"
        raise KronyptError(f"{path} does not match {META_NAME}: {expected:,} {dtype.name} tokens expected, {found} "
                           "found; prepare the folder again")
    if expected == 0:
        return np.empty(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


TOKEN_DTYPES = ("uint16", "uint32")


def file_dtype(meta: dict[str, Any]) -> np.dtype:
    """The dtype of a token folder's .bin files (meta.json's `dtype`: uint16, or uint32 for large vocabularies)."""
    name = meta.get("dtype", "uint16")
    if name not in TOKEN_DTYPES:
        raise KronyptError(f"meta.json's dtype {name!r} is not a token file dtype ({', '.join(TOKEN_DTYPES)})")
    return np.dtype(name)


def tokenizer_source(data_dir: str | Path, meta: dict[str, Any]) -> str | None:
    """The tokenizer that made a token folder: its folder (one copied into the token folder is resolved
    against it) or tiktoken name; None when meta.json names none."""
    described = meta.get("tokenizer")
    if not isinstance(described, dict):
        return None
    folder = described.get("folder")
    if isinstance(folder, str) and folder:
        return str(Path(data_dir).expanduser() / folder) if not Path(folder).is_absolute() else folder
    name = described.get("tiktoken")
    return name if isinstance(name, str) and name else None


def check_token_ids(tokens: np.ndarray, vocab_size: int, what: str) -> None:
    """Refuse `tokens` (`what` names them in the message) holding an id of `vocab_size` or more: the model has
    no embedding for it, and the run would fail inside a step with an IndexError (or, on a GPU, a device
    assertion). Read in chunks, so a token file of billions of tokens is never copied whole into memory."""
    chunk = 1 << 26
    largest = max((int(tokens[i: i + chunk].max()) for i in range(0, len(tokens), chunk)), default=-1)
    if largest >= vocab_size:
        raise KronyptError(f"{what} holds token id {largest:,}, but the model's vocabulary has {vocab_size:,} "
                           f"tokens (ids 0..{vocab_size - 1:,}); prepare the data with the model's tokenizer")


def sample_batch(
    tokens: np.ndarray, batch_size: int, seq_len: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: x = tokens[s : s + seq_len], y = tokens[s + 1 : s + seq_len + 1] for batch_size
    start offsets s drawn uniformly with the (CPU) `generator`; int64 tensors of shape (batch_size, seq_len)."""
    _require_one_window(tokens, seq_len)
    starts = torch.randint(len(tokens) - seq_len, (batch_size,), generator=generator).numpy()
    return _windows(tokens, starts, seq_len)


def sequential_batches(
    tokens: np.ndarray, batch_size: int, seq_len: int, max_batches: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Non-overlapping windows from the start, in order (for a deterministic validation loss);
    the last batch may be smaller, and a tail shorter than a window is left out."""
    _require_one_window(tokens, seq_len)
    n_windows = (len(tokens) - 1) // seq_len
    starts = np.arange(n_windows) * seq_len
    for number, first in enumerate(range(0, n_windows, batch_size)):
        if max_batches is not None and number >= max_batches:
            return
        yield _windows(tokens, starts[first: first + batch_size], seq_len)


def _require_one_window(tokens: np.ndarray, seq_len: int) -> None:
    if len(tokens) < seq_len + 1:
        raise KronyptError(f"{len(tokens):,} tokens are too few for one window of seq_len {seq_len} "
                           f"(needs {seq_len + 1:,}); use a shorter --seq-len or more data")


def _windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.from_numpy(tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64))
    return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
