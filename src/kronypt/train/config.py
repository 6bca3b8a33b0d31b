"""Training configuration: dataclass argument groups that load from YAML recipes and take CLI overrides.

A recipe is a YAML file whose top-level keys are the `TrainConfig` fields (model source, data, output,
seed) plus one section per argument group (`train`, `optim`, `eval`, `checkpoint`, `distill`). Every
field name is unique across groups, so a flat override such as `{"lr": 1e-4}` (one per CLI flag) finds
its group without ambiguity. Each field is declared once, with `setting` (`kronypt.train.args`): its
name, type, default and help text, from which `kronypt train` makes its flag. Values are coerced to the
field's type, so YAML's `6e-5` (a string in YAML 1.1) is read as a float. Relative input paths in a
recipe (`model_config`, `data`, `model`, `teacher`, `eval_wikitext`) that do not exist from the current
folder are looked up next to the recipe and in its parent folder (recipes in configs/ name files from the
repository root); `out` always stays relative to the current folder.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kronypt.errors import KronyptError
from kronypt.train.args import (
    COMPILE_MODES,
    INIT_FROM,
    NO_DECAY_KINDS,
    PARALLEL,
    PRECISIONS,
    SCHEDULES,
    TRAINABLE,
    CheckpointArgs,
    DistillArgs,
    EvalArgs,
    OptimArgs,
    TrainArgs,
    flag_name,
    setting,
)

# How a dense model is compressed: settings of --init-from dense runs only (in the order errors name them).
COMPRESSION_SETTINGS = ("scheme", "a_shape", "ratio", "target_params", "factors", "init", "scalars",
                        "allocate_params")
# Settings that name input files or folders, and what a recipe-relative candidate must be.
INPUT_PATHS = {"model_config": "file", "data": "folder", "model": "model", "teacher": "model",
               "eval_wikitext": "folder"}

GROUPS = {"train": TrainArgs, "optim": OptimArgs, "eval": EvalArgs, "checkpoint": CheckpointArgs,
          "distill": DistillArgs}


@dataclass
class TrainConfig:
    """Everything one training run needs. See `configs/*.yaml` for recipes."""

    init_from: str = setting("dense", "Model source: dense (compress on the fly), kronypt (a compressed folder), "
                                      "model (any model as it is), scratch.")
    model: str | None = setting(None, "Hub id, folder, .gguf file or packaged model (smollm2-135m).")
    model_config: str | None = setting(None, "GPT2Config JSON file for --init-from scratch.")
    scheme: str | None = setting(None, "Named scheme for --init-from dense, e.g. 81M, 96M-prune.")
    a_shape: str | None = setting(None, "Or an A-factor shape MxN of the widening MLP matrices (c_fc; "
                                        "gate_proj/up_proj), out x in.")
    ratio: float | None = setting(None, "Or keep this fraction of the MLP parameters (the nearest scheme).")
    target_params: int | None = setting(None, "Or the largest scheme with at most this many model parameters.")
    factors: int | None = setting(None, "Kronecker terms per matrix (default: the scheme's); with "
                                        "--allocate-params, the most any matrix gets.")
    allocate_params: int | None = setting(None, "--init-from dense: keep the scheme's A shape but give each matrix "
                                                "its own k within this many model parameters (as `compress "
                                                "--allocate`).")
    init: str | None = setting(None, "Factor init: van-loan, prune or random (default: the scheme's).")
    scalars: bool = setting(False, "Learnable scalar per factor.")
    data: str | None = setting(None, "Token folder from `kronypt data prepare`.")
    out: str = setting("runs/train", "Run folder: metrics.jsonl, config.yaml, checkpoints/, best, latest.",
                       "--out", "-o")
    force: bool = setting(False, "Train in an --out folder that also holds other files (they are kept, never "
                                 "deleted).")
    seed: int = setting(1337, "Seed of the initial weights, the data order and dropout.")
    device: str = setting("auto", "auto, cpu, cuda, cuda:1, ...")
    train: TrainArgs = field(default_factory=TrainArgs)
    optim: OptimArgs = field(default_factory=OptimArgs)
    eval: EvalArgs = field(default_factory=EvalArgs)
    checkpoint: CheckpointArgs = field(default_factory=CheckpointArgs)
    distill: DistillArgs = field(default_factory=DistillArgs)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """Read a recipe; unknown keys are an error that lists the valid ones."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"recipe {path} does not exist")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise KronyptError(f"cannot parse recipe {path}: {str(exc).splitlines()[0]}") from None
        if not isinstance(values, dict):
            raise KronyptError(f"recipe {path} must be a mapping of keys to values")
        return cls.from_dict(values).with_recipe_paths(path)

    def with_recipe_paths(self, recipe: str | Path) -> TrainConfig:
        """A copy whose relative input paths that do not exist from the current folder point next to the
        recipe, or in its parent folder, where they exist there (as an absolute path); others are kept."""
        found = {}
        for name, kind, value in self._input_paths():
            if os.path.isabs(value) or os.path.exists(value):
                continue
            folder = Path(os.path.abspath(recipe)).parent
            for base in (folder, folder.parent):
                candidate = Path(os.path.normpath(base / value))
                if _is_input(candidate, kind):
                    found[name] = str(candidate)
                    break
        return self.with_overrides(found) if found else self

    def with_absolute_inputs(self) -> TrainConfig:
        """A copy whose input paths that exist from the current folder are absolute (symlinks kept), as the
        run folder's config.yaml records them: that file is then a recipe that works from any folder."""
        found = {name: os.path.abspath(os.path.expanduser(value)) for name, _, value in self._input_paths()
                 if os.path.exists(os.path.expanduser(value))}
        return self.with_overrides(found) if found else self

    def _input_paths(self) -> Iterator[tuple[str, str, str]]:
        """(setting, kind, value) of every input path that is set (the `hub` of eval_wikitext is no path)."""
        for name, kind in INPUT_PATHS.items():
            group = field_locations()[name]
            value = getattr(self if group is None else getattr(self, group), name)
            if value and value != "hub":
                yield name, kind, value

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a nested dict (the YAML layout); group sections may also be given flat."""
        flat: dict[str, Any] = {}
        for key, value in values.items():
            if key in GROUPS:
                if not isinstance(value, dict):
                    raise KronyptError(f"recipe section {key!r} must be a mapping")
                _check_keys(value, GROUPS[key], key)
                flat.update(value)
            else:
                flat[key] = value
        return cls().with_overrides(flat)

    def with_overrides(self, overrides: dict[str, Any]) -> TrainConfig:
        """A copy with flat `name: value` overrides applied (CLI flags), each coerced to its field's type."""
        config = dataclasses.replace(self, **{g: dataclasses.replace(getattr(self, g)) for g in GROUPS})
        where = field_locations()
        for name, value in overrides.items():
            if name not in where:
                raise KronyptError(f"unknown setting {name!r}; valid settings: {', '.join(sorted(where))}")
            target = config if where[name] is None else getattr(config, where[name])
            setattr(target, name, _coerce(value, _hints(type(target))[name], name))
        return config

    def to_dict(self) -> dict[str, Any]:
        """The nested layout of a recipe (tuples as lists), e.g. to save next to the run."""
        def plain(value: Any) -> Any:
            return list(value) if isinstance(value, tuple) else value
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = ({k: plain(v) for k, v in dataclasses.asdict(value).items()}
                           if f.name in GROUPS else plain(value))
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def validate(self) -> None:
        """Check choices and required fields; raise KronyptError naming the fix."""
        _choice("init_from", self.init_from, INIT_FROM)
        _choice("schedule", self.optim.schedule, SCHEDULES)
        _choice("precision", self.train.precision, PRECISIONS)
        _choice("parallel", self.train.parallel, PARALLEL)
        _choice("compile_mode", self.train.compile_mode, COMPILE_MODES)  # used only with compile: true
        for kind in self.optim.no_decay:
            _choice("no_decay entry", kind, NO_DECAY_KINDS)
        _choice("trainable", self.train.trainable, TRAINABLE)
        if self.init_from in ("dense", "kronypt", "model") and not self.model:
            raise KronyptError(f"--init-from {self.init_from} needs --model (hub id or folder)")
        if self.init_from == "scratch" and not self.model_config:
            raise KronyptError("--init-from scratch needs --model-config (a GPT2Config JSON file)")
        sizes = [name for name in ("scheme", "a_shape", "ratio", "target_params") if getattr(self, name) is not None]
        if self.init_from == "dense" and len(sizes) != 1:
            raise KronyptError("--init-from dense needs exactly one of --scheme (e.g. 81M), --a-shape MxN, --ratio R "
                               "or --target-params N")
        given = [_flag(name) for name in COMPRESSION_SETTINGS
                 if getattr(self, name) is not None and getattr(self, name) is not False]  # --no-scalars is unset
        if self.init_from != "dense" and given:
            raise KronyptError(f"{' / '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} to --init-from "
                               f"dense (how to compress), not {self.init_from}")
        if not self.data:
            raise KronyptError("no data folder: pass --data DIR (made by `kronypt data prepare`)")
        for name, value in (("max_steps", self.train.max_steps), ("micro_batch_size", self.train.micro_batch_size),
                            ("seq_len", self.train.seq_len), ("log_every", self.train.log_every),
                            ("save_every", self.checkpoint.save_every), ("keep_last", self.checkpoint.keep_last),
                            ("eval_batches", self.eval.eval_batches)):
            if value < 1:
                raise KronyptError(f"{name} must be at least 1, got {value}")
        optim = self.optim
        for name, value, ok, rule in (
                ("lr", optim.lr, optim.lr > 0, "> 0"), ("min_lr", optim.min_lr, optim.min_lr >= 0, ">= 0"),
                ("eps", optim.eps, optim.eps > 0, "> 0"),
                ("betas", optim.betas, all(0 <= b < 1 for b in optim.betas), "each in [0, 1)"),
                ("weight_decay", optim.weight_decay, optim.weight_decay >= 0, ">= 0"),
                ("grad_clip", optim.grad_clip, optim.grad_clip >= 0, ">= 0 (0: off)"),
                ("warmup_steps", optim.warmup_steps, optim.warmup_steps >= 0, ">= 0"),
                ("decay_fraction", optim.decay_fraction, 0 <= optim.decay_fraction <= 1, "in [0, 1]"),
                ("eval_every", self.eval.eval_every, self.eval.eval_every >= 0, ">= 0 (0: only at the end)"),
                ("dropout", self.train.dropout, self.train.dropout is None or 0 <= self.train.dropout < 1,
                 "in [0, 1)")):
            if not ok:
                raise KronyptError(f"{name} must be {rule}, got {value}")
        value = self.train.scalar_value
        if value is not None and not self.train.freeze_scalars:
            raise KronyptError("scalar_value only applies with freeze_scalars")
        if value is not None and (not math.isfinite(value) or value == 0):
            raise KronyptError(f"scalar_value must be finite and non-zero, got {value}")
        idle = idle_settings({"schedule": optim.schedule, "teacher": self.distill.teacher})
        if "min_lr" in idle and optim.min_lr != OptimArgs.min_lr:
            raise KronyptError(f"min_lr ({optim.min_lr}) only applies to the cosine and wsd schedules, not constant")
        distill = self.distill
        for name, ok, rule in (("alpha", 0.0 <= distill.alpha <= 1.0, "in [0, 1]"),
                               ("temperature", distill.temperature > 0, "> 0"),
                               ("hidden_weight", distill.hidden_weight >= 0, ">= 0")):
            if not ok:
                raise KronyptError(f"{name} ({_flag(name)}) must be {rule}, got {getattr(distill, name)}")
        changed = [_flag(name) for name in ("alpha", "temperature", "hidden_weight")
                   if name in idle and getattr(distill, name) != getattr(DistillArgs, name)]
        if changed:
            raise KronyptError(f"{' / '.join(changed)} only appl{'ies' if len(changed) == 1 else 'y'} with a "
                               "teacher (--teacher ID_OR_DIR)")


