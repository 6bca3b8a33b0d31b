"""One training process per run folder.

Two `kronypt train` commands on the same --out would both resume from its latest checkpoint and interleave
their checkpoints and metrics. The main process holds an advisory lock (`flock`) on a file beside the run
folder, `.NAME.lock`, for the whole run; a second run is refused in one line. The kernel drops the lock
when the process ends, however it ends, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from kronypt.errors import KronyptError


@contextlib.contextmanager
def run_folder_lock(out: str | Path) -> Iterator[None]:
    """Hold the lock of run folder `out` while the block runs (a no-op where `fcntl` is missing)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks
        yield
        return
    out = Path(out).expanduser().resolve()
    path = out.with_name(f".{out.name}.lock")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")  # held open for the whole run
    except OSError:  # a run folder whose parent cannot be written (e.g. --out in a read-only home's root)
        yield  # trains unlocked rather than not at all
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip()
        handle.close()
        raise KronyptError(f"run folder {out} is in use by another training process"
                           f"{f' (pid {owner})' if owner.isdigit() else ''}; wait for it to stop, or choose "
                           "another --out") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        handle.close()
