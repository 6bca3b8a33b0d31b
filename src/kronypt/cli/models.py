"""`kronypt export`, `info` and `generate`: convert and inspect model folders, and continue a prompt.

The commands import the model stack (torch, transformers) when they run, so `--help` answers at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from kronypt.cli.app import app, console, print_json
from kronypt.cli.options import (
    MODEL_HELP,
    SAVE_DTYPE_HELP,
    check_out_dir,
    parse_save_dtype,
    run_dtype,
    staged,
)
from kronypt.defaults import AUTO_DTYPE
from kronypt.errors import KronyptError

if TYPE_CHECKING:
    import torch

    from kronypt.models import Family

@app.command()
def export(
    model: Annotated[str, typer.Argument(help="A kronypt model folder, or a .gguf file / packaged model to convert "
                                              "to a plain Hugging Face folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the exported model.")],
    dense: Annotated[bool, typer.Option("--dense", help="A plain folder of the base architecture "
                                                        "(GPT2LMHeadModel, LlamaForCausalLM, ...) that loads without "
                                                        "kronypt (the only format, and the default).")] = True,
    dtype: Annotated[str, typer.Option(help=SAVE_DTYPE_HELP + " Each dense weight is built in float32 "
                                                              "first.")] = AUTO_DTYPE,
    force: Annotated[bool, typer.Option(help="Write into a non-empty --out folder: its model files (weights, "
                                             "config, tokenizer) are replaced, other files stay.")] = False,
) -> None:
    """Export a kronypt model: `--dense` (the default) rebuilds every compressed weight into a plain checkpoint
    of the base architecture with its tokenizer, loadable by transformers alone, in the folder's dtype unless
    --dtype says otherwise. A GGUF model is written as a plain float32 folder (dequantised).

    Example: kronypt export runs/81M/best/model --out gpt2-81M-dense
    """
    from kronypt.models import count_params, load_config, load_model, save_tokenizer, to_dense
    from kronypt.models.loading import model_dtype
    from kronypt.models.schemes import config_size
    from kronypt.models.sources import local_model_dir, model_source

    save_dtype = parse_save_dtype(dtype)
    check_out_dir(out, force, source=local_model_dir(model))
    config_size(load_config(model), model)  # a model of another family is refused before its weights load
    lm = load_model(model, dtype=AUTO_DTYPE)
    compressed = bool(getattr(lm.config, "compressed_modules", None))
    if not compressed and not model_source(model).is_gguf:
        raise KronyptError(f"{model} has no compressed layers: it is already a plain "
                           f"{type(lm).__name__}, nothing to export")
    save_dtype = model_dtype(lm) if save_dtype is None else save_dtype  # auto: the folder's
    plain = (to_dense(lm.float()) if compressed else lm).to(save_dtype)  # W = Σ s·A⊗B in float32, rounded once
    with staged(out) as tmp:
        plain.save_pretrained(tmp)
        save_tokenizer(model, tmp)
    console.print(f"dense {type(plain).__name__} with {count_params(plain):,} parameters saved to {out}")


@app.command()
def info(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Summarise a model: architecture, parameter count, stored dtype and its compressed layers.

    Example: kronypt info gpt2-81M --json
    """
    from kronypt.models import count_params, load_config, load_model, mlp_layout
    from kronypt.models.configuration import config_context_length
    from kronypt.models.loading import model_dtype
    from kronypt.models.schemes import config_size

    config = load_config(model)
    config_size(config, model)  # a model of another family is refused before its weights load
    lm = load_model(model, dtype=AUTO_DTYPE)  # as stored: `dtype` is the checkpoint's
    layout = mlp_layout(lm)
    modules = getattr(lm.config, "compressed_modules", {})
    summary = {
        "model": model,
        "model_type": getattr(lm.config, "base_model_type", None) or lm.config.model_type,
        "compressed": bool(modules),
        "family": layout.family.name,
        "params": count_params(lm),
        "blocks": layout.blocks,
        "hidden": layout.hidden,
        "inner": layout.inner,
        "vocab_size": lm.config.vocab_size,
        "context": config_context_length(lm.config),
        "tied_embeddings": lm.get_output_embeddings().weight is lm.get_input_embeddings().weight,
        "dtype": str(model_dtype(lm)).removeprefix("torch."),
        # with the B shapes the table shows (the config records A's only)
        "compressed_modules": {path: {**spec, **_b_shape(lm.get_submodule(path))} for path, spec in modules.items()},
    }
    if as_json:
        print_json(summary)
        return
    table = Table(title=f"{model}", show_header=False)
    for key, value in summary.items():
        if key != "compressed_modules":
            table.add_row(key, f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value))
    table.add_row("compressed layers", str(len(modules)))
    for line in _layer_groups(lm, layout.family, modules):
        table.add_row("", line)
    console.print(table)


