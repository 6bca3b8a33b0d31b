"""`OUT/metrics.jsonl`: one JSON object per logged step, kept consistent across resumes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class MetricsLog:
    """Appends records to a JSONL file; a no-op on ranks other than 0 (`enabled=False`)."""

    def __init__(self, path: str | Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """Drop records past `step`: a killed run may have logged steps its last checkpoint does not hold.

        The file is rewritten into a temporary one that replaces it, so that a kill at any moment leaves the
        old records or the new ones, never an empty or cut file; temporary files of killed runs go first."""
        if not self.enabled:
            return
        for stale in self.path.parent.glob(f".{self.path.name}.tmp-*"):
            stale.unlink()
        if not self.path.is_file():
            return
        text = self.path.read_text()
        kept = "".join(line + "\n" for line in text.splitlines()
                       if line.strip() and _step(line) is not None and _step(line) <= step)
        if kept == text:
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        with open(tmp, "w") as handle:
            handle.write(kept)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics file, in order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def logged_at(path: str | Path, step: int) -> dict[str, Any]:
    """What the records of `step` logged, merged in order ({} without a file or records): a finished run
    reports its last loss and val_loss from here when it is rerun."""
    merged: dict[str, Any] = {}
    if Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            if line.strip() and _step(line) == step:
                merged.update(json.loads(line))
    return merged


def _step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None  # a line cut short by a crash
