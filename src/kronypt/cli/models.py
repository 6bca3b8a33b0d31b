"""`kronypt compress`, `export`, `info` and `generate`: make, convert and inspect model folders."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.table import Table

from kronypt.cli.app import app, console, print_json
from kronypt.cli.options import (
    SAVE_DTYPE_HELP,
    check_out_dir,
    parse_layers,
    parse_save_dtype,
    run_dtype,
    staged,
)
from kronypt.errors import KronyptError
from kronypt.math.shapes import parse_shape
from kronypt.models import (
    CompressionConfig,
    CompressionReport,
    KronyGPT2Config,
    allocate_factors,
    copy_tokenizer_files,
    count_params,
    has_tokenizer,
    load_config,
    load_model,
    load_tokenizer,
    to_dense,
)
from kronypt.models import (
    compress as compress_model,
)
from kronypt.models.loading import AUTO_DTYPE, check_device, local_model_dir, model_dtype
from kronypt.plan import plan_row

INIT_HELP = "van-loan (nearest Kronecker product, exact SVD), prune (keep one entry per B block), or random."


@app.command()
def compress(
    model: Annotated[str, typer.Argument(help="Hub id (e.g. gpt2) or local folder of a GPT-2-family model.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the compressed model to.")],
    scheme: Annotated[str | None, typer.Option(help="Named scheme, e.g. 81M, 96M-prune, 92M-4 "
                                                    "(see `kronypt plan gpt2`).")] = None,
    a_shape: Annotated[str | None, typer.Option("--a-shape", help="A-factor shape MxN of c_fc (out x in).")] = None,
    factors: Annotated[int | None, typer.Option("--factors", "-k", min=1, help="Number of Kronecker terms.")] = None,
    target_params: Annotated[int | None, typer.Option(help="Pick the largest scheme with at most this many "
                                                           "model parameters (matrices left out by --layers/"
                                                           "--modules stay dense and count in full).")] = None,
    allocate: Annotated[bool, typer.Option(
        "--allocate", help="With --target-params and --scheme/--a-shape: keep that A shape but give each matrix "
                           "its own number of factors, spending the budget where terms remove the most Van "
                           "Loan error; --factors then caps k per matrix.")] = False,
    scalars: Annotated[bool, typer.Option(help="Give every factor a learnable scalar.")] = False,
    init: Annotated[str | None, typer.Option(help=INIT_HELP + " Default: the scheme's, else van-loan.")] = None,
    rescale: Annotated[bool, typer.Option(help="Van Loan: rescale so that ‖Ŵ‖ = ‖W‖.")] = False,
    prune_fill: Annotated[float, typer.Option(help="Prune init: value of the dropped B entries "
                                                   "(0 gives B=[1,0], 0.1 gives [1,0.1]).")] = 0.0,
    layers: Annotated[str | None, typer.Option(help="Blocks to compress: 'all', '0-5', '0,2,4-7'.")] = None,
    modules: Annotated[str, typer.Option(help="MLP matrices to compress, comma-separated.")] = "c_fc,c_proj",
    dtype: Annotated[str, typer.Option(help=SAVE_DTYPE_HELP + " The factors are computed in float64 "
                                                              "either way.")] = AUTO_DTYPE,
    force: Annotated[bool, typer.Option(help="Write into a non-empty --out folder: its model files (weights, "
                                             "config, tokenizer) are replaced, other files stay.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Replace the MLP weights of a GPT-2 model by Kronecker factors and save it in Hugging Face format.

    Give exactly one of --scheme, --a-shape or --target-params; or `--allocate` with --target-params and a
    shape, e.g. `--a-shape 1024x256 --target-params 85000000 --allocate` (k between 1 and 8 per matrix
    instead of one k everywhere: 80M-2's k = 2 fits that budget, 86M-3's k = 3 does not). The folder loads with
    `AutoModelForCausalLM.from_pretrained` after `import kronypt`, and holds the per-matrix error report
    (compression_report.json).

    Example: kronypt compress gpt2 --scheme 81M --out gpt2-81M
    """
    chosen = [o for o in (scheme, a_shape, target_params) if o is not None]
    if allocate and (target_params is None or len(chosen) != 2):
        raise KronyptError("--allocate needs --target-params and one of --scheme or --a-shape (the A shape "
                           "every matrix keeps)")
    if not allocate and len(chosen) != 1:
        raise KronyptError("give exactly one of --scheme, --a-shape or --target-params (or --allocate with "
                           "--target-params and a shape)")
    save_dtype = parse_save_dtype(dtype)
    check_out_dir(out, force, source=local_model_dir(model))
    options = {"scalars": scalars, "rescale": rescale, "prune_fill": prune_fill, "layers": parse_layers(layers),
               "modules": tuple(m.strip() for m in modules.split(",") if m.strip())}
    if init is not None:
        options["init"] = init
    if factors is not None and not allocate:
        options["factors"] = factors
    if scheme is not None:
        config = CompressionConfig.from_scheme(scheme, **options)
    elif a_shape is not None:
        config = CompressionConfig(a_shape=parse_shape(a_shape), **options)
    else:
        config = None
    model_config = load_config(model)
    if config is None:
        config = CompressionConfig.from_target_params(model_config, target_params, **options)
    row = plan_row(model_config, config.a_shape, config.factors)  # refuses bad shapes and too many factors
    if not row.compresses and not allocate:
        sys.stderr.write(f"kronypt: warning: A {row.a_shape[0]}x{row.a_shape[1]} with {row.factors} factors can "
                         f"represent any matrix of this size: it saves nothing ({row.model_params:,} parameters)\n")
    lm = load_model(model, dtype=AUTO_DTYPE, gpt2_only=True)
    save_dtype = model_dtype(lm) if save_dtype is None else save_dtype  # auto: the checkpoint's
    lm.float()  # Van Loan reads float32 weights (exact for bf16/fp16) and works in float64
    if Path(model).is_dir() and not has_tokenizer(model):
        sys.stderr.write(f"kronypt: warning: {model} holds no tokenizer files, so neither will {out}; give "
                         "`generate`/`eval` a --tokenizer, or copy vocab.json and merges.txt into it\n")
    if allocate:
        config = allocate_factors(lm, config, target_params, max_factors=factors)
    report = compress_model(lm, config)
    lm.to(save_dtype)
    payload = _folder_report(model, report, config, None if allocate else row.name, out, allocate)
    with staged(out) as tmp:
        lm.save_pretrained(tmp)
        (tmp / "compression_report.json").write_text(json.dumps(payload, indent=2))
        _copy_tokenizer(model, tmp)
    if as_json:
        print_json(payload)
    else:
        console.print(_report_table(report))
        console.print(f"saved to {out}")


