"""What a run folder may hold, and which settings may change when a run resumes from a checkpoint.

A resumed run continues the checkpoint's run, so the settings that define it must be the checkpoint's:
the model source, the data, the seed, what is trained and how (optimizer, schedule, clipping, dropout,
freezing, distillation) and what the metrics mean (seq_len, the validation windows, WikiText-2
validation). Changing one of them would either be ignored (the optimizer and scheduler state carry the
old values), half-applied, or silently mix two runs in one metrics file and one best checkpoint, so a
resume with a difference is refused with the list of differences.

What may change is how long the run goes, how often it logs, validates and saves, and where it runs:
`CHANGEABLE` below. `micro_batch_size` and the number of ranks may change while the batch of one step
stays the same (the tokens per step, drawn from one generator: the data order is identical) and while
micro_batch_size × eval_batches, the validation windows, stays the same.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from kronypt.errors import KronyptError
from kronypt.train.config import INPUT_PATHS, TrainConfig, coerce_setting, flatten

# What the trainer writes into its run folder; anything else there is the user's.
RUN_FILES = frozenset({"metrics.jsonl", "config.yaml", "checkpoints", "best", "latest"})
# a link being replaced (checkpoint._link), metrics.jsonl being rewritten (metrics.MetricsLog.truncate_after),
# or `kronypt train`'s write probe (cli.options.check_writable)
RUN_TEMPORARY = re.compile(r"^(\.(best|latest|metrics\.jsonl)\.tmp-\d+|\.kronypt-probe-\d+)$")

# Settings a resume may change. The batch geometry (micro_batch_size, tokens_per_step) and eval_batches
# are checked through what they define instead: the tokens of one step and the validation windows.
CHANGEABLE = frozenset({"out", "force", "resume", "device", "precision", "compile", "compile_mode", "parallel",
                        "max_steps", "log_every", "eval_every", "save_every", "keep_last",
                        "micro_batch_size", "tokens_per_step", "eval_batches"})


def foreign_files(out: Path) -> list[str]:
    """Names in the run folder `out` that the trainer did not write (sorted; none for a missing folder)."""
    if not out.is_dir():
        return []
    return sorted(entry.name for entry in out.iterdir()
                  if not (entry.name in RUN_FILES or RUN_TEMPORARY.match(entry.name))
                  or (entry.name == "checkpoints" and not entry.is_dir()))


def check_out_folder(out: Path, force: bool) -> None:
    """Refuse an output folder holding files a run does not write, unless forced (they are kept then)."""
    if out.exists() and not out.is_dir():
        raise KronyptError(f"output {out} exists and is not a folder")
    foreign = foreign_files(out)
    if foreign and not force:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise KronyptError(f"output folder {out} holds files that are not a training run's ({foreign[0]}{more}); "
                           "choose another --out, or pass --force to train there anyway (they are kept)")


def input_paths(config: TrainConfig) -> dict[str, str]:
    """Absolute forms of the input paths that exist, saved with checkpoints to compare them across folders."""
    values = flatten(config.to_dict())
    return {name: os.path.realpath(values[name]) for name in INPUT_PATHS
            if values.get(name) and os.path.exists(values[name])}


def saved_settings(state: dict[str, Any]) -> dict[str, Any]:
    """The flat settings a checkpoint was trained with (its own record)."""
    return {name: coerce_setting(name, value) for name, value in flatten(state["config"]).items()}


def changes(config: TrainConfig, state: dict[str, Any], tokens_per_step: int, val_windows: int,
            n_val_windows: int) -> list[str]:
    """`name: checkpoint value -> new value` for every setting that differs from the checkpoint's and may
    not change on resume. `tokens_per_step` and `val_windows` are this run's (after the batch geometry)."""
    saved = saved_settings(state)
    new = flatten(config.to_dict())
    saved_paths = state["paths"]
    found = []
    for name, value in new.items():
        if name in CHANGEABLE:
            continue
        old = saved[name]
        if name in INPUT_PATHS and _same_path(old, value, saved_paths.get(name)):
            continue
        if old != value:
            found.append(f"{name}: {_show(old)} -> {_show(value)}")
    old_tokens = int(state["tokens_per_step"])
    if old_tokens != tokens_per_step:
        found.append(f"tokens_per_step: {old_tokens:,} -> {tokens_per_step:,}")
    if saved["seq_len"] == new["seq_len"]:
        old_windows = min(saved["micro_batch_size"] * saved["eval_batches"], n_val_windows)
        if old_windows != val_windows:
            if saved["micro_batch_size"] == new["micro_batch_size"]:
                found.append(f"eval_batches: {saved['eval_batches']} -> {new['eval_batches']}")
            else:
                found.append(f"validation windows (micro_batch_size × eval_batches): {saved['micro_batch_size']} × "
                             f"{saved['eval_batches']} -> {new['micro_batch_size']} × {new['eval_batches']} "
                             f"(keep the product with --set eval_batches=N)")
    return found


def check_resume(config: TrainConfig, state: dict[str, Any], checkpoint: Path, tokens_per_step: int,
                 val_windows: int, n_val_windows: int, data_fingerprint: str) -> None:
    """Raise a one-line KronyptError listing the settings that differ from the checkpoint's, and the token
    folder's contents where it was prepared again from other inputs (`data_fingerprint`, `tokens.fingerprint`)."""
    found = changes(config, state, tokens_per_step, val_windows, n_val_windows)
    if state["data_fingerprint"] != data_fingerprint:
        found.append(f"data contents: {config.data} holds other tokens than the checkpoint trained on (its "
                     "meta.json names other inputs, splits or token counts)")
    if found:
        raise KronyptError(f"cannot resume from {checkpoint}: these settings differ from the checkpoint's "
                           f"(checkpoint -> now): {'; '.join(found)}. Rerun with the checkpoint's settings, or "
                           f"start a new run with another --out (from these weights: --init-from kronypt --model "
                           f"{checkpoint.resolve()}/model)")


def _same_path(old: Any, new: Any, old_absolute: str | None) -> bool:
    """Whether two values of a path setting name the same input, following symlinks: the checkpoint's
    recorded absolute path when it has one and the new path exists; else the two paths as given (from this
    folder; equal text for hub ids)."""
    if not (isinstance(old, str) and isinstance(new, str)):
        return old == new
    if old_absolute and os.path.exists(new):
        return os.path.realpath(old_absolute) == os.path.realpath(new)
    return os.path.realpath(old) == os.path.realpath(new)


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)
