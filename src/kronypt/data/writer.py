"""Atomic output of a token folder: `train.bin`, `val.bin` and `meta.json`.

Everything is written under temporary names (`*.partial`) in the output folder, flushed to disk, and
renamed into place only at the end, `meta.json` last. A folder counts as prepared only when `meta.json`
exists and the `.bin` sizes match its token counts (checked by `kronypt.data.tokens`), so a run killed at
any point leaves nothing that looks complete; an exception removes the partial files, and a folder being
replaced (`force`) keeps its earlier files until the new ones are renamed into place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np

SPLITS = ("train", "val")
META_NAME = "meta.json"
PARTIAL_SUFFIX = ".partial"
OUTPUT_NAMES = (META_NAME, *(f"{split}.bin" for split in SPLITS))


class TokenFolderWriter:
    """Append uint16 tokens to the train/val files of a new token folder; `commit(meta)` publishes them.

    Use as a context manager: leaving the block with an exception deletes the partial files.
    """

    def __init__(self, out_dir: Path, force: bool = False) -> None:
        self.out_dir = Path(out_dir)
        _claim_out_dir(self.out_dir, force)
        self.tokens = dict.fromkeys(SPLITS, 0)
        self._files: dict[str, BinaryIO] = {
            split: (self.out_dir / f"{split}.bin{PARTIAL_SUFFIX}").open("wb") for split in SPLITS
        }

    def write(self, split: str, tokens: np.ndarray) -> None:
        """Append a uint16 token array to `split` ('train' or 'val')."""
        self._files[split].write(np.ascontiguousarray(tokens, dtype=np.uint16).tobytes())
        self.tokens[split] += len(tokens)

    def commit(self, meta: dict[str, Any]) -> None:
        """Flush and rename the token files, then write and rename meta.json (the completion marker).

        A folder prepared before (`force`) stays whole until here: its meta.json goes once the new files are
        on disk and before any of them is renamed, so that no half-replaced folder ever looks complete."""
        for handle in self._files.values():
            _close_synced(handle)
        (self.out_dir / META_NAME).unlink(missing_ok=True)  # the earlier output, if any, stops being complete
        _sync_dir(self.out_dir)
        for split, handle in self._files.items():
            os.replace(handle.name, self.out_dir / f"{split}.bin")
        meta_partial = self.out_dir / f"{META_NAME}{PARTIAL_SUFFIX}"
        with meta_partial.open("w", encoding="utf-8") as handle:
            json.dump(meta, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(meta_partial, self.out_dir / META_NAME)
        _sync_dir(self.out_dir)

    def abort(self) -> None:
        """Close and delete the partial files (meta.json's too, when `commit` failed while writing it)."""
        for handle in self._files.values():
            handle.close()
            Path(handle.name).unlink(missing_ok=True)
        (self.out_dir / f"{META_NAME}{PARTIAL_SUFFIX}").unlink(missing_ok=True)

    def __enter__(self) -> TokenFolderWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if exc_type is not None:
            self.abort()


def _claim_out_dir(out_dir: Path, force: bool) -> None:
    """Create the folder, or refuse a non-empty one unless forced. Forcing removes only the partial files
    of an earlier killed run: a complete earlier output is replaced at `commit`, so a run that fails or is
    interrupted leaves it as it was."""
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"output {out_dir} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not any(out_dir.iterdir()):
        return
    if not force:
        raise FileExistsError(f"output folder {out_dir} is not empty; pass --force to replace its "
                              f"{', '.join(OUTPUT_NAMES)}")
    for name in OUTPUT_NAMES:
        (out_dir / f"{name}{PARTIAL_SUFFIX}").unlink(missing_ok=True)


def _close_synced(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()


def _sync_dir(path: Path) -> None:
    """Make the renames durable (POSIX only; other systems do not open folders)."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