def _folder_report(source: str, report: CompressionReport, config: CompressionConfig, scheme: str | None,
                   out: Path, allocated: bool) -> dict:
    """compression_report.json: what this pass did, and every matrix of the folder. Compressing an already
    compressed folder further keeps the earlier pass's matrices and its dense parameter count."""
    payload = {"out": str(out), "source": source, "scheme": scheme, "a_shape": list(config.a_shape),
               "factors": None if allocated else config.factors, "allocated": allocated, "init": config.init,
               "scalars": config.scalars, **report.to_json()}
    earlier = Path(source) / "compression_report.json"
    if Path(source).is_dir() and earlier.is_file():
        try:
            before = json.loads(earlier.read_text())
            new = {m["name"] for m in payload["matrices"]}
            payload["matrices"] = [m for m in before["matrices"] if m["name"] not in new] + payload["matrices"]
            payload["params_before"] = before["params_before"]
        except (ValueError, KeyError, TypeError):
            pass  # an unreadable earlier report: this pass's alone
        errors = [m["rel_error"] for m in payload["matrices"]]
        payload["mean_rel_error"] = sum(errors) / len(errors)
    return payload


@app.command()
def export(
    model_dir: Annotated[Path, typer.Argument(help="A kronypt model folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the exported model.")],
    dense: Annotated[bool, typer.Option("--dense", help="A plain GPT-2 (GPT2LMHeadModel) folder that loads "
                                                        "without kronypt (the only format, and the "
                                                        "default).")] = True,
    dtype: Annotated[str, typer.Option(help=SAVE_DTYPE_HELP + " Each dense weight is built in float32 "
                                                              "first.")] = AUTO_DTYPE,
    force: Annotated[bool, typer.Option(help="Write into a non-empty --out folder: its model files (weights, "
                                             "config, tokenizer) are replaced, other files stay.")] = False,
) -> None:
    """Export a kronypt model: `--dense` (the default) rebuilds every Kronecker weight into a plain GPT-2
    checkpoint with its tokenizer, loadable by transformers alone, in the folder's dtype unless --dtype says
    otherwise.

    Example: kronypt export runs/81M/best/model --out gpt2-81M-dense
    """
    save_dtype = parse_save_dtype(dtype)
    check_out_dir(out, force, source=local_model_dir(str(model_dir)))
    load_config(str(model_dir))  # a model of another family is refused before its weights load
    lm = load_model(str(model_dir), dtype=AUTO_DTYPE, gpt2_only=True)
    if not isinstance(lm.config, KronyGPT2Config) or not lm.config.kron_modules:
        raise KronyptError(f"{model_dir} has no Kronecker layers: it is already a plain GPT-2, nothing to export")
    save_dtype = model_dtype(lm) if save_dtype is None else save_dtype  # auto: the folder's
    plain = to_dense(lm.float()).to(save_dtype)  # W = Σ s·A⊗B summed in float32, rounded once
    with staged(out) as tmp:
        plain.save_pretrained(tmp)
        _copy_tokenizer(str(model_dir), tmp)
    console.print(f"dense GPT-2 with {count_params(plain):,} parameters saved to {out}")


