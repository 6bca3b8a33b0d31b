"""Size against quality from `kronypt eval --json` files: one panel per task, split, protocol and metric."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from kronypt.errors import KronyptError
from kronypt.eval import EvalRecord

Panel = tuple[str, str, str, str]  # task, split, protocol, metric


def load_eval_records(paths: Sequence[str | Path]) -> list[EvalRecord]:
    """Every record of the given `kronypt eval --json` files, in order."""
    names = {f.name for f in fields(EvalRecord)}
    records = []
    for path in map(Path, paths):
        if not path.is_file():
            raise KronyptError(f"{path} does not exist; give a file written by `kronypt eval --json FILE`")
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(items, list):
                raise ValueError("expected a JSON list")
            # optional fields (tokenizer, max_tokens) may be absent: they take their defaults
            records.extend(EvalRecord(**{k: item[k] for k in names if k in item}) for item in items)
        except (ValueError, KeyError, TypeError) as error:
            raise KronyptError(f"{path} is not a `kronypt eval --json` file ({error})") from None
    if not records:
        raise KronyptError("the eval files hold no records")
    return records


def tradeoff_panels(records: Sequence[EvalRecord], tasks: Sequence[str] | None = None
                    ) -> dict[Panel, list[EvalRecord]]:
    """Records grouped by what makes numbers comparable; the last record wins for a repeated model."""
    panels: dict[Panel, dict[str, EvalRecord]] = {}
    for record in records:
        if tasks and record.task not in tasks:
            continue
        panels.setdefault((record.task, record.split, record.protocol, record.metric), {})[record.model] = record
    if not panels:
        known = sorted({r.task for r in records})
        raise KronyptError(f"no records for task(s) {', '.join(tasks or [])}; the files hold {', '.join(known)}")
    return {panel: list(by_model.values()) for panel, by_model in panels.items()}
