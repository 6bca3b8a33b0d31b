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
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np

SPLITS = ("train", "val")
META_NAME = "meta.json"
TOKENIZER_FOLDER = "tokenizer"  # a Hugging Face tokenizer the tokens were made with, kept beside them
PARTIAL_SUFFIX = ".partial"
OUTPUT_NAMES = (META_NAME, *(f"{split}.bin" for split in SPLITS), TOKENIZER_FOLDER)


class TokenFolderWriter:
    """Append tokens (`dtype`: uint16, or uint32 for larger vocabularies) to the train/val files of a new token
    folder, and optionally a folder of files beside them; `commit(meta)` publishes them.

    Use as a context manager: leaving the block with an exception deletes the partial files.
    """

    def __init__(self, out_dir: Path, force: bool = False, dtype: type[np.unsignedinteger] = np.uint16) -> None:
        self.out_dir = Path(out_dir)
        _claim_out_dir(self.out_dir, force)
        self.dtype = dtype
        self.tokens = dict.fromkeys(SPLITS, 0)
        self._folders: list[str] = []
        self._files: dict[str, BinaryIO] = {
            split: (self.out_dir / f"{split}.bin{PARTIAL_SUFFIX}").open("wb") for split in SPLITS
        }

    def write(self, split: str, tokens: np.ndarray) -> None:
        """Append a token array to `split` ('train' or 'val')."""
        self._files[split].write(np.ascontiguousarray(tokens, dtype=self.dtype).tobytes())
        self.tokens[split] += len(tokens)

    def add_folder(self, name: str, files: dict[str, bytes]) -> None:
        """A folder of files to publish with the tokens (renamed into place at `commit`, before meta.json)."""
        partial = self.out_dir / f"{name}{PARTIAL_SUFFIX}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        for file, data in files.items():
            (partial / file).write_bytes(data)
        self._folders.append(name)

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
        shutil.rmtree(self.out_dir / TOKENIZER_FOLDER, ignore_errors=True)  # an earlier output's, replaced or gone
        for name in self._folders:
            os.replace(self.out_dir / f"{name}{PARTIAL_SUFFIX}", self.out_dir / name)
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
        for name in self._folders:
            shutil.rmtree(self.out_dir / f"{name}{PARTIAL_SUFFIX}", ignore_errors=True)
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
        partial = out_dir / f"{name}{PARTIAL_SUFFIX}"
        shutil.rmtree(partial) if partial.is_dir() else partial.unlink(missing_ok=True)


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
