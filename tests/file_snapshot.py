"""Helper for the tests of refusals and interruptions (no tests here): what a folder holds, byte for byte."""

from __future__ import annotations

import os
from pathlib import Path


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under `folder` (hidden ones included): a file's bytes, a link's target, '<dir>' for a
    folder; {} when `folder` does not exist. Equal snapshots: nothing was written, moved or removed."""
    if not os.path.lexists(folder):
        return {}
    found: dict[str, bytes | str] = {}
    for path in sorted(Path(folder).rglob("*")):
        name = str(path.relative_to(folder))
        if path.is_symlink():
            found[name] = f"-> {os.readlink(path)}"
        elif path.is_dir():
            found[name] = "<dir>"
        else:
            found[name] = path.read_bytes()
    return found
