"""Evaluation results: one record per (model, task, split, protocol, metric), a comparison table, JSON."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.table import Table

# metric -> (column label, value format)
_METRIC_COLUMNS = {
    "perplexity": ("ppl", "{:.2f}"),
    "accuracy": ("acc", "{:.2%}"),
    "word_perplexity": ("word ppl", "{:.2f}"),
    "byte_perplexity": ("byte ppl", "{:.4f}"),
    "bits_per_byte": ("bpb", "{:.4f}"),
}


@dataclass(frozen=True)
class EvalRecord:
    """One number and everything needed to reproduce it.

    `tokens` counts the scored (predicted) tokens; `examples` the windows, documents or LAMBADA examples;
    `tokens_per_s` is model input tokens per second of the scoring loop (tokenisation excluded).
    """

    model: str
    params: int
    task: str
    split: str
    protocol: str
    metric: str
    value: float
    tokens: int
    examples: int
    context_length: int
    stride: int | None
    tokens_per_s: float
    seconds: float
    dtype: str
    device: str

    def to_dict(self) -> dict:
        return asdict(self)


def write_json(records: Sequence[EvalRecord], path: str | Path) -> None:
    """Write the records as a JSON list of objects (one per number), atomically (a temporary file renamed
    into place), so a file on disk is always a complete list."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps([r.to_dict() for r in records], indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def comparison_table(records: Sequence[EvalRecord]) -> Table:
    """One row per (model, protocol), one column per task/split/metric, plus parameters and tokens/s."""
    rows: dict[tuple[str, str], dict[tuple[str, str, str], EvalRecord]] = {}
    columns: dict[tuple[str, str, str], None] = {}
    for r in records:
        rows.setdefault((r.model, r.protocol), {})[r.task, r.split, r.metric] = r
        columns[r.task, r.split, r.metric] = None
    table = Table(title="kronypt eval")
    for name in ("model", "params", "protocol"):
        table.add_column(name, justify="left" if name != "params" else "right")
    for task, split, metric in columns:
        label = _METRIC_COLUMNS.get(metric, (metric, ""))[0]
        table.add_column(f"{task}{'' if split == 'test' else '/' + split} {label}", justify="right")
    table.add_column("tok/s", justify="right")
    for (model, protocol), cells in rows.items():
        first = next(iter(cells.values()))
        values = [_format(cells[c]) if c in cells else "-" for c in columns]
        table.add_row(model, f"{first.params:,}", protocol, *values, f"{_throughput(cells.values()):,.0f}")
    return table


def _format(record: EvalRecord) -> str:
    fmt = _METRIC_COLUMNS.get(record.metric, ("", "{:.4g}"))[1]
    return fmt.format(record.value)


def _throughput(records) -> float:
    """Input tokens per second over the distinct scoring runs (one per task and split) of a table row."""
    runs = {(r.task, r.split): r for r in records}.values()
    seconds = sum(r.seconds for r in runs)
    return sum(r.tokens_per_s * r.seconds for r in runs) / seconds if seconds > 0 else float("nan")