def idle_settings(settings: dict[str, Any]) -> set[str]:
    """Settings that do nothing in a run of these (flat) settings: min_lr under the constant schedule, the
    distillation knobs without a teacher: refused when given (`validate`)."""
    idle = set()
    if settings.get("schedule") == "constant":
        idle.add("min_lr")
    if settings.get("teacher") is None:
        idle.update(("alpha", "temperature", "hidden_weight"))
    return idle


def _is_input(path: Path, kind: str) -> bool:
    """Whether `path` is what a setting of this kind names: a file, a folder, or a model folder (a
    config.json inside: a bare name such as `gpt2` stays a hub id unless such a folder exists)."""
    if kind == "file":
        return path.is_file()
    if kind == "model":
        return (path / "config.json").is_file()
    return path.is_dir()


def flatten(values: dict[str, Any]) -> dict[str, Any]:
    """The nested layout of `TrainConfig.to_dict` (or a recipe) as flat `name: value` settings."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if key in GROUPS and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def coerce_setting(name: str, value: Any) -> Any:
    """`value` as the type of setting `name` in `to_dict`'s plain form (tuples as lists)."""
    where = field_locations()[name]
    cls = TrainConfig if where is None else GROUPS[where]
    value = _coerce(value, _hints(cls)[name], name)
    return list(value) if isinstance(value, tuple) else value


