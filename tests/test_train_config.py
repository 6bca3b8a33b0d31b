"""Recipes (YAML + overrides), batch geometry, LR schedules and AdamW parameter groups."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_train_support import tiny_gpt2
from transformers import GPT2LMHeadModel

from kronypt.errors import KronyptError
from kronypt.models import CompressionConfig, compress_
from kronypt.train import TrainConfig
from kronypt.train.config import OptimArgs
from kronypt.train.optim import build_optimizer, build_scheduler, lr_multiplier, param_groups
from kronypt.train.setup import accumulation_steps

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_yaml_sections_coercion_and_flag_overrides(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("init_from: dense\nmodel: gpt2\nscheme: 81M\ndata: d\n"
                      "train: {micro_batch_size: 32, tokens_per_step: 131072}\n"
                      "optim: {lr: 6e-5, betas: [0.9, 0.95]}\n")
    config = TrainConfig.from_yaml(recipe)
    assert config.optim.lr == 6e-5 and isinstance(config.optim.lr, float)  # '6e-5' is a string to YAML 1.1
    assert config.optim.betas == (0.9, 0.95) and config.train.tokens_per_step == 131072
    overridden = config.with_overrides({"lr": "1e-4", "max_steps": 7, "betas": "0.8,0.9", "compile": "true"})
    assert (overridden.optim.lr, overridden.train.max_steps, overridden.optim.betas) == (1e-4, 7, (0.8, 0.9))
    assert overridden.train.compile is True and config.optim.lr == 6e-5  # the original is untouched
    assert TrainConfig.from_dict(overridden.to_dict()) == overridden


@pytest.mark.parametrize(("text", "message"), [
    ("optim: {lr: 1, warmup: 3}\n", "unknown key.*warmup.*valid: lr"),
    ("learning_rate: 1\n", "unknown setting 'learning_rate'"),
    ("train: {max_steps: many}\n", "bad value 'many' for max_steps"),
    ("optim: {betas: [0.9]}\n", "bad value .* for betas"),
    ("train: {max_steps: '1.5'}\n", "bad value '1.5' for max_steps: expected an integer"),
    ("- a list\n", "must be a mapping"),
])
def test_bad_recipes_are_refused_with_the_valid_options(tmp_path: Path, text: str, message: str) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    with pytest.raises(KronyptError, match=message):
        TrainConfig.from_yaml(recipe)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"init_from": "hub"}, "unknown init_from 'hub'; choose one of dense, kronypt, model, scratch"),
    ({"schedule": "linear"}, "choose one of constant, cosine, wsd"),
    ({"init_from": "dense", "scheme": None}, "exactly one of --scheme"),
    ({"init_from": "scratch", "scheme": None}, "needs --model-config"),
    ({"init_from": "kronypt", "scheme": None, "scalars": True}, "--scalars only applies to --init-from dense"),
    ({"init_from": "kronypt", "scheme": None, "factors": 3, "init": "random"},
     "--factors / --init only apply to --init-from dense"),
    ({"data": None}, "no data folder"),
    ({"scalar_value": 4.0}, "only applies with freeze_scalars"),
    ({"lr": -1}, "lr must be > 0, got -1"),
    ({"eps": 0}, "eps must be > 0"),
    ({"betas": "1.5,0.9"}, r"betas must be each in \[0, 1\)"),
    ({"weight_decay": -1}, "weight_decay must be >= 0"),
    ({"warmup_steps": -3}, "warmup_steps must be >= 0"),
    ({"decay_fraction": 2}, r"decay_fraction must be in \[0, 1\]"),
    ({"eval_every": -5}, "eval_every must be >= 0"),
    ({"grad_clip": -1}, "grad_clip must be >= 0"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"hidden_weight": -0.5, "teacher": "gpt2"}, r"hidden_weight \(--distill-hidden-weight\) must be >= 0, got -0.5"),
    ({"alpha": 1.5, "teacher": "gpt2"}, r"alpha \(--distill-alpha\) must be in \[0, 1\], got 1.5"),
    ({"temperature": 0.0, "teacher": "gpt2"}, r"temperature \(--distill-temperature\) must be > 0, got 0.0"),
    ({"alpha": 0.9, "temperature": 4.0}, "--distill-alpha / --distill-temperature only apply with a teacher"),
    ({"schedule": "constant", "min_lr": 1e-5}, "min_lr .* only applies to the cosine and wsd schedules"),
    ({"freeze_scalars": True, "scalar_value": 0.0}, "scalar_value must be finite and non-zero"),
])
def test_validation_names_the_fix(overrides: dict, message: str) -> None:
    config = TrainConfig().with_overrides({"model": "gpt2", "scheme": "81M", "data": "d", **overrides})
    with pytest.raises(KronyptError, match=message):
        config.validate()


@pytest.mark.parametrize("recipe", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_load_and_validate(recipe: Path) -> None:
    config = TrainConfig.from_yaml(recipe)
    config.validate()
    accumulation_steps(config.train.tokens_per_step, config.train.micro_batch_size, config.train.seq_len, 1)


def test_paper_recipe_batch_geometry() -> None:
    config = TrainConfig.from_yaml(CONFIGS / "gpt2-81M.yaml")
    args = config.train
    assert (args.micro_batch_size, args.seq_len, config.optim.lr, config.optim.schedule) == (32, 1024, 6e-5, "constant")
    assert accumulation_steps(args.tokens_per_step, 32, 1024, 1) == 4
    assert accumulation_steps(args.tokens_per_step, 32, 1024, 4) == 1
    with pytest.raises(KronyptError, match="not a multiple.*use e.g. tokens_per_step"):
        accumulation_steps(args.tokens_per_step, 32, 1024, 3)
    # 8 ranks: the recipe's 131,072 tokens are half of one micro-batch each; halving it keeps the recipe.
    with pytest.raises(KronyptError, match="use e.g. micro_batch_size 16 \\(same tokens per step\\)"):
        accumulation_steps(args.tokens_per_step, 32, 1024, 8)
    assert accumulation_steps(args.tokens_per_step, 16, 1024, 8) == 1
    assert accumulation_steps(None, 8, 128, 2) == 1
    with pytest.raises(KronyptError, match="tokens_per_step must be at least 1, got 0"):
        accumulation_steps(0, 4, 64, 1)  # not "use micro_batch_size 4": that is the size already given


def _reference_lr(schedule: str, step: int, max_steps: int = 100, warmup: int = 10, floor: float = 0.1,
                  decay_fraction: float = 0.2) -> float:
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return floor + (1 - floor) * (1 + math.cos(math.pi * (step - warmup) / (max_steps - warmup))) / 2
    start = max_steps - decay_fraction * max_steps
    return 1.0 if step < start else 1.0 - (1 - floor) * (step - start + 1) / (decay_fraction * max_steps)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "wsd"])
def test_schedules_match_their_formulas(schedule: str) -> None:
    args = OptimArgs(lr=1.0, min_lr=0.1, schedule=schedule, warmup_steps=10, decay_fraction=0.2)
    multiplier = lr_multiplier(args, 100)
    for step in range(100):
        assert multiplier(step) == pytest.approx(_reference_lr(schedule, step)), step
    # cosine reaches min_lr one past the last step (PyTorch's and transformers' convention), wsd at the last step
    last = {"constant": 1.0, "cosine": 0.1 + 0.9 * (1 + math.cos(math.pi * 89 / 90)) / 2, "wsd": 0.1}
    assert multiplier(99) == pytest.approx(last[schedule])


def test_wsd_without_a_decay_fraction_does_not_decay() -> None:
    multiplier = lr_multiplier(OptimArgs(lr=1.0, min_lr=0.0, schedule="wsd", warmup_steps=2, decay_fraction=0), 10)
    assert [multiplier(step) for step in range(10)] == [0.5] + [1.0] * 9


def test_scheduler_state_resumes_the_same_lrs() -> None:
    args = OptimArgs(lr=0.5, schedule="cosine", warmup_steps=3)
    param = torch.nn.Parameter(torch.zeros(2))
    first = torch.optim.AdamW([param], lr=args.lr)
    scheduler = build_scheduler(first, args, 20)
    for _ in range(7):
        first.step()
        scheduler.step()
    second = torch.optim.AdamW([param], lr=args.lr)
    resumed = build_scheduler(second, args, 20)
    resumed.load_state_dict(scheduler.state_dict())
    assert resumed.get_last_lr() == scheduler.get_last_lr() == [0.5 * lr_multiplier(args, 20)(7)]


def test_param_groups_exempt_biases_norms_embeddings_and_scalars() -> None:
    model = GPT2LMHeadModel(tiny_gpt2())
    compress_(model, CompressionConfig(a_shape=(16, 8), scalars=True), progress=False)
    decay, no_decay = param_groups(model, OptimArgs(weight_decay=0.1))
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = sorted(names[id(p)] for p in decay["params"])
    assert all(n.endswith((".A", ".B", "attn.c_attn.weight", "attn.c_proj.weight")) for n in decayed)
    assert len(decayed) == 2 * 6  # per block: attn.c_attn, attn.c_proj, and A, B of c_fc and mlp.c_proj
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.mlp.c_fc.scalars",
            "transformer.h.0.ln_1.weight", "transformer.h.0.mlp.c_fc.bias"} <= exempt
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))  # tied head once
    everything = param_groups(model, OptimArgs(no_decay=("bias",)))[0]["params"]
    assert id(model.transformer.wte.weight) in {id(p) for p in everything}
    optimizer = build_optimizer(model, OptimArgs(weight_decay=0.1))
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]


def test_shipped_recipes_find_their_files_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = TrainConfig.from_yaml(CONFIGS / "offline-teacher.yaml")
    assert config.model_config == str(CONFIGS / "offline-teacher-gpt2.json")
    assert config.out == "runs/offline-teacher"  # outputs stay relative to the current folder
    assert TrainConfig.from_yaml(CONFIGS / "gpt2-81M.yaml").model == "gpt2"  # a hub id stays one
