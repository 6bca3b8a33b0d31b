"""`kronypt study`: which compression wins on a model, at which budget, before and after healing."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from kronypt.cli.app import app, console
from kronypt.errors import KronyptError
from kronypt.study.methods import DEFAULT_METHODS, DENSE, METHODS


@app.command()
def study(
    model: Annotated[str, typer.Argument(help="The dense model: a local folder, a .gguf file, a packaged model "
                                              "(smollm2-135m) or a hub id.")],
    data: Annotated[str, typer.Option(help="Token folder prepared with the model's tokenizer (`kronypt data "
                                           "prepare --tokenizer MODEL`): healing reads its train split, the "
                                           "validation loss and KL its val split.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Study folder; run again with the same settings to "
                                                          "resume it.")],
    budgets: Annotated[str, typer.Option(help="Fractions of the MLP parameters kept, comma-separated.")] = "0.5,0.25",
    methods: Annotated[str, typer.Option(help=f"Comma-separated, from: {', '.join([DENSE, *METHODS])}.")] = (
        ",".join(DEFAULT_METHODS)),
    calibration: Annotated[str | None, typer.Option(help="Calibration data for activation-aware fits, "
                                                         "sensitivity and block importance (default: --data).")] = None,
    calibration_tokens: Annotated[int, typer.Option(min=1024, help="Calibration tokens.")] = 32_768,
    heal_tokens: Annotated[int, typer.Option(min=0, help="Training tokens per run, the same for every method "
                                                         "(0: zero-shot only).")] = 262_144,
    seq_len: Annotated[int, typer.Option(min=2, help="Healing and validation window length.")] = 1024,
    micro_batch_size: Annotated[int, typer.Option(min=1, help="Windows per forward while healing.")] = 4,
    tokens_per_step: Annotated[int, typer.Option(min=1, help="Tokens per optimizer step.")] = 8192,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, cosine to --min-lr).")] = 2e-4,
    min_lr: Annotated[float, typer.Option(help="Learning rate at the end of healing.")] = 2e-5,
    warmup_steps: Annotated[int, typer.Option(min=0, help="Linear warm-up steps.")] = 4,
    trainable: Annotated[str, typer.Option(help="What healing trains: all, mlp (the MLP matrices only) or "
                                                "compressed (the compressed layers only; faster on a CPU).")] = "all",
    precision: Annotated[str, typer.Option(help="Healing precision: bf16 (autocast, float32 master weights; "
                                                "several times faster on CPUs with AMX) or fp32.")] = "bf16",
    distill: Annotated[float, typer.Option(min=0.0, max=1.0, help="Weight of distillation from the dense model "
                                                                  "(0: plain language-model loss).")] = 0.0,
    eval_data: Annotated[str | None, typer.Option("--data-dir", help="Folder with WikiText-2 and LAMBADA (like "
                                                                     "../shared/data); default: the hub.")] = None,
    eval_windows: Annotated[int, typer.Option(min=1, help="Validation windows for the loss and the KL.")] = 32,
    eval_stride: Annotated[int, typer.Option(min=1, help="hf-strided stride of WikiText-2 (1024: disjoint "
                                                         "windows; 512: the Hugging Face guide's overlap).")] = 1024,
    eval_dtype: Annotated[str, typer.Option(help="Evaluation dtype, the same for every model: bfloat16 (several "
                                                 "times faster on CPUs with AMX and on GPUs) or float32.")] = (
        "bfloat16"),
    eval_max_tokens: Annotated[int | None, typer.Option(min=2, help="Score only the start of WikiText-2 and "
                                                                    "LAMBADA (quick checks).")] = None,
    heal_dense: Annotated[bool, typer.Option(help="Heal the dense model too (what the tokens do without "
                                                  "compression).")] = True,
    seed: Annotated[int, typer.Option(help="Seed of calibration and healing.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Compare compression methods on one model at equal parameters and equal healing.

    For every budget and method (Kronecker with weight-space or activation-aware fits, with or without
    sizes chosen by measured sensitivity; low-rank, plain or whitened; dropped blocks), compress the model,
    evaluate it (WikiText-2 hf-strided and LAMBADA lambada-openai with the model's tokenizer; validation loss
    and KL to the dense model), heal it with the same recipe on the same number of tokens, and evaluate again.
    Writes OUT/results.json, OUT/results.md and figures (with matplotlib); every finished step is kept, so a
    killed study resumes where it stopped.

    Example: kronypt study smollm2-135m --data data/gutenberg-smollm2 --data-dir ../shared/data --out studies/smollm2
    """
    from kronypt.study.config import StudyConfig

    config = StudyConfig(model=model, data=data, out=str(out), budgets=_floats(budgets),
                         methods=[m.strip() for m in methods.split(",") if m.strip()], calibration=calibration,
                         calibration_tokens=calibration_tokens, heal_tokens=heal_tokens, seq_len=seq_len,
                         micro_batch_size=micro_batch_size, tokens_per_step=tokens_per_step, lr=lr, min_lr=min_lr,
                         warmup_steps=warmup_steps, trainable=trainable, precision=precision, distill=distill,
                         eval_data=eval_data, eval_windows=eval_windows, eval_stride=eval_stride, eval_dtype=eval_dtype,
                         eval_max_tokens=eval_max_tokens, heal_dense=heal_dense,
                         seed=seed, device=device)
    if not Path(data).is_dir():
        raise FileNotFoundError(f"token folder {data} does not exist")
    from kronypt.study.runner import run_study

    run_study(config, log=lambda line: sys.stderr.write(f"kronypt study: {line}\n"))
    console.print((out / "results.md").read_text(), markup=False, highlight=False)


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise KronyptError(f"cannot read budgets {text!r}: expected fractions such as 0.5,0.25") from None