def field_locations() -> dict[str, str | None]:
    """Flat setting name -> its group (None for top-level fields)."""
    where: dict[str, str | None] = {}
    for group, f, _ in declared_settings():
        assert f.name not in where, f"setting {f.name} is defined twice"
        where[f.name] = group
    return where


def declared_settings() -> Iterator[tuple[str | None, dataclasses.Field, Any]]:
    """(group or None for a top-level one, field, type) of every setting, in the order they are declared."""
    for group, cls in ((None, TrainConfig), *GROUPS.items()):
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in GROUPS:
                yield group, f, hints[f.name]


def _flag(name: str) -> str:
    """The `kronypt train` flag of setting `name`, as messages name it."""
    return next(flag_name(f) for _, f, _ in declared_settings() if f.name == name)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_keys(values: dict[str, Any], cls: type, section: str) -> None:
    valid = [f.name for f in dataclasses.fields(cls)]
    bad = [k for k in values if k not in valid]
    if bad:
        raise KronyptError(f"unknown key(s) {', '.join(bad)} in section {section!r}; valid: {', '.join(valid)}")


def _choice(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise KronyptError(f"unknown {name} {value!r}; choose one of {', '.join(options)}")


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Convert a YAML / CLI value to the annotated type (int, float, bool, str, tuples, optionals)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None  # so `--set scheme=null` can clear a recipe's value
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    try:
        if typing.get_origin(hint) is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            inner = args[0]
            if len(args) != 2 or args[1] is not Ellipsis:
                if len(items) != len(args):
                    raise ValueError(f"expected {len(args)} values")
            return tuple(_coerce(v.strip() if isinstance(v, str) else v, inner, name) for v in items)
        if hint is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError("expected true or false")
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if hint is int:
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, float) and not number.is_integer():
                raise ValueError("expected an integer")
            return int(number)
        if hint is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise KronyptError(f"bad value {value!r} for {name}: {exc}") from None
