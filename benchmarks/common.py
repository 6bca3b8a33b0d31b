"""Timing helpers shared by the benchmark scripts: medians of repeated calls, CPU or CUDA."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, min_runs: int = 3, max_runs: int = 50,
                   budget_s: float = 0.5, warmup: int = 1) -> float:
    """Median wall time of `fn` over repeated runs (at least `min_runs`, until `budget_s` is spent)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or (len(times) < max_runs and time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def environment(device: torch.device) -> dict:
    """What the numbers were measured on."""
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
            "machine": platform.machine(), "processor": platform.processor() or platform.machine()}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    else:
        info["device_name"] = "cpu"
    tuned = os.environ.get("KRONYPT_KERNEL_CONFIGS")  # kernel tiles in use other than the defaults
    if tuned:
        try:
            info["kernel_configs"] = {"path": tuned, **json.loads(Path(tuned).read_text())}
        except (OSError, ValueError) as exc:
            info["kernel_configs"] = {"path": tuned, "error": str(exc)}
    return info


def write_json(path: str | None, payload: dict, quiet: bool = False) -> None:
    """Write atomically: a run killed by its time limit mid-write leaves the previous complete file."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(f"{path}.tmp")
        tmp.write_text(json.dumps(payload, indent=2))
        os.replace(tmp, path)
        if not quiet:
            print(f"wrote {path}")
