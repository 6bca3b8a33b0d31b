"""`kronypt plot curves` and `kronypt plot tradeoff`: figures of training runs and of eval results."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from kronypt.cli.app import app, console, print_json
from kronypt.cli.options import check_writable
from kronypt.errors import KronyptError

plot_app = typer.Typer(help="Plot training curves of runs, or model size against eval results (needs matplotlib: "
                            "the `plot` extra).", no_args_is_help=True)
app.add_typer(plot_app, name="plot")

OUT_HELP = "Figure file; its suffix picks the format (.png, .pdf, .svg). An existing file is replaced."


@plot_app.command()
def curves(
    runs: Annotated[list[Path], typer.Argument(help="Run folders of `kronypt train --out` (or their "
                                                    "metrics.jsonl files) to overlay.")],
    out: Annotated[Path, typer.Option("--out", "-o", help=OUT_HELP)],
    metric: Annotated[list[str] | None, typer.Option(
        "--metric", "-m", help="A logged field to plot (repeat for more panels), e.g. loss, val_loss, "
                               "wikitext2_val_ppl, lr, grad_norm, tokens_per_s, distill_objective. "
                               "Default: loss, val_loss and wikitext2_val_ppl, those that the runs "
                               "logged.")] = None,
    label: Annotated[list[str] | None, typer.Option(
        "--label", help="A legend name per run, in order (default: the folder names).")] = None,
    x: Annotated[str, typer.Option(help="x axis: tokens (comparable across batch sizes) or step.")] = "tokens",
    smoothing: Annotated[float, typer.Option(help="Exponential moving average of the training loss, 0 (raw) "
                                                  "to < 1 (TensorBoard's slider); the raw curve stays faint "
                                                  "behind.")] = 0.0,
    log_y: Annotated[bool, typer.Option("--log-y", help="Logarithmic y axes.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the per-run summary as JSON.")] = False,
) -> None:
    """Overlay the training curves of one or more runs, one panel per metric, and print a summary per run:
    steps and tokens reached, last training loss, best validation loss and its step, last WikiText-2
    perplexity.

    Example: kronypt plot curves runs/81M runs/96M --label 81M --label 96M --smoothing 0.9 --out heal.png
    """
    from kronypt.report import AXES, DEFAULT_METRICS, curves_figure, load_run, run_summary, save_figure

    out = _figure_path(out)
    if x not in AXES:
        raise KronyptError(f"unknown --x {x!r}; choose one of {', '.join(AXES)}")
    if not 0 <= smoothing < 1:
        raise KronyptError(f"--smoothing must be in [0, 1), got {smoothing}")
    if label and len(label) != len(runs):
        raise KronyptError(f"give one --label per run: {len(label)} labels for {len(runs)} runs")
    loaded = [load_run(path, label[i] if label else None) for i, path in enumerate(runs)]
    available = list(dict.fromkeys(m for run in loaded for m in run.metrics()))
    chosen = list(dict.fromkeys(metric)) if metric else [m for m in DEFAULT_METRICS if m in available]
    unknown = [m for m in chosen if m not in available]
    if unknown or not chosen:
        raise KronyptError(f"no run logged {', '.join(unknown) or 'any default metric'}; "
                           f"the runs logged {', '.join(available) or 'nothing numeric'}")
    save_figure(curves_figure(loaded, chosen, x=x, smoothing=smoothing, log_y=log_y), out)
    summaries = [run_summary(run) for run in loaded]
    if as_json:
        print_json({"figure": str(out), "metrics": chosen, "runs": summaries})
        return
    console.print(_summary_table(summaries))
    console.print(f"wrote {out} ({len(chosen)} panel{'s' if len(chosen) > 1 else ''}: {', '.join(chosen)})")


@plot_app.command()
def tradeoff(
    results: Annotated[list[Path], typer.Argument(help="Files written by `kronypt eval --json FILE`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help=OUT_HELP)],
    task: Annotated[list[str] | None, typer.Option(
        "--task", help="Only these tasks (repeat for more), e.g. wikitext2, lambada. Default: all.")] = None,
    log_y: Annotated[bool, typer.Option("--log-y", help="Logarithmic y axes.")] = False,
) -> None:
    """Plot parameters against eval results, a labelled point per model, one panel per task, split,
    protocol and metric (numbers of different protocols never share a panel).

    Example: kronypt eval gpt2 gpt2-81M gpt2-96M --tasks wikitext2,lambada --json evals.json, then
    kronypt plot tradeoff evals.json --out tradeoff.png
    """
    from kronypt.report import load_eval_records, save_figure, tradeoff_figure, tradeoff_panels

    out = _figure_path(out)
    panels = tradeoff_panels(load_eval_records(results), task)
    save_figure(tradeoff_figure(panels, log_y=log_y), out)
    models = {record.model for records in panels.values() for record in records}
    console.print(f"wrote {out} ({len(panels)} panel{'s' if len(panels) > 1 else ''}, {len(models)} models)")


def _summary_table(summaries: list[dict[str, Any]]) -> Table:
    table = Table(title="runs")
    for header in ("run", "step", "tokens", "last loss", "best val loss", "at step", "WikiText-2 val ppl"):
        table.add_column(header, justify="left" if header == "run" else "right")
    for s in summaries:
        table.add_row(s["run"], _cell(s["step"], "{:,}"), _cell(s["tokens"], "{:,}"), _cell(s["last_loss"], "{:.4f}"),
                      _cell(s["best_val_loss"], "{:.4f}"), _cell(s["best_val_step"], "{:,}"),
                      _cell(s["last_wikitext2_val_ppl"], "{:.2f}"))
    return table


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _figure_path(out: Path) -> Path:
    """--out with `~` expanded, checked before any work: a figure file in a folder that can be written."""
    from kronypt.report import check_figure_path

    out = check_figure_path(out.expanduser())
    check_writable(out.resolve().parent, f"--out {out}")
    return out
