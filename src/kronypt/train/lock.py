"""One training process per run folder.

Two `kronypt train` commands on the same --out would both resume from its latest checkpoint and interleave
their checkpoints and metrics. The main process holds an advisory lock (`flock`) on a file beside the run
folder, `.NAME.lock`, for the whole run; a second run is refused in one line. The kernel drops the lock
when the process ends, however it ends, so a killed run never leaves a stale lock behind. Where that file
cannot be created (the run folder's parent is read-only), the run goes on unlocked and says so.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

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
    handle = _locked(path, out, fcntl)
    if handle is None:
        sys.stderr.write(f"kronypt: warning: cannot create {path}; training in {out} without a lock against a "
                         "second run on the same folder\n")
        yield
        return
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still locked: a run that opened this file now finds it replaced, and retries
        handle.close()


def _locked(path: Path, out: Path, fcntl) -> IO[str] | None:
    """The lock file, opened and locked; None where it cannot be created. Refuses a folder in use."""
    for _ in range(10):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a+")  # held open for the whole run
        except OSError:
            return None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip()
            handle.close()
            raise KronyptError(f"run folder {out} is in use by another training process"
                               f"{f' (pid {owner})' if owner.isdigit() else ''}; wait for it to stop, or choose "
                               "another --out") from None
        try:  # the file a finishing run removed after this one opened it does not count: lock the new one
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                return handle
        except FileNotFoundError:
            pass
        handle.close()
    raise KronyptError(f"could not lock run folder {out}: {path} keeps being replaced")
