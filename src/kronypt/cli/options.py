"""Parsers and checks shared by several commands."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from kronypt.defaults import AUTO_DTYPE
from kronypt.errors import KronyptError
from kronypt.files import apply_umask

if TYPE_CHECKING:
    import torch

MODEL_HELP = ("A local folder, a .gguf file, a packaged model (smollm2-135m) or a hub id (gpt2, "
              "HuggingFaceTB/SmolLM2-135M).")
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
    from kronypt.models.loading import DTYPES

    if name == AUTO_DTYPE:
        return None
    if name not in DTYPES:
        raise KronyptError(f"unknown --dtype {name!r}; choose one of {', '.join((AUTO_DTYPE, *DTYPES))}")
    return DTYPES[name]


def check_out_dir(out: Path, force: bool, source: Path | None = None) -> None:
    """Refuse a non-empty output folder unless forced, one that cannot be written or cannot be a folder (a
    symbolic link to nothing), or the `source` model folder itself (with --force, a typo would replace the
    model being read). Nothing is written here, except that a replacement of `out` that a killed process
    left half done is rolled back first. What `out` holds is recorded: `staged` refuses to move its result
    in if that changed meanwhile."""
    check_out_path(out)
    if out.exists() and not out.is_dir():
        raise KronyptError(f"output {out} exists and is not a folder")
    if source is not None and out.resolve() == Path(source).resolve():
        raise KronyptError(f"--out {out} is the model folder being read; write the result to another folder")
    check_writable(out.resolve().parent, f"--out {out}")  # the staging folder is written beside it
    if out.is_dir():  # and its files are moved into it
        check_writable(out.resolve(), f"--out {out}")
    recover_replacements(out.resolve())
    if out.is_dir() and any(out.iterdir()) and not force:
        raise KronyptError(f"output folder {out} is not empty; pass --force to replace the model files in it")
    _checked[out.resolve()] = _model_state(out.resolve())


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


# What a saved model folder is made of (with its tokenizer's files): `--force` replaces these and leaves
# every other file alone.
MODEL_FILES = ("config.json", "generation_config.json", "compression_report.json", "added_tokens.json")
MODEL_FILE_PATTERNS = ("model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin",
                       "pytorch_model.bin.index.json")


STAGING, BACKUP = "partial", "replaced"  # .OUT.partial-PID-XXXX: the new model; .OUT.replaced-PID-XXXX: the old
JOURNAL = "kronypt-replacement.json"  # in a backup folder: the staging folder and the names it moves in
_checked: dict[Path, dict[str, tuple[int, int, int]] | None] = {}  # out -> its model files at check_out_dir


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A staging folder of this process's own to write the output into; moved into `out` when the block
    succeeds, removed when it fails or is interrupted (a half-written model must not stay behind, even
    hidden). The move is refused if `out` changed since `check_out_dir` (or, without that, since now)."""
    out = out.resolve()
    expected = _checked.pop(out) if out in _checked else _model_state(out)
    tmp = staging_dir(out)
    try:
        yield tmp
        replace_dir(tmp, out, expected)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def staging_dir(out: Path) -> Path:
    """A new sibling folder of `out` (which may be `.`) to write into before `replace_dir`: unique to this
    process and call, so that two commands writing the same --out never share one."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.{STAGING}-{os.getpid()}-", dir=out.parent))


def replace_dir(tmp: Path, out: Path, expected: dict[str, tuple[int, int, int]] | None) -> None:
    """Move a fully written staging folder's files into `out`, which must still hold what it held when the
    command checked it (`expected`, `_model_state`; None: no folder): a new folder is renamed into place;
    in an existing one (`--force`) the model files are swapped (`_swap`), any other file stays, as does the
    folder itself (it may be the shell's current one). The new files get the modes the umask gives."""
    apply_umask(tmp)
    if _model_state(out) != expected:
        raise KronyptError(f"--out {out} was {'created' if expected is None else 'changed'} by another process "
                           "while this one ran; nothing was saved: rerun with another --out, or with --force to "
                           "replace it")
    if expected is None:
        try:
            tmp.rename(out)  # never over a folder that is not empty
        except OSError:
            raise KronyptError(f"--out {out} was created by another process while this one ran; nothing was "
                               "saved: rerun with another --out, or with --force to replace it") from None
        return
    _swap(tmp, out)


def _swap(tmp: Path, out: Path) -> None:
    """Replace the model files of `out` by the entries of `tmp` so that the earlier model stays complete until
    the new one is: its files (and any entry a new one would replace) move into a backup folder beside
    `out`, the new ones move in, and the backup goes. A journal written first lets `_roll_back` restore the
    earlier model wherever this stops: here on an error, or at the next `check_out_dir` after a kill."""
    backup = Path(tempfile.mkdtemp(prefix=f".{out.name}.{BACKUP}-{os.getpid()}-", dir=out.parent))
    new = sorted(entry.name for entry in tmp.iterdir())
    _write_synced(backup / JOURNAL, json.dumps({"staging": tmp.name, "new": new}))
    try:
        displaced = {*_model_files(out), *(out / name for name in new if os.path.lexists(out / name))}
        for path in sorted(displaced):
            os.replace(path, backup / path.name)
        for name in new:
            os.replace(tmp / name, out / name)
    except BaseException:
        _roll_back(backup, out)
        raise
    (backup / JOURNAL).unlink()  # from here on the new model stands: the backup is only removed
    shutil.rmtree(backup)
    tmp.rmdir()


def _roll_back(backup: Path, out: Path) -> None:
    """Undo a `_swap` that stopped anywhere: the new files go back into the staging folder, the earlier
    ones back into `out`, then both hidden folders go. Safe to repeat after a kill in the middle of it."""
    journal = json.loads((backup / JOURNAL).read_text())
    staging = out.parent / journal["staging"]
    for name in journal["new"]:
        if not os.path.lexists(staging / name):
            os.replace(out / name, staging / name)
    for entry in backup.iterdir():
        if entry.name != JOURNAL:
            os.replace(entry, out / entry.name)
    (backup / JOURNAL).unlink()
    shutil.rmtree(backup)
    shutil.rmtree(staging, ignore_errors=True)


def recover_replacements(out: Path) -> None:
    """Clear what processes killed while writing `out` left beside it: a replacement stopped halfway is rolled
    back (`_roll_back`: the earlier model returns), staging folders are removed. Folders of processes that
    still run are left alone."""
    if not out.parent.is_dir():
        return
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.({STAGING}|{BACKUP})-(\d+)-")
    found = [(match[1], path) for path in out.parent.iterdir()
             if (match := pattern.match(path.name)) and not _running(int(match[2]))]
    for kind, path in sorted(found, key=lambda item: item[0] != BACKUP):  # backups first: they need staging
        if kind == BACKUP and (path / JOURNAL).is_file():
            _roll_back(path, out)
        shutil.rmtree(path, ignore_errors=True)


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _model_state(out: Path) -> dict[str, tuple[int, int, int]] | None:
    """(inode, size, mtime) of each model file in `out`; None when there is no such folder."""
    if not out.is_dir():
        return None
    return {path.name: (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            for path in _model_files(out) for stat in (path.stat(),)}


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _model_files(folder: Path) -> list[Path]:
    from kronypt.models.tokenizers import TOKENIZER_FILES

    found = {folder / name for name in (*MODEL_FILES, *TOKENIZER_FILES) if (folder / name).is_file()}
    for pattern in MODEL_FILE_PATTERNS:
        found.update(p for p in folder.glob(pattern) if p.is_file())
    return sorted(found)
