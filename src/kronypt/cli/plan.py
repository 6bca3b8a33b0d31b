"""`kronypt plan`: the Kronecker schemes of a model with their sizes, ranks and costs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from kronypt.cli.app import app, console, print_json

if TYPE_CHECKING:
    from kronypt.models.schemes import ModelSize, PlanRow


@app.command()
def plan(
    model: Annotated[str, typer.Argument(help="GPT-2 family name (gpt2, gpt2-medium, gpt2-large, gpt2-xl, "
                                              "distilgpt2: known offline), packaged model (smollm2-135m), .gguf "
                                              "file, hub id, or local model folder.")],
    factors: Annotated[int | None, typer.Option("--factors", "-k", min=1,
                                                help="List every divisor-pair scheme with K factors (the "
                                                     "named schemes stay listed with their own k).")] = None,
    scalars: Annotated[bool, typer.Option(help="Count one learnable scalar per factor.")] = False,
    all_shapes: Annotated[bool, typer.Option("--all", help="List every divisor pair (with --factors, default 1), "
                                                           "not only the named schemes.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of the table.")] = False,
) -> None:
    """List compression schemes: A and B shapes, parameters per matrix and per model, the fraction of the MLP
    parameters kept, max rank, FLOP ratio.

    A and B are the shapes of the widening MLP matrices (GPT-2's c_fc, Llama's gate_proj and up_proj) in
    (out = inner, in = hidden) orientation; the narrowing ones (c_proj, down_proj) use the transposed shapes.
    By default the paper's named schemes (README "Schemes") are shown for GPT-2 models with GPT-2 124M's MLP
    (768 -> 3072: gpt2, distilgpt2); the names are its A shapes, so on such a model with other depths the
    parameter counts differ from the names. Other models have no named schemes: the one-factor schemes that
    keep 3/4, 1/2, 1/4, 1/8 and 1/16 of the MLP parameters (what `compress --ratio` picks) are shown; `--all`
    or `--factors K` list every (m1, n1) that divides the MLP, for any model. Rows marked 'no' in the compresses column
    save nothing: k ≥ m2·n2 (or m1·n1) terms can represent any matrix.

    Example: kronypt plan gpt2 --json, kronypt plan smollm2-135m, or kronypt plan gpt2-medium --factors 2
    """
    from kronypt.models.loading import load_config
    from kronypt.models.schemes import config_size, plan_rows

    size = config_size(load_config(model), model)
    rows = plan_rows(size, factors or 1, scalars)
    if not (all_shapes or factors):
        rows = _default_rows(size, rows, scalars)
    if as_json:
        print_json([r.to_json() for r in rows])
        return
    console.print(_table(model, rows, size))


MENU_RATIOS = (0.75, 0.5, 0.25, 0.125, 0.0625)  # what a model without named schemes shows by default


def _default_rows(size: ModelSize, rows: list[PlanRow], scalars: bool) -> list[PlanRow]:
    """The named schemes where the model has them; else, for keeping 3/4, 1/2, 1/4, 1/8 and 1/16 of the MLP
    parameters, the one-factor scheme `--ratio` would pick."""
    from kronypt.models.schemes import pick_for_ratio, scheme_names

    named = set(scheme_names())
    if size.named:
        return [r for r in rows if r.name in named]
    picks = {pick_for_ratio(size, ratio, scalars=scalars) for ratio in MENU_RATIOS}
    return sorted(picks, key=lambda r: r.model_params)


def _table(model: str, rows: list[PlanRow], size: ModelSize) -> Table:
    layout = size.layout
    widening = "/".join(layout.family.widening)
    table = Table(title=f"Kronecker schemes for {model} (dense: {size.dense_params:,} parameters; "
                        f"{size.matrices} MLP matrices of {layout.inner}x{layout.hidden})")
    for header in ("name", f"A ({widening})", f"B ({widening})", "k", "params/matrix", "model params",
                   "MLP kept", "max rank", "FLOPs vs dense", "compresses"):
        table.add_column(header, justify="left" if header == "name" else "right")
    for r in rows:
        table.add_row(r.name or "", "x".join(map(str, r.a_shape)), "x".join(map(str, r.b_shape)),
                      str(r.factors), f"{r.params_per_matrix:,}", f"{r.model_params:,}", f"{r.mlp_ratio:.4f}",
                      str(r.max_rank), f"{r.flops_ratio:.3f}", "yes" if r.compresses else "[red]no[/red]")
    return table
