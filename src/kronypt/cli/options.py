"""Parsers and checks shared by several commands."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch

from kronypt.errors import KronyptError
from kronypt.files import apply_umask
from kronypt.models.loading import AUTO_DTYPE, DTYPES, TOKENIZER_FILES

SAVE_DTYPE_HELP = ("dtype of the saved weights: auto (the source checkpoint's, e.g. bfloat16 stays bfloat16), "
                   "float32, bfloat16 or float16.")


def run_dtype(name: str | None, device: torch.device) -> str:
    """The dtype a command runs a model in: `name` when given, else bfloat16 on a GPU and float32 elsewhere."""
    return name or ("bfloat16" if device.type == "cuda" else "float32")


def parse_layers(spec: str | None) -> list[int] | None:
    """'0-5,8' -> [0, 1, 2, 3, 4, 5, 8]; None or 'all' -> None (every block)."""
    if spec is None or spec.strip().lower() == "all":
        return None
    layers: list[int] = []
    try:
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            first, last = int(lo), int(hi or lo)
            if last < first:
                raise ValueError
            layers.extend(range(first, last + 1))
    except ValueError:
        raise KronyptError(f"cannot read layers {spec!r}: expected e.g. 'all', '0-5' or '0,2,4-7' "
                           "(ranges LO-HI with LO <= HI)") from None
    return list(dict.fromkeys(layers))


def parse_save_dtype(name: str) -> torch.dtype | None:
    """`--dtype` of a command that writes a model: None for auto (keep the source checkpoint's dtype), else
    the torch dtype to save in; checked before any work."""
    if name == AUTO_DTYPE:
        return None
    if name not in DTYPES:
        raise KronyptError(f"unknown --dtype {name!r}; choose one of {', '.join((AUTO_DTYPE, *DTYPES))}")
    return DTYPES[name]


def check_out_dir(out: Path, force: bool, source: Path | None = None) -> None:
    """Refuse a non-empty output folder unless forced, one that cannot be written or cannot be a folder (a
    symbolic link to nothing), or the `source` model folder itself (with --force, a typo would replace the
    model being read); never change it here."""
    check_out_path(out)
    if out.exists() and not out.is_dir():
        raise KronyptError(f"output {out} exists and is not a folder")
    if source is not None and out.resolve() == Path(source).resolve():
        raise KronyptError(f"--out {out} is the model folder being read; write the result to another folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise KronyptError(f"output folder {out} is not empty; pass --force to replace the model files in it")
    check_writable(out.resolve().parent, f"--out {out}")  # the staging folder is written beside it
    if out.is_dir():  # and its files are moved into it
        check_writable(out.resolve(), f"--out {out}")


def check_out_path(out: Path, what: str = "--out") -> None:
    """Refuse an output path that cannot become a folder before any work: a symbolic link whose target does
    not exist (writing through it would create the target's parent folders, or fail at the end)."""
    if out.is_symlink() and not out.exists():
        raise KronyptError(f"{what} {out} is a symbolic link to {os.readlink(out)}, which does not exist; remove "
                           "the link or give another folder")


def check_writable(folder: Path, what: str) -> None:
    """Whether files can be created in `folder` (or, where it does not exist yet, in its nearest existing
    ancestor, under which it would be made): a probe file is created and removed, so that a read-only,
    missing or virtual location is refused in one line before any work, not by a raw OS error about a
    temporary name at the end."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise KronyptError(f"cannot write {what}: {existing} is a file, not a folder")
    probe = existing / f".kronypt-probe-{os.getpid()}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise KronyptError(f"cannot write {what}: {exc.strerror or exc} in {existing}") from None


def check_json_file(path: Path | None) -> None:
    """A `--json FILE` must be writable before any work starts; None and '-' (stdout) need no check."""
    if path is None or str(path) == "-":
        return
    if str(path).startswith("--"):  # `--json --max-tokens 500` took the next option as the file name
        raise KronyptError(f"--json takes a file name, or '-' to print JSON instead of the table; got {str(path)!r}")
    if path.is_dir():
        raise KronyptError(f"cannot write --json {path}: it is a folder; give a file name")
    if not path.resolve().parent.is_dir():
        raise KronyptError(f"cannot write --json {path}: folder {path.resolve().parent} does not exist")
    check_writable(path.resolve().parent, f"--json {path}")


# What a saved model folder is made of: `--force` replaces these and leaves every other file alone.
MODEL_FILES = ("config.json", "generation_config.json", "compression_report.json", "added_tokens.json",
               *TOKENIZER_FILES)
MODEL_FILE_PATTERNS = ("model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin",
                       "pytorch_model.bin.index.json")


def replace_dir(tmp: Path, out: Path) -> None:
    """Move a fully written temporary folder's files into `out`: a new folder is renamed into place; in an
    existing one (`--force`) the previous model's files go first (so no stale shard is left beside the new
    weights) and any other file stays, as does the folder itself (it may be the shell's current one). The new
    files get the modes the umask gives (`apply_umask`)."""
    apply_umask(tmp)
    if not out.exists():
        tmp.rename(out)
        return
    for path in _model_files(out):
        path.unlink()
    for entry in tmp.iterdir():
        if (out / entry.name).is_dir():
            shutil.rmtree(out / entry.name)
        entry.replace(out / entry.name)
    tmp.rmdir()


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A staging folder to write the output into; moved into `out` when the block succeeds, removed when
    it fails or is interrupted (a half-written model must not stay behind, even hidden)."""
    tmp = staging_dir(out)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out)


def staging_dir(out: Path) -> Path:
    """A fresh sibling folder to write into before `replace_dir` (`out` may be `.`)."""
    out = out.resolve()
    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    return tmp


def _model_files(folder: Path) -> list[Path]:
    found = {folder / name for name in MODEL_FILES if (folder / name).is_file()}
    for pattern in MODEL_FILE_PATTERNS:
        found.update(p for p in folder.glob(pattern) if p.is_file())
    return sorted(found)
