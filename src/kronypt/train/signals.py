"""SIGTERM and SIGINT during training: recorded instead of dying, so that the loop saves a checkpoint first,
and agreed on by every rank, so that all of them stop after the same step."""

from __future__ import annotations

import contextlib
import signal
from typing import Any

import torch

from kronypt.train import distributed


class StopSignals:
    """Record SIGTERM / SIGINT instead of dying, so the loop can save first; a second one aborts."""

    NAMES = ("SIGTERM", "SIGINT")

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        with contextlib.suppress(ValueError):  # signal handlers can only be set from the main thread
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agreed(self, device: torch.device) -> str | None:
        """The stop signal if any rank got one (SIGTERM before SIGINT), on every rank: one small all-reduce
        per step, so that all ranks leave the loop at the same step and save together."""
        seen = distributed.sum_across_ranks([float(self.received == name) for name in self.NAMES], device)
        return next((name for name, count in zip(self.NAMES, seen, strict=True) if count > 0), None)
