"""Atomic training checkpoints: the model in Hugging Face format plus the state to resume exactly.

Layout of `OUT/checkpoints/step-00000100/`:
    model/              save_pretrained output (config.json, model.safetensors): loads with `kronypt.load_model`
    trainer_state.pt    optimizer, scheduler, step, tokens, data-sampler state, RNG states of every rank
    checkpoint.json     written last: step, tokens, val_loss, the size and SHA-256 of every file above, and
                        its own SHA-256 (checked whenever a checkpoint is loaded)

A checkpoint is written into a hidden temporary folder, every file and folder is fsynced, and only then
is the folder renamed into place, so a crash never leaves a folder that looks complete. The newest
`keep_last` checkpoints are kept plus the one with the lowest validation loss; `OUT/best` and
`OUT/latest` are symlinks to them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel
from transformers.utils import logging as hf_logging

from kronypt.data.sources import sha256_file
from kronypt.errors import KronyptError
from kronypt.files import apply_umask
from kronypt.models.tokenizers import save_tokenizer

STEP_DIR = re.compile(r"^step-(\d{8})$")
STATE_FILE = "trainer_state.pt"
INDEX_FILE = "checkpoint.json"


def checkpoint_root(out: str | Path) -> Path:
    return Path(out) / "checkpoints"


def list_checkpoints(out: str | Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first (temporary folders are not listed)."""
    root = checkpoint_root(out)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name))