@app.command()
def info(
    model: Annotated[str, typer.Argument(help="Model folder or hub id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Summarise a model: architecture, parameter count, stored dtype and its Kronecker layers.

    Example: kronypt info gpt2-81M --json
    """
    load_config(model)  # a model of another family is refused before its weights load (and report)
    lm = load_model(model, dtype=AUTO_DTYPE, gpt2_only=True)  # as stored: `dtype` is the checkpoint's
    config = lm.config
    modules = config.kron_modules if isinstance(config, KronyGPT2Config) else {}
    summary = {
        "model": model,
        "model_type": config.model_type,
        "params": count_params(lm),
        "n_layer": config.n_layer,
        "n_embd": config.n_embd,
        "vocab_size": config.vocab_size,
        "n_positions": config.n_positions,
        "dtype": str(model_dtype(lm)).removeprefix("torch."),
        # with the B shapes the table shows (the config records A's only)
        "kronecker_modules": {path: {**spec, "b_shape": list(lm.get_submodule(path).shape.b_shape)}
                              for path, spec in modules.items()},
    }
    if as_json:
        print_json(summary)
        return
    table = Table(title=f"{model}", show_header=False)
    for key, value in summary.items():
        if key != "kronecker_modules":
            table.add_row(key, f"{value:,}" if isinstance(value, int) else str(value))
    table.add_row("kronecker layers", str(len(modules)))
    for line in _layer_groups(lm, modules):
        table.add_row("", line)
    console.print(table)


def _layer_groups(lm: torch.nn.Module, modules: dict) -> list[str]:
    """One line per matrix name and factor layout, with the blocks that have it: 'c_fc: A 768x768,
    B 4x1, k=1 (blocks 0-11)'."""
    groups: dict[tuple, list[int]] = {}
    for path, spec in modules.items():
        block, _, name = path.removeprefix("transformer.h.").partition(".mlp.")
        b_shape = tuple(lm.get_submodule(path).shape.b_shape)
        key = (name, tuple(spec["a_shape"]), b_shape, spec["factors"], bool(spec.get("scalars")))
        groups.setdefault(key, []).append(int(block))
    lines = []
    for (name, a, b, k, scalars), blocks in sorted(groups.items(), key=lambda item: (min(item[1]), item[0])):
        label = "block" if len(blocks) == 1 else "blocks"
        lines.append(f"{name}: A {a[0]}x{a[1]}, B {b[0]}x{b[1]}, k={k}{', scalars' if scalars else ''} "
                     f"({label} {_ranges(sorted(blocks))})")
    return lines


def _ranges(numbers: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    runs = [[numbers[0], numbers[0]]]
    for n in numbers[1:]:
        if n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    parts = [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in runs]
    return ", ".join(parts)


@app.command()
def generate(
    model: Annotated[str, typer.Argument(help="Model folder or hub id.")],
    prompt: Annotated[str, typer.Option(help="Text to continue.")],
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens to generate.")] = 40,
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer id or folder (default: the model's "
                                                       "own).")] = None,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto (the GPU when there is one), cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[str | None, typer.Option(help="float32, bfloat16 or float16 (default: bfloat16 on a GPU, "
                                                   "float32 on the CPU).")] = None,
    compiled: Annotated[bool, typer.Option(
        "--compile", help="Static KV cache and a torch.compile'd forward (CUDA graphs on a GPU): slow to "
                          "start, fastest per token; the fused kernels stay single graph nodes.")] = False,
) -> None:
    """Continue a prompt with a dense or kronypt model.

    On a GPU the compressed layers take the fused Triton kernels where they were measured to win. For
    long generations add `--compile`: per-token time is then set by the GPU, not by Python launching
    kernels one by one.

    Example: kronypt generate gpt2-81M --prompt "The meaning of life is" --max-new-tokens 40 --temperature 0.8
    """
    target = check_device(device)
    load_config(model, gpt2_only=False)  # a mistyped model is named as such, not as a missing tokenizer
    tok = load_tokenizer(tokenizer or _default_tokenizer(model))
    lm = load_model(model, dtype=run_dtype(dtype, target), device=target)
    if len(tok) > lm.config.vocab_size:
        raise KronyptError(f"tokenizer has {len(tok)} tokens but the model only {lm.config.vocab_size}")
    torch.manual_seed(seed)
    ids = tok(prompt, return_tensors="pt").input_ids.to(target)
    started = ids.shape[1] == 0
    if started:  # an empty prompt: start a new document, as GPT-2 was trained
        start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if start is None:
            raise KronyptError("empty --prompt, and the tokenizer has no BOS/EOS token to start from")
        ids = torch.tensor([[start]], device=target)
    context = getattr(lm.config, "n_positions", None) or getattr(lm.config, "max_position_embeddings", None)
    if context is not None and ids.shape[1] + max_new_tokens > context:
        raise KronyptError(f"the prompt ({ids.shape[1]} tokens) plus --max-new-tokens {max_new_tokens} exceed the "
                           f"model's context of {context} tokens")
    sample = temperature > 0
    options = {}
    if compiled:
        lm.forward = torch.compile(lm.forward, mode="reduce-overhead" if target.type == "cuda" else None,
                                   fullgraph=True, dynamic=False)
        options["cache_implementation"] = "static"
    out = lm.generate(ids, max_new_tokens=max_new_tokens, do_sample=sample,
                      temperature=temperature if sample else None, pad_token_id=tok.eos_token_id, **options)
    console.print(tok.decode(out[0][1:] if started else out[0]), markup=False, highlight=False)  # not the start token


def _default_tokenizer(model: str) -> str:
    """The model folder itself when it holds a tokenizer; a hub id's own tokenizer; else a clear error."""
    if local_model_dir(model) is None or has_tokenizer(model):  # a mistyped folder is named as the model
        return model
    raise KronyptError(f"{model} holds no tokenizer files; pass --tokenizer (a hub id or a tokenizer folder)")


def _copy_tokenizer(source: str, dest: Path) -> None:
    """Carry the tokenizer along with the weights (files from a local folder; a hub tokenizer is saved)."""
    if Path(source).is_dir():
        copy_tokenizer_files(source, dest)
        return
    try:
        load_tokenizer(source).save_pretrained(dest)
    except (KronyptError, OSError, ValueError):
        pass  # the model loaded from the hub; a missing tokenizer there is not fatal for compression


def _report_table(report: CompressionReport) -> Table:
    table = Table(title=f"{report.params_before:,} -> {report.params_after:,} parameters "
                        f"(mean relative error {report.mean_rel_error:.4f})")
    for header in ("matrix", "A", "B", "k", "params", "dense params", "rel. error"):
        table.add_column(header, justify="left" if header == "matrix" else "right")
    for m in report.matrices:
        table.add_row(m.name.removeprefix("transformer."), "x".join(map(str, m.a_shape)),
                      "x".join(map(str, m.b_shape)), str(m.factors), f"{m.params:,}", f"{m.dense_params:,}",
                      f"{m.rel_error:.4f}")
    return table
