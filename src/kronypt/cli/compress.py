"""`kronypt compress`: a model's MLPs compressed (Kronecker factors, low-rank factors or fewer blocks) into a
Hugging Face folder with its report.

The command imports the model stack (torch, transformers) when it runs, so `--help` answers at once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from kronypt.cli.app import app, console, print_json
from kronypt.cli.options import (
    MODEL_HELP,
    SAVE_DTYPE_HELP,
    check_out_dir,
    parse_layers,
    parse_save_dtype,
    staged,
)
from kronypt.defaults import AUTO_DTYPE, CALIBRATION_TOKENS
from kronypt.errors import KronyptError

if TYPE_CHECKING:
    from kronypt.models import CompressionReport

INIT_HELP = "van-loan (nearest Kronecker product, exact SVD), prune (keep one entry per B block), or random."


@app.command()
def compress(
    model: Annotated[str, typer.Argument(help=MODEL_HELP + " GPT-2 or Llama-family (gate/up/down MLPs).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the compressed model to.")],
    method: Annotated[str, typer.Option(help="kronecker (W ≈ Σ A_i ⊗ B_i), low-rank (W ≈ U·V) or drop-blocks "
                                             "(remove whole blocks).")] = "kronecker",
    scheme: Annotated[str | None, typer.Option(help="Named scheme of GPT-2 124M's MLP, e.g. 81M, 96M-prune, 92M-4 "
                                                    "(see `kronypt plan gpt2`).")] = None,
    a_shape: Annotated[str | None, typer.Option("--a-shape", help="A-factor shape MxN of the widening MLP "
                                                                  "matrices (c_fc; gate_proj/up_proj) in out x in "
                                                                  "orientation; the narrowing ones (c_proj; "
                                                                  "down_proj) get the transposed shapes.")] = None,
    factors: Annotated[int | None, typer.Option("--factors", "-k", min=1, help="Number of Kronecker terms.")] = None,
    target_params: Annotated[int | None, typer.Option(help="Pick the largest size with at most this many model "
                                                           "parameters (matrices left out by --layers/--modules "
                                                           "stay as they are and count in full).")] = None,
    ratio: Annotated[float | None, typer.Option(help="Keep this fraction R of the MLP parameters (0 < R < 1): the "
                                                     "size whose matrices keep the fraction nearest R.")] = None,
    rank: Annotated[int | None, typer.Option(min=1, help="Low-rank: the rank of every matrix.")] = None,
    allocate: Annotated[bool, typer.Option(
        "--allocate", help="With a budget (--target-params or --ratio) and a shape (--scheme or --a-shape): keep "
                           "that A shape but give each matrix its own number of factors, spending the budget where "
                           "terms remove the most Van Loan error; --factors then caps k per matrix.")] = False,
    fit: Annotated[str, typer.Option(help="weights (nearest in Frobenius norm) or activations (least error of the "
                                          "matrix's outputs on --calibration inputs: whitened Van Loan refined by "
                                          "alternating least squares; SVD-LLM's whitening for low-rank).")] = "weights",
    allocation: Annotated[str, typer.Option(help="uniform, or sensitivity (with a budget and --calibration: the "
                                                 "loss increase of each block's MLP alone at 1/2 .. 1/16 of its "
                                                 "parameters is measured on the first 8 calibration windows, and "
                                                 "each block gets the size, dense included, that adds the least "
                                                 "loss within the budget).")] = "uniform",
    drop: Annotated[str, typer.Option(help="drop-blocks: importance (the blocks that change the hidden state least "
                                           "on --calibration text, as ShortGPT) or every-other (spread evenly, as "
                                           "DistilGPT2).")] = "importance",
    calibration: Annotated[str | None, typer.Option(help="Calibration data: a token folder (`kronypt data prepare` "
                                                         "with the model's tokenizer) or a text file.")] = None,
    calibration_tokens: Annotated[int, typer.Option(min=1, help="Calibration tokens (1024-token windows).")] = (
        CALIBRATION_TOKENS),
    scalars: Annotated[bool, typer.Option(help="Give every factor a learnable scalar.")] = False,
    init: Annotated[str | None, typer.Option(help=INIT_HELP + " Default: the scheme's, else van-loan.")] = None,
    rescale: Annotated[bool, typer.Option(help="Van Loan: rescale so that ‖Ŵ‖ = ‖W‖.")] = False,
    prune_fill: Annotated[float, typer.Option(help="Prune init: value of the dropped B entries "
                                                   "(0 gives B=[1,0], 0.1 gives [1,0.1]).")] = 0.0,
    layers: Annotated[str | None, typer.Option(help="Blocks to compress (or, for drop-blocks, that may be dropped): "
                                                    "'all', '0-5', '0,2,4-7'.")] = None,
    modules: Annotated[str | None, typer.Option(help="MLP matrices to compress, comma-separated (default: all of "
                                                     "the family's: c_fc,c_proj or gate_proj,up_proj,down_proj)."
                                                )] = None,
    dtype: Annotated[str, typer.Option(help=SAVE_DTYPE_HELP + " The factors are computed in float64 "
                                                              "either way.")] = AUTO_DTYPE,
    force: Annotated[bool, typer.Option(help="Write into a non-empty --out folder: its model files (weights, "
                                             "config, tokenizer) are replaced, other files stay.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Compress a model's MLPs (Kronecker factors, low-rank factors, or fewer blocks) and save it in Hugging
    Face format.

    Give exactly one size: --scheme, --a-shape, --target-params, --ratio or --rank; or `--allocate` with a budget
    and a shape, e.g. `--a-shape 1024x256 --target-params 85000000 --allocate` (k between 1 and 8 per matrix
    instead of one k everywhere). Low-rank and drop-blocks given a scheme or A shape match that Kronecker size's
    parameters as nearly as they can. The folder loads with `AutoModelForCausalLM.from_pretrained` after
    `import kronypt` (a model with dropped blocks, without it), and holds the report (compression_report.json).
    `kronypt plan MODEL` lists the shapes.

    Examples: kronypt compress smollm2-135m --ratio 0.5 --out smollm2-half;
    kronypt compress smollm2-135m --ratio 0.5 --fit activations --allocation sensitivity
    --calibration data/gutenberg-smollm2 --out smollm2-half-aware;
    kronypt compress gpt2 --scheme 81M --method low-rank --out gpt2-81M-low-rank
    """
    from kronypt.math.shapes import parse_shape
    from kronypt.models import (
        CompressionConfig,
        calibration_window,
        compress_,
        has_tokenizer,
        load_calibration,
        load_config,
        load_model,
        load_tokenizer,
        save_tokenizer,
    )
    from kronypt.models.compression import preflight
    from kronypt.models.loading import model_dtype
    from kronypt.models.sources import local_model_dir, model_source

    config = CompressionConfig(method=method, scheme=scheme, a_shape=parse_shape(a_shape) if a_shape else None,
                               factors=factors, target_params=target_params, ratio=ratio, rank=rank,
                               allocate=allocate, fit=fit, allocation=allocation, drop=drop, scalars=scalars,
                               init=init, rescale=rescale, prune_fill=prune_fill, layers=parse_layers(layers),
                               modules=modules)
    if calibration is None and config.needs_calibration:
        raise KronyptError(f"this compression needs calibration data: give --calibration DATA (a token folder, "
                           f"prepared with {model}'s tokenizer, or a text file)")
    save_dtype = parse_save_dtype(dtype)
    check_out_dir(out, force, source=local_model_dir(model))
    preflight(load_config(model), config, model)  # bad shapes, layers or families fail before weights load
    data = None
    if calibration is not None:
        data = load_calibration(calibration, calibration_tokens, seq_len=calibration_window(load_config(model)),
                                tokenizer=None if Path(calibration).is_dir() else load_tokenizer(model))
    lm = load_model(model, dtype=AUTO_DTYPE)
    save_dtype = model_dtype(lm) if save_dtype is None else save_dtype  # auto: the checkpoint's
    lm.float()  # the factors are fitted to float32 weights (exact for bf16/fp16) in float64
    folder = local_model_dir(model)
    if folder is not None and not model_source(model).is_gguf and not has_tokenizer(folder):
        sys.stderr.write(f"kronypt: warning: {model} holds no tokenizer files, so neither will {out}; give "
                         "`generate`/`eval` a --tokenizer, or copy its tokenizer files into it\n")
    report = compress_(lm, config, data)
    for note in report.notes:
        sys.stderr.write(f"kronypt: warning: {note}\n")
    lm.to(save_dtype)
    payload = _folder_report(model, report, out)
    with staged(out) as tmp:
        lm.save_pretrained(tmp)
        (tmp / "compression_report.json").write_text(json.dumps(payload, indent=2))
        save_tokenizer(model, tmp)
    if as_json:
        print_json(payload)
        return
    if report.matrices:
        console.print(_report_table(report))
    if report.dropped_blocks:
        console.print(f"dropped blocks {', '.join(map(str, report.dropped_blocks))}: {report.params_before:,} -> "
                      f"{report.params_after:,} parameters")
    if report.calibration_line():
        console.print(report.calibration_line(), highlight=False)
    console.print(f"saved to {out}")