def read_index(path: Path, under: str = "") -> dict[str, Any]:
    """checkpoint.json of a checkpoint, after checking it against its own digest and every file it lists
    (those whose name starts with `under`: "model/" for the model folder alone) against the recorded size
    and SHA-256, so that damage inside a file of the right size is refused, naming the file."""
    try:
        index = json.loads((path / INDEX_FILE).read_text())
        recorded = index.pop("sha256")
        files = {name: (int(entry["bytes"]), str(entry["sha256"])) for name, entry in index["files"].items()}
        int(index["step"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise KronyptError(f"corrupt checkpoint {path}: missing or unreadable {INDEX_FILE}; "
                           "delete it to resume from an earlier one") from None
    if recorded != _digest(index):
        raise KronyptError(f"corrupt checkpoint {path}: {INDEX_FILE} does not match its recorded SHA-256; "
                           "delete it to resume from an earlier one")
    for name, (size, sha256) in files.items():
        file = path / name
        if not name.startswith(under):
            continue
        if not file.is_file() or file.stat().st_size != size:
            raise KronyptError(f"corrupt checkpoint {path}: {name} is missing or has the wrong size; "
                               "delete it to resume from an earlier one")
        if sha256_file(file) != sha256:
            raise KronyptError(f"corrupt checkpoint {path}: {name} does not match the SHA-256 recorded when it "
                               "was saved (damaged since); delete it to resume from an earlier one")
    return index


def check_model_folder(model_dir: str | Path) -> None:
    """Where `model_dir` is the model/ folder of a checkpoint (a run started from `RUN/best/model`, or a
    teacher), check its files against the checkpoint's record; any other folder or hub id passes."""
    path = Path(model_dir).expanduser()
    if path.name == "model" and (path.parent / INDEX_FILE).is_file():
        read_index(path.parent, under="model/")


def _digest(index: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(index, sort_keys=True).encode()).hexdigest()


def load_state(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """(model folder, trainer state) of a checkpoint, with a one-line error if it is missing or corrupt."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    read_index(path)
    try:
        # Memory-mapped: the ranks of one node share the page cache instead of each copying the optimizer state.
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # any unpickling failure means the file is damaged
        raise KronyptError(f"corrupt checkpoint {path}: cannot read {STATE_FILE} ({type(exc).__name__}); "
                           "delete it to resume from an earlier one") from None
    return path / "model", state


def save_checkpoint(out: str | Path, step: int, model: PreTrainedModel, state: dict[str, Any],
                    val_loss: float | None, keep_last: int, tokenizer_dir: str | Path | None = None,
                    weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a checkpoint atomically, update the best/latest links and drop old checkpoints.

    With `tokenizer_dir`, its tokenizer files go next to the weights, so the model folder stands alone;
    `weights` replaces the model's own state dict (the full weights of a sharded model).
    """
    root = checkpoint_root(out)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one bar per checkpoint would drown the training bar
    try:
        model.save_pretrained(tmp / "model", safe_serialization=True, state_dict=weights)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if tokenizer_dir is not None:
        save_tokenizer(tokenizer_dir, tmp / "model")
    torch.save(state, tmp / STATE_FILE)
    apply_umask(tmp)  # save_pretrained's model.safetensors is 0600: readable by its owner alone
    write_index(tmp, step, state.get("tokens"), val_loss)
    _fsync_tree(tmp)
    if final.exists():  # the same step saved twice (e.g. a save step that was also interrupted)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    _prune(out, keep_last)
    return final


def write_index(path: Path, step: int, tokens: int | None, val_loss: float | None) -> None:
    """Write checkpoint.json into the checkpoint folder `path`: the size and SHA-256 of every file in it, then
    the digest of the index itself."""
    files = {str(p.relative_to(path)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(path.rglob("*")) if p.is_file() and p.name != INDEX_FILE}
    index = {"step": step, "tokens": tokens, "val_loss": val_loss, "files": files}
    (path / INDEX_FILE).write_text(json.dumps({**index, "sha256": _digest(index)}, indent=2))


def best_checkpoint(out: str | Path) -> Path | None:
    """The checkpoint with the lowest recorded validation loss, if any was evaluated."""
    scored = _scored(out)
    return min(scored)[1] if scored else None


def best_val_loss(out: str | Path) -> float:
    """The lowest validation loss among the run's checkpoints (inf when none was evaluated)."""
    return min((loss for loss, _ in _scored(out)), default=math.inf)


def _scored(out: str | Path) -> list[tuple[float, Path]]:
    """(val_loss, checkpoint) of the checkpoints with a finite validation loss: a NaN is never the best."""
    return [(index["val_loss"], path) for path, index in _indexes(out)
            if isinstance(index.get("val_loss"), (int, float)) and math.isfinite(index["val_loss"])]


def latest_checkpoint(out: str | Path) -> Path | None:
    found = list_checkpoints(out)
    return found[-1] if found else None


def clean_partial(out: str | Path) -> None:
    """Remove temporary folders left by a run killed while saving."""
    root = checkpoint_root(out)
    if root.is_dir():
        for path in root.glob(".tmp-step-*"):
            shutil.rmtree(path, ignore_errors=True)


def rng_state() -> dict[str, Any]:
    """RNG states of this process: torch CPU, every CUDA device, NumPy and Python's random."""
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937", "has_gauss": np_state["has_gauss"],
                         "gauss": np_state["gauss"],
                         "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]}})
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def restore_rng(saved: list[dict[str, Any]], rank: int, seed: int, step: int) -> None:
    """Restore this rank's RNG states from a checkpoint's list (one per rank of the run that saved it).

    A rank the checkpoint has no state for (resumed on more ranks) takes rank 0's states with a torch stream
    of its own, derived from (seed, step, rank): otherwise every new rank would draw rank 0's dropout masks."""
    if rank < len(saved):
        set_rng_state(saved[rank])
        return
    set_rng_state(saved[0])
    torch.manual_seed((seed * 1_000_003 + step * 1_009 + rank) % 2**63)


def _indexes(out: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    result = []
    for path in list_checkpoints(out):
        try:
            result.append((path, json.loads((path / INDEX_FILE).read_text())))
        except (OSError, ValueError):
            continue  # a damaged checkpoint is never best; loading it reports the damage
    return result


def drop_after(out: str | Path, step: int) -> list[Path]:
    """Delete the checkpoints past `step` and re-point `latest` and `best`; the deleted folders.

    A run resumed from an earlier checkpoint replaces them, as it replaces their metric records: left in
    place, `latest`/`best` and the next `--resume auto` would go back to the abandoned run.
    """
    later = [p for p in list_checkpoints(out) if int(STEP_DIR.match(p.name)[1]) > step]
    for path in later:
        shutil.rmtree(path)
    if later:
        _relink(out)
    return later


def _prune(out: str | Path, keep_last: int) -> None:
    found = list_checkpoints(out)
    best = best_checkpoint(out)
    keep = set(found[-keep_last:]) | ({best} if best else set())
    for path in found:
        if path not in keep:
            shutil.rmtree(path, ignore_errors=True)
    _relink(out)


def _relink(out: str | Path) -> None:
    """`latest` and `best` point at the newest and the best remaining checkpoint (gone when there is none)."""
    found, best = list_checkpoints(out), best_checkpoint(out)
    for name, target in (("latest", found[-1] if found else None), ("best", best)):
        link = Path(out) / name
        if target is not None:
            _link(link, target)
        elif link.is_symlink():
            link.unlink()


def _link(link: Path, target: Path) -> None:
    """Point `link` at `target` (relative), replacing any old link atomically."""
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(os.path.relpath(target, link.parent))
    os.replace(tmp, link)


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        else:
            _fsync_dir(path)
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