def _layer_groups(lm: torch.nn.Module, family: Family, modules: dict) -> list[str]:
    """One line per matrix name and factor layout, with the blocks that have it: 'c_fc: A 768x768,
    B 4x1, k=1 (blocks 0-11)'."""
    groups: dict[tuple[str, str], list[int]] = {}
    for path, spec in modules.items():
        block, _, name = path.removeprefix(f"{family.blocks}.").partition(f".{family.mlp}.")
        if spec.get("method") == "low-rank":
            layout = f"rank {spec['rank']}"
        else:
            (a1, a2), (b1, b2) = spec["a_shape"], lm.get_submodule(path).shape.b_shape
            layout = f"A {a1}x{a2}, B {b1}x{b2}, k={spec['factors']}{', scalars' if spec.get('scalars') else ''}"
        groups.setdefault((name, layout), []).append(int(block))
    lines = []
    for (name, layout), blocks in sorted(groups.items(), key=lambda item: (min(item[1]), item[0])):
        label = "block" if len(blocks) == 1 else "blocks"
        lines.append(f"{name}: {layout} ({label} {_ranges(sorted(blocks))})")
    return lines


def _b_shape(layer: torch.nn.Module) -> dict:
    """A Kronecker layer's B shape, which its config entry (A's shape only) leaves implicit."""
    return {"b_shape": list(layer.shape.b_shape)} if hasattr(layer, "shape") else {}


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
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
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
    import torch

    from kronypt.models import load_config, load_model, load_tokenizer
    from kronypt.models.configuration import config_context_length
    from kronypt.models.loading import check_device
    from kronypt.models.tokenizers import check_tokenizer_fits, saved_tokenizer

    target = check_device(device)
    _check_prompt(prompt)
    config = load_config(model)  # a mistyped model is named as such, not as a missing tokenizer
    tok = load_tokenizer(tokenizer or _default_tokenizer(model))
    check_tokenizer_fits(tok, config.vocab_size, saved_tokenizer(model) if tokenizer is not None else None)
    lm = load_model(model, dtype=run_dtype(dtype, target), device=target)
    torch.manual_seed(seed)
    ids = tok(prompt, return_tensors="pt").input_ids.to(target)
    started = ids.shape[1] == 0
    if started:  # an empty prompt: start a new document, as GPT-2 was trained
        start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if start is None:
            raise KronyptError("empty --prompt, and the tokenizer has no BOS/EOS token to start from")
        ids = torch.tensor([[start]], device=target)
    context = config_context_length(lm.config)
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
    text = tok.decode(out[0][1:] if started else out[0], skip_special_tokens=True)  # nor the start token
    console.print(text, markup=False, highlight=False)


def _check_prompt(prompt: str) -> None:
    """A prompt the shell passed as bytes that are not UTF-8 (Python keeps them as surrogates) is refused."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise KronyptError("--prompt is not valid UTF-8 text") from None


def _default_tokenizer(model: str) -> str:
    """The model's own tokenizer: its folder's, its GGUF's or its hub repo's; else a clear error."""
    from kronypt.models import has_tokenizer
    from kronypt.models.sources import model_source

    source = model_source(model)
    if source.folder is None or source.is_gguf or has_tokenizer(source.folder):
        return model
    raise KronyptError(f"{model} holds no tokenizer files; pass --tokenizer (a hub id or a tokenizer folder)")
