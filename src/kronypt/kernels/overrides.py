"""Block sizes tuned on the user's own GPU: a file of the vector-B kernels' configs, named by an environment
variable, that replaces the built-in defaults.

The vector-B kernels launch with fixed block sizes (no autotuner in the launch path: no first-call tuning,
no host cost, graph-capturable), chosen from an H100 sweep (docs/gpu-notes.md). Another card may prefer
other tiles. `python benchmarks/sweep.py --write-configs tuned.json` times every candidate on the card at
hand and writes the winners; then

    KRONYPT_KERNEL_CONFIGS=tuned.json kronypt train ...

runs with them. The file (JSON):

    {"vector_b_forward": {"column": {"BLOCK_T": 128, "BLOCK_A": 128, "BLOCK_C": 64, "EPI": 4, "SPLIT": 1,
                                     "warps": 16, "stages": 3},
                          "row": {...}},
     "vector_b_backward": {"reduce": {"BLOCK_T": 16, "BLOCK_A": 64, "SUM_EACH": 1, "PER_SM": 4, "warps": 4,
                                      "stages": 1}},
     "measured": {...}}

Every entry is optional; keys an entry leaves out keep the default's values; "measured" (where and how the
winners were timed) is not read. A file that cannot be read, names an unknown kernel or key, or gives a
value no kernel can take (a block size that is not a power of two, EPI other than 1, 2 or 4, ...) stops the
first fused call (which imports the kernels) with a one-line error rather than running with other tiles.
The tiles apply to every dtype and card (float32 runs at most 2 pipeline stages).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import triton

from kronypt.errors import KronyptError

ENV = "KRONYPT_KERNEL_CONFIGS"
SECTIONS = ("vector_b_forward", "vector_b_backward")


def _power_of_two(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


# What each key may be (the kernels' tile shapes are powers of two; the rest are switches or counts).
_RULES = {
    "BLOCK_*": (_power_of_two, "a power of two"),
    "warps": (lambda v: _power_of_two(v) and v <= 32, "a power of two up to 32"),
    "stages": (lambda v: v >= 1, ">= 1"),
    "EPI": (lambda v: v in (1, 2, 4), "1, 2 or 4"),
    "SPLIT": (lambda v: v in (1, 2, 3, 4), "1, 2, 3 or 4"),
    "SUM_EACH": (lambda v: v in (0, 1), "0 or 1"),
    "LOAD_2D": (lambda v: v in (0, 1), "0 or 1"),
    "STAGES": (lambda v: v >= 1, ">= 1"),
    "PER_SM": (lambda v: v >= 1, ">= 1"),
}


def config_dict(config: triton.Config) -> dict[str, int]:
    """A config as the file stores it: its block sizes and flags, "warps" and "stages"."""
    return {**config.kwargs, "warps": config.num_warps, "stages": config.num_stages}


def _merged(default: triton.Config, entry: Any, where: str) -> triton.Config:
    if not isinstance(entry, dict):
        raise KronyptError(f"{where}: expected an object of block sizes, got {type(entry).__name__}")
    known = {*default.kwargs, "warps", "stages"}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise KronyptError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    bad = sorted(k for k, v in entry.items() if not isinstance(v, int) or isinstance(v, bool) or v < 0)
    if bad:
        raise KronyptError(f"{where}: {', '.join(bad)} must be non-negative integers")
    for key, value in entry.items():
        rule = _RULES.get(key) or (_RULES["BLOCK_*"] if key.startswith("BLOCK_") else None)
        if rule and not rule[0](value):
            raise KronyptError(f"{where}: {key} must be {rule[1]}, got {value}")
    kwargs = {k: entry.get(k, v) for k, v in default.kwargs.items()}
    return triton.Config(kwargs, num_warps=entry.get("warps", default.num_warps),
                         num_stages=entry.get("stages", default.num_stages))


def read(path: str | Path) -> dict[str, dict[str, Any]]:
    """The `SECTIONS` of a configs file (raw entries, checked by `overridden`)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise KronyptError(f"{ENV}={path}: no such file") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise KronyptError(f"{ENV}={path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise KronyptError(f"{ENV}={path}: expected a JSON object with sections {', '.join(SECTIONS)}")
    unknown = sorted(set(data) - {*SECTIONS, "measured"})
    if unknown:
        raise KronyptError(f"{ENV}={path}: unknown section(s) {', '.join(unknown)}; known: "
                           f"{', '.join(SECTIONS)}, measured")
    return {section: data.get(section) or {} for section in SECTIONS}


def overridden(section: str, defaults: dict[str, triton.Config],
               path: str | Path | None = None) -> dict[str, triton.Config]:
    """`defaults` with the entries of `section` from the configs file at `path` (default: the file
    $KRONYPT_KERNEL_CONFIGS names; without it, `defaults` unchanged)."""
    path = path if path is not None else os.environ.get(ENV)
    if not path:
        return dict(defaults)
    entries = read(path)[section]
    if not isinstance(entries, dict):
        raise KronyptError(f"{ENV}={path}: section {section!r} must be an object")
    unknown = sorted(set(entries) - set(defaults))
    if unknown:
        raise KronyptError(f"{ENV}={path}: unknown {section} kernel(s) {', '.join(unknown)}; known: "
                           f"{', '.join(defaults)}")
    return {name: _merged(default, entries[name], f"{ENV}={path}: {section}.{name}") if name in entries else default
            for name, default in defaults.items()}


def write(path: str | Path, sections: dict[str, dict[str, triton.Config]], measured: dict[str, Any]) -> None:
    """Write a configs file: {section: {kernel: config}} plus what the winners were measured on."""
    payload: dict[str, Any] = {s: {name: config_dict(c) for name, c in sections.get(s, {}).items()}
                               for s in SECTIONS}
    payload["measured"] = measured
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")
