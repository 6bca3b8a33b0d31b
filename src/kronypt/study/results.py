"""A study's results: OUT/results.json (one row per run), OUT/results.md (the table) and, with matplotlib,
OUT/perplexity-vs-params.png and OUT/healing-curves.png."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from kronypt.study.config import StudyConfig

COLUMNS = (("wikitext2_ppl", "WikiText-2 ppl", "{:,.2f}"), ("lambada_acc", "LAMBADA acc", "{:.2%}"),
           ("lambada_ppl", "LAMBADA ppl", "{:,.1f}"), ("val_loss", "val loss", "{:.4f}"), ("kl", "KL to dense",
                                                                                           "{:.4f}"))


def write_results(config: StudyConfig, rows: list[dict[str, Any]]) -> None:
    """Write the JSON rows, the markdown table and (where matplotlib is installed) the figures."""
    out = Path(config.out)
    _atomic(out / "results.json", json.dumps(rows, indent=2))
    _atomic(out / "results.md", markdown_table(rows, config))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    _figures(rows, out)


def markdown_table(rows: list[dict[str, Any]], config: StudyConfig) -> str:
    """One line per run and stage (zero-shot, healed): parameters and every metric."""
    header = ["run", "stage", "params", *(label for _, label, _ in COLUMNS), "heal tok/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        for stage in ("zero_shot", "healed"):
            if stage not in row:
                continue
            values = [_cell(row[stage].get(key), fmt) for key, _, fmt in COLUMNS]
            rate = _cell(row.get("heal", {}).get("tokens_per_s"), "{:,.0f}") if stage == "healed" else ""
            cells = [row["run"], stage.replace("_", "-"), f"{row['params']:,}", *values, rate]
            lines.append("| " + " | ".join(cells) + " |")
    notes = [f"Model {config.model}; healing: {config.heal_tokens:,} tokens of {config.data} per run "
             f"(seq {config.seq_len}, {config.tokens_per_step:,} tokens/step, lr {config.lr:g} cosine to "
             f"{config.min_lr:g}, {config.precision}, trainable: {config.trainable}"
             f"{', distilled' if config.distill else ''}); WikiText-2: hf-strided (stride {config.eval_stride}), "
             f"the model's tokenizer, {config.eval_dtype}; LAMBADA: lambada-openai; val loss and KL: "
             f"{config.eval_windows} windows of the data's validation split."]
    return "\n".join(lines) + "\n\n" + " ".join(notes) + "\n"


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return fmt.format(value)


def _figures(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(7, 4.5))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["params"])
        for stage, style in (("zero_shot", {"fillstyle": "none", "linestyle": ":"}), ("healed", {"linestyle": "-"})):
            points = [(r["params"], r[stage]["wikitext2_ppl"]) for r in mine if r.get(stage, {}).get("wikitext2_ppl")]
            if points:
                xs, ys = zip(*points, strict=True)
                label = f"{method} ({'zero-shot' if stage == 'zero_shot' else 'healed'})"
                ax.plot(xs, ys, marker="o", label=label, **style)
    _finish(figure, ax, "parameters", "WikiText-2 perplexity (hf-strided)", out / "perplexity-vs-params.png",
            log_y=True)
    curves = [r for r in rows if r.get("heal", {}).get("curve")]
    if curves:
        figure, ax = plt.subplots(figsize=(7, 4.5))
        for row in curves:
            points = row["heal"]["curve"]
            ax.plot([p["tokens"] for p in points], [p["val_loss"] for p in points], marker="o", markersize=3,
                    label=row["run"])
        _finish(figure, ax, "healing tokens", "validation loss", out / "healing-curves.png")


def _finish(figure, ax, xlabel: str, ylabel: str, path: Path, log_y: bool = False) -> None:
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small", ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
