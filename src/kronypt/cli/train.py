"""`kronypt train`: heal a compressed model (or train a small model from scratch) from a recipe and flags.

The command has a flag per `TrainConfig` setting, made from the setting's declaration (`setting_options`):
its name, type, default and help text. A flag defaults to None, so that only the flags given override the
recipe; `--help` shows the value a run gets without it.
"""

from __future__ import annotations

import inspect
import os
import sys
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kronypt.cli.app import app, console, print_json
from kronypt.cli.options import check_out_path, check_writable
from kronypt.errors import KronyptError
from kronypt.train.config import TrainConfig, declared_settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from kronypt.train import TrainResult

Opt = typer.Option
# The --help panel of each argument group's flags (None: the top-level settings).
PANELS = {None: "Model, data and run folder", "train": "Training", "optim": "Optimizer", "eval": "Validation",
          "checkpoint": "Checkpoints", "distill": "Distillation"}


def setting_options() -> list[inspect.Parameter]:
    """A keyword-only parameter per `TrainConfig` setting, annotated with its typer option."""
    options = []
    for group, setting, hint in declared_settings():
        value_type = _flag_type(hint)
        option = Opt(*setting.metadata["flags"], help=setting.metadata["help"], rich_help_panel=PANELS[group],
                     show_default=_shown(setting.default))
        options.append(inspect.Parameter(setting.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                         annotation=Annotated[value_type | None, option]))
    return options


def _flag_type(hint: Any) -> type:
    """What a flag of this setting type parses: a tuple is given comma-separated (e.g. 0.9,0.95) and read as
    the recipe reads it."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return str if typing.get_origin(hint) is tuple else hint


def _shown(default: Any) -> str | bool:
    """A default as `--help` shows it; False: none (the setting is unset unless given)."""
    if default is None:
        return False
    if isinstance(default, tuple):
        return ",".join(map(str, default))
    return str(default).lower() if isinstance(default, bool) else str(default)


def _with_setting_options(command: Callable[..., None]) -> Callable[..., None]:
    """`command`, whose `**flags` are the options of `setting_options` (typer reads `__signature__`)."""
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.kind is not p.VAR_KEYWORD]
    command.__signature__ = inspect.Signature([*own, *setting_options()])
    return command


@app.command()
@_with_setting_options
def train(
    config: Annotated[Path | None, Opt("--config", "-c", help="YAML recipe (see configs/); flags override it.")] = None,
    settings: Annotated[list[str] | None, Opt("--set", help="A setting as KEY=VALUE, as a recipe names it, e.g. "
                                                            "betas=0.9,0.95 (repeatable). Every value is checked; "
                                                            "a flag for the same key wins.")] = None,
    print_config: Annotated[bool, Opt("--print-config", help="Print the resolved recipe (YAML; JSON with "
                                                             "--json) and exit.")] = False,
    as_json: Annotated[bool, Opt("--json", help="Print the result as JSON.")] = False,
    progress: Annotated[bool, Opt("--progress/--no-progress", help="Show the progress bar.")] = True,
    **flags: Any,
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
    flags = {name: value for name, value in flags.items() if value is not None}
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
