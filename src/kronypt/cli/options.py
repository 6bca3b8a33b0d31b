"""Parsers and checks shared by several commands."""

from __future__ import annotations

import shutil
from pathlib import Path

from kronypt.errors import KronyptError


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


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse a non-empty output folder unless forced; never touch it here."""
    if out.exists() and not out.is_dir():
        raise KronyptError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise KronyptError(f"output folder {out} is not empty; pass --force to replace it")


def replace_dir(tmp: Path, out: Path) -> None:
    """Move a fully written temporary folder into place, replacing `out` only now."""
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def staging_dir(out: Path) -> Path:
    """A fresh sibling folder to write into before `replace_dir`."""
    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    return tmp
