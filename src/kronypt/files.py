"""File modes of the folders kronypt writes.

transformers' `save_pretrained` writes `model.safetensors` through a private temporary file, so it lands
with mode 0600 whatever the umask: on a shared cluster nobody else could read a compressed model, an
export or a checkpoint. The folders kronypt publishes get the modes the process umask gives new files.
"""

from __future__ import annotations

import os
from pathlib import Path


def apply_umask(folder: str | Path) -> None:
    """Give every file under `folder` mode 0666 and every folder 0777, less the umask, as `open` and
    `mkdir` would have."""
    mask = os.umask(0)
    os.umask(mask)
    for path in [Path(folder), *Path(folder).rglob("*")]:
        if path.is_symlink():
            continue
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)