def _folder_report(source: str, report: CompressionReport, out: Path) -> dict:
    """compression_report.json: what this pass did, and every matrix of the folder. Compressing an already
    compressed folder further keeps the earlier pass's matrices and its dense parameter count."""
    payload = {"out": str(out), "source": source, **report.to_json()}
    earlier = Path(source) / "compression_report.json"
    if Path(source).is_dir() and earlier.is_file():
        try:
            before = json.loads(earlier.read_text())
            new = {m["name"] for m in payload["matrices"]}
            kept = [m for m in before["matrices"] if m["name"] not in new]
            if report.dropped_blocks:  # the earlier matrices of dropped blocks go, the others move down
                from kronypt.models.dropping import renumbered

                keep = [i for i in range(report.blocks_before) if i not in report.dropped_blocks]
                kept = [{**m, "name": renumbered(m["name"], report.blocks_path, keep)} for m in kept]
                kept = [m for m in kept if m["name"] is not None]
            payload["matrices"] = kept + payload["matrices"]
            payload["params_before"] = before["params_before"]
        except (ValueError, KeyError, TypeError):
            pass  # an unreadable earlier report: this pass's alone
        errors = [m["rel_error"] for m in payload["matrices"]]
        payload["mean_rel_error"] = sum(errors) / len(errors) if errors else 0.0
    return payload


def _report_table(report: CompressionReport) -> Table:
    aware = any(m.output_error is not None for m in report.matrices)
    table = Table(title=f"{report.params_before:,} -> {report.params_after:,} parameters "
                        f"(mean relative error {report.mean_rel_error:.4f})")
    headers = ("matrix", "factors", "params", "dense params", "rel. error", *(("output error",) if aware else ()))
    for header in headers:
        table.add_column(header, justify="left" if header == "matrix" else "right")
    for m in report.matrices:
        shape = (f"A {m.a_shape[0]}x{m.a_shape[1]}, B {m.b_shape[0]}x{m.b_shape[1]}, k={m.factors}"
                 if m.method == "kronecker" else f"rank {m.rank}")
        errors = (f"{m.rel_error:.4f}", *((f"{m.output_error:.4f}",) if aware else ()))
        table.add_row(m.name.partition(".")[2], shape, f"{m.params:,}", f"{m.dense_params:,}", *errors)
    return table
