"""Training runs as `kronypt train` leaves them: `RUN/metrics.jsonl`, read into series per metric."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kronypt.errors import KronyptError
from kronypt.train.metrics import read_metrics

# What `kronypt train` logs that is worth a panel by default, in panel order.
DEFAULT_METRICS = ("loss", "val_loss", "wikitext2_val_ppl")
AXES = ("tokens", "step")
_NOT_METRICS = {"step", "tokens"}


@dataclass(frozen=True)
class Run:
    """One run's records (each a logged step; validation steps carry `val_loss`) and its label."""

    label: str
    path: Path
    records: list[dict[str, Any]]

    def metrics(self) -> list[str]:
        """Every numeric field some record holds, in first-seen order."""
        seen: dict[str, None] = {}
        for record in self.records:
            for key, value in record.items():
                if key not in _NOT_METRICS and _is_number(value):
                    seen[key] = None
        return list(seen)

    def series(self, metric: str, x: str = "tokens") -> tuple[list[float], list[float]]:
        """(x values, metric values) of the records that hold the metric."""
        if x not in AXES:
            raise KronyptError(f"unknown x axis {x!r}; choose one of {', '.join(AXES)}")
        points = [(r[x], r[metric]) for r in self.records if _is_number(r.get(metric)) and x in r]
        return [p[0] for p in points], [p[1] for p in points]


def load_run(path: str | Path, label: str | None = None) -> Run:
    """A run folder (`kronypt train --out`) or its metrics.jsonl file."""
    path = Path(path)
    file = path / "metrics.jsonl" if path.is_dir() else path
    if not file.is_file():
        where = f"no metrics.jsonl in {path}" if path.is_dir() else f"{path} does not exist"
        raise KronyptError(f"{where}; give a `kronypt train --out` folder or its metrics.jsonl")
    try:
        records = read_metrics(file)
    except ValueError as error:
        raise KronyptError(f"{file} is not a JSON-lines metrics file: {error}") from None
    if not records:
        raise KronyptError(f"{file} holds no records yet")
    run_dir = file.parent
    return Run(label or run_dir.resolve().name, run_dir, records)


def run_summary(run: Run) -> dict[str, Any]:
    """The numbers a results table wants: how far the run got, its last loss, its best validation."""
    trained = [r for r in run.records if _is_number(r.get("loss"))]
    validated = [r for r in run.records if _is_number(r.get("val_loss"))]
    best = min(validated, key=lambda r: r["val_loss"]) if validated else None
    wikitext = [r for r in run.records if _is_number(r.get("wikitext2_val_ppl"))]
    last = run.records[-1]
    return {
        "run": run.label,
        "path": str(run.path),
        "step": last.get("step"),
        "tokens": last.get("tokens"),
        "last_loss": trained[-1]["loss"] if trained else None,
        "best_val_loss": best["val_loss"] if best else None,
        "best_val_step": best["step"] if best else None,
        "last_wikitext2_val_ppl": wikitext[-1]["wikitext2_val_ppl"] if wikitext else None,
    }


def smooth(values: Sequence[float], weight: float) -> list[float]:
    """TensorBoard's debiased exponential moving average (`weight` 0 = raw, 0.9 = heavy)."""
    if not 0 <= weight < 1:
        raise KronyptError(f"smoothing must be in [0, 1), got {weight}")
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**i))
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
