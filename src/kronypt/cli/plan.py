"""`kronypt plan`: the Kronecker schemes of a model with their sizes, ranks and costs."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from kronypt.cli.app import app, console, print_json
from kronypt.models.loading import load_config
from kronypt.plan import PlanRow, dense_params, plan_rows, scheme_names


@app.command()
def plan(
    model: Annotated[str, typer.Argument(help="GPT-2-family name (gpt2, gpt2-medium, gpt2-large, gpt2-xl, "
                                              "distilgpt2: known offline), hub id, or local model folder.")],
    factors: Annotated[int | None, typer.Option("--factors", "-k", min=1,
                                                help="List every divisor-pair scheme with K factors (the "
                                                     "named schemes stay listed with their own k).")] = None,
    scalars: Annotated[bool, typer.Option(help="Count one learnable scalar per factor.")] = False,
    all_shapes: Annotated[bool, typer.Option("--all", help="List every divisor pair (with --factors, default 1), "
                                                           "not only the named schemes.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of the table.")] = False,
) -> None:
    """List compression schemes: A and B shapes, parameters per matrix and per model, max rank, FLOP ratio.

    By default the paper's named schemes (README "Schemes") are shown for models with GPT-2 124M's MLP
    (768 -> 3072: gpt2, distilgpt2); the names are its A shapes, so on such a model with other depths the
    parameter counts differ from the names. Other widths have no named schemes: every (m1, n1) that divides
    c_fc is listed, as `--all` or `--factors K` do for any model. Rows marked 'no' in the compresses column
    save nothing: k ≥ m2·n2 (or m1·n1) terms can represent any matrix.

    Example: kronypt plan gpt2 --json, or kronypt plan gpt2-medium --factors 2
    """
    config = load_config(model)
    rows = plan_rows(config, factors or 1, scalars)
    named = set(scheme_names())
    if not (all_shapes or factors):
        rows = [r for r in rows if r.name in named] or rows
    if as_json:
        print_json([r.to_json() for r in rows])
        return
    console.print(_table(model, rows, dense_params(config)))


def _table(model: str, rows: list[PlanRow], dense: int) -> Table:
    table = Table(title=f"Kronecker schemes for {model} (dense: {dense:,} parameters)")
    for header in ("name", "A (c_fc)", "B (c_fc)", "k", "params/matrix", "model params", "max rank",
                   "FLOPs vs dense", "compresses"):
        table.add_column(header, justify="left" if header == "name" else "right")
    for r in rows:
        table.add_row(r.name or "", "x".join(map(str, r.a_shape)), "x".join(map(str, r.b_shape)),
                      str(r.factors), f"{r.params_per_matrix:,}", f"{r.model_params:,}", str(r.max_rank),
                      f"{r.flops_ratio:.3f}", "yes" if r.compresses else "[red]no[/red]")
    return table
