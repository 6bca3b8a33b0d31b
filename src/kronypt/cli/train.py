"""`kronypt train`: heal a compressed model (or train a small model from scratch) from a recipe and flags."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from typer.core import TyperCommand

from kronypt.cli.app import app, console, print_json
from kronypt.cli.options import check_out_path, check_writable
from kronypt.errors import KronyptError
from kronypt.train.config import TrainConfig, field_locations

if TYPE_CHECKING:
    from kronypt.train import TrainResult

Opt = typer.Option


class _RecipeDefaults(TyperCommand):
    """`kronypt train` shows each setting's default in `--help`: the flags default to None (so that only the
    flags given override the recipe), which would hide the values a run gets without them."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        defaults, locations = TrainConfig(), field_locations()
        for param in self.params:
            if param.name not in locations:
                continue
            group = locations[param.name]
            value = getattr(getattr(defaults, group) if group else defaults, param.name)
            if value is not None and value != "":
                shown = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
                param.show_default = str(shown).lower() if isinstance(shown, bool) else str(shown)


@app.command(cls=_RecipeDefaults)
def train(
    config: Annotated[Path | None, Opt("--config", "-c", help="YAML recipe (see configs/); flags override it.")] = None,
    init_from: Annotated[str | None, Opt(help="Model source: dense (compress on the fly), kronypt (a compressed "
                                              "folder), model (any model as it is), scratch.")] = None,
    model: Annotated[str | None, Opt(help="Hub id, folder, .gguf file or packaged model (smollm2-135m).")] = None,
    model_config: Annotated[str | None, Opt(help="GPT2Config JSON file for --init-from scratch.")] = None,
    scheme: Annotated[str | None, Opt(help="Named scheme for --init-from dense, e.g. 81M, 96M-prune.")] = None,
    a_shape: Annotated[str | None, Opt("--a-shape", help="Or an A-factor shape MxN of the widening MLP matrices "
                                                         "(c_fc; gate_proj/up_proj), out x in.")] = None,
    ratio: Annotated[float | None, Opt(help="Or keep this fraction of the MLP parameters (the nearest "
                                            "scheme).")] = None,
    target_params: Annotated[int | None, Opt(help="Or the largest scheme with at most this many model "
                                                  "parameters.")] = None,
    factors: Annotated[int | None, Opt(help="Kronecker terms per matrix (default: the scheme's); with "
                                            "--allocate-params, the most any matrix gets.")] = None,
    allocate_params: Annotated[int | None, Opt(help="--init-from dense: keep the scheme's A shape but give "
                                                    "each matrix its own k within this many model parameters "
                                                    "(as `compress --allocate`).")] = None,
    init: Annotated[str | None, Opt(help="Factor init: van-loan, prune or random (default: the scheme's).")] = None,
    scalars: Annotated[bool | None, Opt("--scalars/--no-scalars", help="Learnable scalar per factor.")] = None,
    data: Annotated[str | None, Opt(help="Token folder from `kronypt data prepare`.")] = None,
    out: Annotated[str | None, Opt("--out", "-o", help="Run folder: metrics.jsonl, config.yaml, checkpoints/, "
                                                       "best, latest.")] = None,
    force: Annotated[bool | None, Opt("--force/--no-force", help="Train in an --out folder that also holds other "
                                                               "files (they are kept, never deleted).")] = None,
    max_steps: Annotated[int | None, Opt(help="Optimizer steps to train for.")] = None,
    micro_batch_size: Annotated[int | None, Opt(help="Sequences per forward pass and rank.")] = None,
    seq_len: Annotated[int | None, Opt(help="Tokens per sequence.")] = None,
    tokens_per_step: Annotated[int | None, Opt(help="Tokens per optimizer step, all ranks together; "
                                                    "sets the gradient accumulation.")] = None,
    lr: Annotated[float | None, Opt(help="Peak learning rate.")] = None,
    min_lr: Annotated[float | None, Opt(help="Learning rate the schedule decays to: wsd's at the last step, "
                                             "cosine's at max_steps, one past the last (as PyTorch's and "
                                             "transformers' cosine).")] = None,
    schedule: Annotated[str | None, Opt(help="constant, cosine (warm-up, cosine) or wsd (warm-up, stable, "
                                             "decay).")] = None,
    warmup_steps: Annotated[int | None, Opt(help="Linear warm-up steps.")] = None,
    weight_decay: Annotated[float | None, Opt(help="AdamW weight decay of matrices.")] = None,
    grad_clip: Annotated[float | None, Opt(help="Clip the gradient norm to this (0: off).")] = None,
    log_every: Annotated[int | None, Opt(help="Steps between metrics.jsonl records.")] = None,
    eval_every: Annotated[int | None, Opt(help="Steps between validations (0: only at the end).")] = None,
    eval_batches: Annotated[int | None, Opt(help="Validation micro-batches per evaluation.")] = None,
    eval_wikitext: Annotated[str | None, Opt(help="Also log WikiText-2 validation perplexity (krony-pt protocol): "
                                                  "a folder laid out like ../shared/data, or 'hub'.")] = None,
    eval_wikitext_tokens: Annotated[int | None, Opt(help="Cap on the WikiText-2 tokens scored (quick checks; "
                                                         "default: the whole split).")] = None,
    save_every: Annotated[int | None, Opt(help="Steps between checkpoints.")] = None,
    keep_last: Annotated[int | None, Opt(help="Checkpoints to keep (plus the best on validation).")] = None,
    resume: Annotated[str | None, Opt(help="auto (latest checkpoint in --out, if any), never, a run folder "
                                           "(its latest checkpoint) or a checkpoint folder. A resume must keep "
                                           "the checkpoint's settings except length, logging, saving, "
                                           "hardware and batch split (docs/training.md).")] = None,
    seed: Annotated[int | None, Opt(help="Seed of the initial weights, the data order and dropout.")] = None,
    device: Annotated[str | None, Opt(help="auto, cpu, cuda, cuda:1, ...")] = None,
    precision: Annotated[str | None, Opt(help="auto (bf16 autocast on CUDA, fp32 on CPU), bf16, fp32.")] = None,
    compile: Annotated[bool | None, Opt("--compile/--no-compile", help="torch.compile the model.")] = None,
    compile_mode: Annotated[str | None, Opt(help="With --compile: default, reduce-overhead (replays CUDA graphs, "
                                                 "so the host launches nothing per kernel: the 81M model trained "
                                                 "1.29x dense this way on an H100, 0.77x under default; one "
                                                 "process, one micro-batch per step), max-autotune (also CUDA "
                                                 "graphs) or max-autotune-no-cudagraphs.")] = None,
    parallel: Annotated[str | None, Opt(help="Under torchrun: ddp (a full replica per rank) or fsdp (parameters, "
                                             "gradients and optimizer state sharded over the ranks; in bf16 it "
                                             "all-gathers bf16 weights).")] = None,
    dropout: Annotated[float | None, Opt(help="Override the model's dropout probabilities.")] = None,
    trainable: Annotated[str | None, Opt(help="What trains: all, mlp (the MLP matrices only) or compressed (the "
                                              "compressed layers only): fewer gradients, faster steps.")] = None,
    freeze_embeddings: Annotated[bool | None, Opt("--freeze-embeddings/--train-embeddings",
                                                  help="Freeze token and position embeddings.")] = None,
    freeze_scalars: Annotated[bool | None, Opt("--freeze-scalars/--train-scalars",
                                               help="Freeze the Kronecker scalars.")] = None,
    scalar_value: Annotated[float | None, Opt(help=(
        "With --freeze-scalars: set them to this value first, rescaling the A factors so that the model computes "
        "the same."))] = None,
    teacher: Annotated[str | None, Opt(help="Distil from this model (hub id or folder).")] = None,
    alpha: Annotated[float | None, Opt("--distill-alpha", help="Weight of the KL term (1 − it weights CE).")] = None,
    temperature: Annotated[float | None, Opt("--distill-temperature", help="Softmax temperature of the KL.")] = None,
    hidden_weight: Annotated[float | None, Opt("--distill-hidden-weight", help=(
        "Weight of the hidden-state MSE, block by block with no projection: above 0 the teacher needs the "
        "student's number of blocks and width (checked before the run starts)."))] = None,
    settings: Annotated[list[str] | None, Opt("--set", help="Any other setting as KEY=VALUE, e.g. "
                                                            "betas=0.9,0.95 (repeatable). Every value is "
                                                            "checked; a flag for the same key wins.")] = None,
    print_config: Annotated[bool, Opt("--print-config", help="Print the resolved recipe (YAML; JSON with "
                                                             "--json) and exit.")] = False,
    as_json: Annotated[bool, Opt("--json", help="Print the result as JSON.")] = False,
    progress: Annotated[bool, Opt("--progress/--no-progress", help="Show the progress bar.")] = True,
) -> None:
    """Train a model on a token folder: heal a compressed GPT-2, or train a small one from scratch.

    Settings come from the recipe (--config), then --set, then flags (each overrides the one before;
    relative input paths of a recipe may be relative to its folder). Rerunning the same command resumes
    from the latest checkpoint in --out (settings that define the run must match the checkpoint's; an --out
    holding other files needs --force). SIGTERM / Ctrl-C save a checkpoint and stop. Under
    `torchrun --nproc_per_node N -m kronypt train ...` the same command trains with DDP
    (or FSDP with --parallel fsdp). Exit code 0 when max_steps is reached; 2 after a bad input, or when the
    loss, the validation loss or the weights stop being finite (no checkpoint ever holds such a model);
    130 / 143 after Ctrl-C / SIGTERM
    (a checkpoint was saved: rerun to resume), except under torchrun, where workers exit 0 after a clean
    stop and `stopped_by` in --json tells. Without --out the run folder is runs/train.

    Example: kronypt train --init-from dense --model gpt2 --scheme 81M --data data/gutenberg --out runs/81M
    """
    flags = {name: value for name, value in locals().items() if name in field_locations() and value is not None}
    recipe = TrainConfig.from_yaml(config) if config is not None else TrainConfig()
    # --set first, so that each of its values is checked even where a flag then overrides it.
    resolved = recipe.with_overrides(_parse_settings(settings or [])).with_overrides(flags)
    if print_config:
        resolved.validate()
        if as_json:
            print_json(resolved.to_dict())
        else:
            typer.echo(resolved.to_yaml(), nl=False)
        return
    resolved.validate()  # a bad setting is the only line printed: before the note on the run folder
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 reports and writes the run folder
    if main_rank:
        if "out" not in flags and resolved.out == TrainConfig().out:  # neither a flag nor the recipe chose it
            sys.stderr.write(f"kronypt: no --out given: the run folder is {resolved.out}\n")
        check_out_path(Path(resolved.out).expanduser())
        check_writable(Path(resolved.out).expanduser().resolve(), f"--out {resolved.out}")
    from kronypt.train import train as run_training

    result = run_training(resolved, progress=progress and not as_json)
    if main_rank:
        _report(result, as_json)
    # Saved and resumable, but not finished: say so to schedulers and `&&` chains. Not under torchrun,
    # which reads any non-zero worker exit as a failure (and then kills or restarts the other workers).
    if result.stopped_by and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        raise SystemExit(STOP_EXIT_CODES.get(result.stopped_by, 1))


STOP_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal number, as a shell reports them


def _report(result: TrainResult, as_json: bool) -> None:
    if as_json:
        print_json(result.to_json())
        return
    summary = (f"step {result.step:,} ({result.tokens:,} tokens), loss {_fmt(result.loss)}, "
               f"val_loss {_fmt(result.val_loss)}, best val_loss {_fmt(result.best_val_loss)}")
    console.print(summary, highlight=False)
    if result.best_checkpoint:
        console.print(f"best checkpoint: {result.best_checkpoint}/model", highlight=False)


def _parse_settings(items: list[str]) -> dict[str, str]:
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise KronyptError(f"cannot read --set {item!r}: expected KEY=VALUE, e.g. betas=0.9,0.95")
        parsed[key.strip()] = value.strip()
    return parsed


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
