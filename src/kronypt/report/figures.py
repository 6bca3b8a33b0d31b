"""matplotlib figures of runs and evals; matplotlib is optional (`pip install 'kronypt[plot]'`)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kronypt.errors import KronyptError
from kronypt.eval import EvalRecord
from kronypt.report.runs import Run, smooth
from kronypt.report.tradeoff import Panel

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_LABELS = {"loss": "train loss", "val_loss": "val loss (val.bin)", "wikitext2_val_ppl": "WikiText-2 val ppl",
           "lr": "learning rate", "grad_norm": "grad norm", "tokens_per_s": "tokens / s"}


def curves_figure(runs: Sequence[Run], metrics: Sequence[str], x: str = "tokens", smoothing: float = 0.0,
                  log_y: bool = False) -> Figure:
    """One panel per metric, one line per run. Smoothing applies to the training loss only (validation
    points are few and already averages)."""
    figure, axes = _panels(len(metrics))
    for ax, metric in zip(axes, metrics, strict=False):
        for run in runs:
            xs, ys = run.series(metric, x)
            if not xs:
                continue
            if smoothing and metric in ("loss", "distill_objective"):
                ax.plot(xs, ys, alpha=0.25, linewidth=0.8)
                ax.plot(xs, smooth(ys, smoothing), color=ax.lines[-1].get_color(), label=run.label)
            else:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=run.label)
        ax.set_title(_LABELS.get(metric, metric))
        ax.set_xlabel("tokens" if x == "tokens" else "step")
        if x == "tokens":
            ax.xaxis.set_major_formatter(_engineering())
        if log_y:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return figure


def tradeoff_figure(panels: dict[Panel, list[EvalRecord]], log_y: bool = False) -> Figure:
    """One panel per (task, split, protocol, metric): parameters against the value, a labelled point per
    model."""
    figure, axes = _panels(len(panels))
    for ax, ((task, split, protocol, metric), records) in zip(axes, panels.items(), strict=False):
        ordered = sorted(records, key=lambda r: r.params)
        ax.plot([r.params for r in ordered], [r.value for r in ordered], marker="o", linestyle=":")
        for record in ordered:
            ax.annotate(_short(record.model), (record.params, record.value), textcoords="offset points",
                        xytext=(4, 4), fontsize="x-small")
        ax.set_title(f"{task}{'' if split == 'test' else '/' + split} · {protocol}", fontsize="medium")
        ax.set_xlabel("parameters")
        ax.set_ylabel(metric)
        ax.xaxis.set_major_formatter(_engineering())
        if log_y:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    return figure


def check_figure_path(path: str | Path) -> Path:
    """`path` if a figure can be saved there: a suffix naming the format, not a folder, in a folder that
    exists (checked by `save_figure`, and by the CLI before it loads anything)."""
    path = Path(path)
    if not path.suffix:
        raise KronyptError(f"give the figure file a suffix (.png, .pdf, .svg): {path}")
    if path.is_dir() or not path.resolve().parent.is_dir():
        raise KronyptError(f"cannot write {path}: " + ("it is a folder" if path.is_dir() else
                                                       f"folder {path.resolve().parent} does not exist"))
    return path


def save_figure(figure: Figure, path: str | Path) -> None:
    """Write the figure in the format its suffix names (png, pdf, svg, ...), atomically."""
    path = check_figure_path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        figure.savefig(tmp, dpi=150)
    except ValueError as error:  # an unknown format
        tmp.unlink(missing_ok=True)
        raise KronyptError(f"cannot write {path}: {error}") from None
    os.replace(tmp, path)


def _panels(count: int):
    """A bare `Figure` (no pyplot: no global state, no window, nothing to close) with `count` axes."""
    figure_class = _matplotlib_figure()
    columns = min(count, 3)
    rows = math.ceil(count / columns)
    figure = figure_class(figsize=(5 * columns, 3.6 * rows), layout="constrained")
    flat = list(figure.subplots(rows, columns, squeeze=False).flat)
    for unused in flat[count:]:
        unused.set_visible(False)
    return figure, flat[:count]


def _matplotlib_figure():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise KronyptError("plotting needs matplotlib: pip install 'kronypt[plot]'") from None
    return Figure


def _engineering():
    from matplotlib.ticker import EngFormatter

    return EngFormatter(sep="")


def _short(model: str) -> str:
    """A point's label: the last two parts of a path without a trailing `model` (checkpoints all end in
    .../best/model: runs/81M/best/model -> 81M/best), or the hub id as given."""
    parts = [p for p in Path(model).parts if p not in ("/", ".")]
    if len(parts) > 1 and parts[-1] == "model":
        parts = parts[:-1]
    return "/".join(parts[-2:]) or model
