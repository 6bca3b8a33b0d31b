"""Evaluation results: one record per (model, task, split, protocol, metric), a comparison table, JSON."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.table import Table

from kronypt.eval.protocols import PROTOCOLS

# metric -> (column label, value format). "ppl" is token perplexity; a protocol whose metric of the same
# name means something else gets its own label (and so its own column) in _PROTOCOL_LABELS.
_METRIC_COLUMNS = {
    "perplexity": ("ppl", "{:.2f}"),
    "accuracy": ("acc", "{:.2%}"),
    "word_perplexity": ("word ppl", "{:.2f}"),
    "byte_perplexity": ("byte ppl", "{:.4f}"),
    "bits_per_byte": ("bpb", "{:.4f}"),
}
# (protocol, metric) -> column label, where the metric's usual label would mislead. JSON records keep the
# metric's name: readers group by task, split, protocol and metric.
_PROTOCOL_LABELS = {
    ("lambada-openai", "perplexity"): "last-word ppl",  # per example, of the target word; not per token
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
    tokenizer: str = ""  # `tokenizer_id`: vocabulary size and digest; perplexities compare only under one
    max_tokens: int | None = None  # set when only the first max_tokens of the task were scored (a quick check)

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
    """One row per (model, protocol), one column per task/split/metric, plus parameters, the scored tokens of
    the row and its input tokens/s. The split is in the title (or in every column when several are mixed);
    `ppl` is token perplexity, lambada-openai's last-word perplexity has its own column."""
    rows: dict[tuple[str, str], dict[tuple[str, str, str], EvalRecord]] = {}
    columns: dict[tuple[str, str, str], None] = {}
    for r in records:
        key = (r.task, r.split, column_label(r.protocol, r.metric))
        rows.setdefault((r.model, r.protocol), {})[key] = r
        columns[key] = None
    splits = list(dict.fromkeys(r.split for r in records))
    title = f"kronypt eval ({splits[0]} split)" if len(splits) == 1 else "kronypt eval"
    cut = sorted({r.max_tokens for r in records if r.max_tokens is not None})
    if cut:  # not comparable with whole-task numbers
        title += f", first {' / '.join(f'{n:,}' for n in cut)} tokens per task only"
    vocabularies = list(dict.fromkeys(r.tokenizer for r in records))
    mixed = len(vocabularies) > 1
    table = Table(title=title, caption=("perplexities under different tokenizers do not compare (tokenizer: "
                                        "vocabulary size:digest)" if mixed else None))
    for name in ("model", "params", "protocol", *(("tokenizer",) if mixed else ())):
        table.add_column(name, justify="left" if name != "params" else "right")
    for task, split, label in columns:
        table.add_column(f"{task}{'' if len(splits) == 1 else '/' + split} {label}", justify="right")
    table.add_column("scored tokens", justify="right")
    table.add_column("tok/s", justify="right")
    for (model, protocol), cells in rows.items():
        first = next(iter(cells.values()))
        values = [_format(cells[c]) if c in cells else "-" for c in columns]
        runs = _runs(cells.values())
        table.add_row(model, f"{first.params:,}", _protocol_cell(protocol, runs),
                      *((first.tokenizer,) if mixed else ()), *values,
                      f"{sum(r.tokens for r in runs):,}", f"{_throughput(runs):,.0f}")
    for column in table.columns:  # wrap a long cell rather than cut it: a cut name or number misleads
        column.overflow = "fold"
    return table


def _protocol_cell(protocol: str, runs: Sequence[EvalRecord]) -> str:
    """The protocol's name, with the window length where it is not the one the protocol is defined with."""
    window = PROTOCOLS[protocol].window if protocol in PROTOCOLS else None
    other = sorted({r.context_length for r in runs if window is not None and r.context_length != window})
    return protocol if not other else f"{protocol} ({'/'.join(map(str, other))}-token windows)"


def column_label(protocol: str, metric: str) -> str:
    """The table's name for a metric of a protocol (`ppl`, `last-word ppl`, `acc`, ...)."""
    return _PROTOCOL_LABELS.get((protocol, metric), _METRIC_COLUMNS.get(metric, (metric, ""))[0])


def _format(record: EvalRecord) -> str:
    fmt = _METRIC_COLUMNS.get(record.metric, ("", "{:.4g}"))[1]
    return fmt.format(record.value)


def _runs(records) -> list[EvalRecord]:
    """One record per distinct scoring run (task and split) of a table row: its metrics share the run."""
    return list({(r.task, r.split): r for r in records}.values())


def _throughput(runs: Sequence[EvalRecord]) -> float:
    """Input tokens per second over the scoring runs of a table row."""
    seconds = sum(r.seconds for r in runs)
    return sum(r.tokens_per_s * r.seconds for r in runs) / seconds if seconds > 0 else float("nan")
