"""`kronypt train` through the CLI: a short run, flag-over-recipe precedence, and one-line errors (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from file_snapshot import snapshot
from test_train_support import cli_args, make_token_folder, run_train_cli, scratch_settings, write_model_config

from kronypt.train import TrainConfig
from kronypt.train.metrics import read_metrics


def test_cli_trains_and_flags_override_the_recipe(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    settings = scratch_settings(tmp_path, max_steps=3)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"init_from: scratch\nmodel_config: {settings['model_config']}\ndata: {settings['data']}\n"
                      "train: {max_steps: 50, seq_len: 32, micro_batch_size: 2}\noptim: {lr: 3e-3}\n")
    code, out, _ = run_train_cli(["--config", str(recipe), "--max-steps", "3", "--out", str(tmp_path / "run"),
                                  "--log-every", "1", "--json"], capsys)
    assert code == 0
    result = json.loads(out)
    assert result["step"] == 3 and result["tokens"] == 3 * 2 * 32
    assert result["best_model"] == result["best_checkpoint"] + "/model" and Path(result["best_model"]).is_dir()
    assert [r.get("lr") for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [None] + [3e-3] * 3
    code, out, _ = run_train_cli(["--config", str(recipe), "--lr", "1e-4", "--print-config"], capsys)
    assert code == 0 and "lr: 0.0001" in out and "max_steps: 50" in out
    code, out, _ = run_train_cli(["--config", str(recipe), "--lr", "1e-4", "--print-config", "--json"], capsys)
    assert code == 0 and json.loads(out) == yaml.safe_load(run_train_cli(
        ["--config", str(recipe), "--lr", "1e-4", "--print-config"], capsys)[1])


def _corrupt_latest(run: Path, how: str) -> None:
    state = run / "latest" / "trainer_state.pt"
    if how == "truncated":
        state.write_bytes(state.read_bytes()[:100])
    else:  # same size, garbage bytes: only unpickling notices
        state.write_bytes(b"\0" * state.stat().st_size)


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_corrupt_checkpoint_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture, how: str) -> None:
    settings = scratch_settings(tmp_path, max_steps=2, save_every=2)
    assert run_train_cli(cli_args(settings), capsys)[0] == 0
    _corrupt_latest(tmp_path / "run", how)
    code, _, err = run_train_cli(cli_args({**settings, "max_steps": 4}), capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("kronypt: error: corrupt checkpoint") and "step-00000002" in err


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[dict, str]]:
    big_vocab = make_token_folder(tmp_path / "big-vocab", vocab_size=70_000)
    return {
        "missing data": ({"data": str(tmp_path / "nowhere")}, "does not exist"),
        "unknown scheme": ({"init_from": "dense", "model": str(tmp_path), "model_config": None, "scheme": "999M"},
                           "unknown scheme '999M'; choose one of 67M"),
        "vocab beyond the model's": ({"data": str(big_vocab)}, "the model's vocab (256) is smaller than the "
                                                                "data's (70,000)"),
        "batch geometry": ({"tokens_per_step": 100}, "not a multiple of micro_batch_size"),
        "unknown schedule": ({"schedule": "linear"}, "choose one of constant, cosine, wsd"),
        "missing model config": ({"model_config": str(tmp_path / "no.json")}, "does not exist"),
    }


@pytest.mark.parametrize("case", ["missing data", "unknown scheme", "vocab beyond the model's", "batch geometry",
                                  "unknown schedule", "missing model config"])
def test_bad_input_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture, case: str) -> None:
    overrides, message = _bad_inputs(tmp_path)[case]
    settings = {k: v for k, v in scratch_settings(tmp_path, **overrides).items() if v is not None}
    code, _, err = run_train_cli(cli_args(settings), capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("kronypt: error: ") and message in err, err


def _damaged_copy(tmp_path: Path, name: str, edit) -> Path:
    """A token folder like the tiny one, changed by `edit(folder)`: the bytes of a split or its meta.json."""
    folder = make_token_folder(tmp_path / name)
    edit(folder)
    return folder


def _poke(path: Path, position: int, value: int) -> None:
    tokens = np.fromfile(path, dtype=np.uint16)
    tokens[position] = value
    tokens.tofile(path)


def _edit_meta(folder: Path, change) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    change(meta)
    (folder / "meta.json").write_text(json.dumps(meta))


MALFORMED = {  # (how to make the bad input under tmp_path: settings overrides, what the one line says)
    "token id in train.bin": (lambda tmp: {"data": str(_damaged_copy(
        tmp, "ids", lambda f: (f / "train.bin").write_bytes(np.full(12_800, 300, np.uint16).tobytes())))},
        "ids/train.bin holds token id 300, but the model's vocabulary has 256 tokens (ids 0..255)"),
    "token id in val.bin": (lambda tmp: {"data": str(_damaged_copy(tmp, "ids", lambda f: _poke(f / "val.bin", 5,
                                                                                                256)))},
                            "ids/val.bin holds token id 256"),
    "vocab_size not a number": (lambda tmp: {"data": str(_damaged_copy(
        tmp, "meta", lambda f: _edit_meta(f, lambda m: m.update(vocab_size="lots"))))},
        "meta.json: vocab_size must be a positive whole number, got 'lots'"),
    "file outside the folder": (lambda tmp: {"data": str(_damaged_copy(
        tmp, "meta", lambda f: _edit_meta(f, lambda m: m["splits"]["train"].update(file="../tokens/train.bin"))))},
        "the train split's file '../tokens/train.bin' is not a file name inside"),
    "file by absolute path": (lambda tmp: {"data": str(_damaged_copy(
        tmp, "meta", lambda f: _edit_meta(f, lambda m: m["splits"]["val"].update(file=str(tmp / "tokens/val.bin")))))},
        "the val split's file '/"),
    "model config a list": (lambda tmp: {"model_config": _write(tmp / "list.json", "[1, 2]")},
                            "list.json must hold a JSON object of GPT2Config keys"),
    "n_layer a word": (lambda tmp: {"model_config": _write(tmp / "two.json", json.dumps(
        {**json.loads((tmp / "gpt2.json").read_text()), "n_layer": "two"}))},
                       "two.json: n_layer must be a positive whole number, got 'two'"),
    "n_embd not a multiple of n_head": (lambda tmp: {"model_config": str(write_model_config(tmp / "odd.json",
                                                                                           n_embd=30))},
                                        "odd.json: n_embd (30) must be a multiple of n_head (4)"),
    "out of memory": (lambda tmp: {"tokens_per_step": None, "micro_batch_size": 10**12},
                      "out of memory with micro_batch_size 1,000,000,000,000 × seq_len 32"),
}


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_inputs_are_one_line_and_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                         case: str) -> None:
    """Each one used to fail with a traceback (the token ids after the run folder was made, the out of
    memory leaving it half made), or (a file outside the data folder) was read."""
    make, message = MALFORMED[case]
    scratch_settings(tmp_path)  # the tiny token folder and model config, then the bad input
    settings = scratch_settings(tmp_path, out=str(tmp_path / "new-run"), **make(tmp_path))
    before = snapshot(tmp_path)
    code, _, err = run_train_cli([*cli_args(settings), "--no-progress"], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("kronypt: error: "), err
    assert message in err, err
    assert snapshot(tmp_path) == before  # no run folder, the inputs untouched


def test_token_ids_beyond_the_vocabulary_leave_a_run_folder_as_it_was(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    settings = scratch_settings(tmp_path, max_steps=2, save_every=2)
    assert run_train_cli(cli_args(settings), capsys)[0] == 0
    run = tmp_path / "run"
    _poke(tmp_path / "tokens" / "train.bin", 1000, 4000)  # the data changed on disk, its meta.json did not
    before = snapshot(run)
    code, _, err = run_train_cli([*cli_args({**settings, "max_steps": 4}), "--no-progress"], capsys)
    assert code == 2 and err.count("\n") == 1 and "train.bin holds token id 4,000" in err, err
    assert snapshot(run) == before


@pytest.mark.parametrize(("signal_name", "code"), [("SIGINT", 130), ("SIGTERM", 143), (None, 0)])
def test_a_run_stopped_by_a_signal_exits_non_zero(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch, signal_name, code) -> None:
    # The loop saved and returned (tested in test_train_loop); a scheduler or `&& kronypt eval` must still
    # see that the run did not finish.
    import kronypt.train
    from kronypt.train import TrainResult

    result = TrainResult(str(tmp_path), 3, 384, 5.0, None, None, None, signal_name)
    monkeypatch.setattr(kronypt.train, "train", lambda config, progress: result)
    got, out, _ = run_train_cli([*cli_args(scratch_settings(tmp_path)), "--json"], capsys)
    assert got == code and json.loads(out)["stopped_by"] == signal_name


def test_allocate_params_compresses_on_the_fly_with_a_k_per_matrix(tmp_path: Path, capsys) -> None:
    import torch
    from test_train_support import tiny_gpt2
    from transformers import GPT2LMHeadModel

    from kronypt.models import CompressionConfig, allocate_factors, count_params, load_model

    torch.manual_seed(0)
    dense = GPT2LMHeadModel(tiny_gpt2())
    dense.save_pretrained(tmp_path / "dense")
    budget = count_params(dense) - 4 * 128 * 32 + 10 * (16 * 8 + 8 * 4)  # 10 terms for the 4 matrices
    expected = allocate_factors(dense, CompressionConfig(a_shape=(16, 8), target_params=budget, allocate=True,
                                                  factors=3)).factors_by_module
    settings = scratch_settings(tmp_path, init_from="dense", model=str(tmp_path / "dense"), model_config=None,
                                a_shape="16x8", allocate_params=budget, factors=3, max_steps=2, eval_every=0)
    code, out, err = run_train_cli([*cli_args(settings), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["step"] == 2
    trained = load_model(str(tmp_path / "run" / "latest" / "model"))
    assert {p: s["factors"] for p, s in trained.config.compressed_modules.items()} == expected
    assert sum(expected.values()) == 10 and max(expected.values()) <= 3 and count_params(trained) <= budget

    settings["init_from"], settings["model"] = "kronypt", str(tmp_path / "run" / "latest" / "model")
    code, _, err = run_train_cli(cli_args({**settings, "a_shape": None, "out": str(tmp_path / "again")}), capsys)
    assert code == 2 and "--factors / --allocate-params only apply to --init-from dense" in err, err


def test_a_bad_set_value_is_an_error_even_when_a_flag_sets_the_key(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    code, _, err = run_train_cli(["--set", "max_steps=1.5", "--max-steps", "3", "--print-config"], capsys)
    assert code == 2 and err.count("\n") == 1 and "bad value '1.5' for max_steps" in err, err
    code, out, err = run_train_cli(["--init-from", "scratch", "--model-config", "c.json", "--data", "d",
                                    "--set", "lr=0.1", "--lr", "0.2", "--set", "min_lr=0.01", "--schedule", "cosine",
                                    "--print-config"],
                                   capsys)
    assert code == 0, err
    assert "lr: 0.2\n" in out and "min_lr: 0.01\n" in out  # a flag wins over --set


def test_recipe_inputs_are_found_next_to_the_recipe(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # A repository-like layout: configs/ names files from the repository root, or from configs/ itself.
    repo = tmp_path / "repo"
    (repo / "configs").mkdir(parents=True)
    settings = scratch_settings(repo, max_steps=1, eval_every=0)
    Path(settings["model_config"]).rename(repo / "configs" / "gpt2.json")
    recipe = repo / "configs" / "recipe.yaml"
    recipe.write_text("init_from: scratch\nmodel_config: configs/gpt2.json\ndata: tokens\nout: runs/r\n"
                      "train: {max_steps: 1, micro_batch_size: 2, seq_len: 32, log_every: 1}\n"
                      "eval: {eval_batches: 1}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = run_train_cli(["--config", str(recipe), "--print-config"], capsys)
    assert code == 0, err
    printed = yaml.safe_load(out)
    assert printed["model_config"] == str(repo / "configs" / "gpt2.json")
    assert printed["data"] == str(repo / "tokens") and printed["out"] == "runs/r"  # outputs stay here
    code, out, err = run_train_cli(["--config", str(recipe), "--json"], capsys)
    assert code == 0 and json.loads(out)["step"] == 1, err
    assert (elsewhere / "runs" / "r" / "latest").is_dir()
    # the current folder wins; a path found nowhere keeps its name and its error
    (elsewhere / "configs").mkdir()
    (repo / "configs" / "gpt2.json").rename(elsewhere / "configs" / "gpt2.json")
    assert yaml.safe_load(run_train_cli(["--config", str(recipe), "--print-config"], capsys)[1])["model_config"] == \
        "configs/gpt2.json"
    (elsewhere / "configs" / "gpt2.json").unlink()
    code, _, err = run_train_cli(["--config", str(recipe), "--out", str(tmp_path / "new")], capsys)
    assert code == 2 and "model config configs/gpt2.json does not exist" in err, err


def _teacher(tmp_path: Path, name: str, **overrides) -> str:
    """A tiny GPT-2 teacher folder (the student's 256-token vocabulary) with `overrides` to its config."""
    import torch
    from test_train_support import tiny_gpt2
    from transformers import GPT2LMHeadModel

    torch.manual_seed(1)
    GPT2LMHeadModel(tiny_gpt2(**overrides)).save_pretrained(tmp_path / name)
    return str(tmp_path / name)


@pytest.mark.parametrize(("overrides", "hidden_weight", "message"), [
    ({"n_embd": 64}, 0.5, "student 2 blocks x 32, teacher 2 blocks x 64"),
    ({"n_layer": 3}, 0.5, "student 2 blocks x 32, teacher 3 blocks x 32"),
    ({"n_positions": 16}, 0.0, "seq_len 32 exceeds the teacher's context (16)"),
], ids=["wider", "deeper", "shorter context"])
def test_a_teacher_that_cannot_be_distilled_from_is_refused_before_the_run(
        tmp_path: Path, capsys: pytest.CaptureFixture, overrides: dict, hidden_weight: float, message: str) -> None:
    teacher = _teacher(tmp_path, "teacher", **overrides)
    capsys.readouterr()  # save_pretrained's progress bar
    settings = scratch_settings(tmp_path, teacher=teacher, distill_hidden_weight=hidden_weight, max_steps=2)
    code, _, err = run_train_cli(cli_args(settings), capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("kronypt: error: ") and message in err, err
    assert not (tmp_path / "run").exists()  # no config.yaml, no metrics.jsonl


def test_logit_distillation_takes_a_teacher_of_another_shape(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    teacher = _teacher(tmp_path, "teacher", n_embd=64, n_layer=3)
    settings = scratch_settings(tmp_path, teacher=teacher, max_steps=1, eval_every=0)
    code, out, err = run_train_cli([*cli_args(settings), "--json"], capsys)
    assert code == 0 and json.loads(out)["step"] == 1, err
    assert "distill_objective" in read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]


def test_distill_alpha_and_temperature_flags_reach_the_run_config(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    teacher = _teacher(tmp_path, "teacher")
    capsys.readouterr()  # save_pretrained's progress bar
    flags = ["--distill-alpha", "0.25", "--distill-temperature", "3.5"]  # the defaults are 0.5 and 2.0
    settings = scratch_settings(tmp_path, teacher=teacher, max_steps=1, eval_every=0)
    code, out, err = run_train_cli([*cli_args(settings), *flags, "--print-config"], capsys)
    assert code == 0, err
    assert yaml.safe_load(out)["distill"] == {"teacher": teacher, "alpha": 0.25, "temperature": 3.5,
                                              "hidden_weight": 0.0}
    # a real (1-step) distillation run records the settings it trained with in its folder
    code, out, err = run_train_cli([*cli_args(settings), *flags, "--json"], capsys)
    assert code == 0 and json.loads(out)["step"] == 1, err
    assert "distill_objective" in read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["distill"]
    assert (recorded["alpha"], recorded["temperature"]) == (0.25, 3.5)


def test_help_shows_the_defaults_a_run_gets_without_the_flags(capsys) -> None:
    """The flags default to None (only the flags given override a recipe); --help still shows the values."""
    code, out, _ = run_train_cli(["--help"], capsys)
    assert code == 0
    defaults = TrainConfig()
    for shown in (defaults.train.max_steps, defaults.optim.lr, defaults.seed):
        assert f"[default: ({shown})]" in out, shown
    assert f"({defaults.out})]" in out  # its "[default:" may be wrapped onto the line before
    assert "Example: kronypt train" in out


def test_a_run_without_out_says_where_it_trains(tmp_path: Path, capsys, monkeypatch) -> None:
    settings = scratch_settings(tmp_path, out=None, max_steps=1, eval_every=0)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_train_cli([*cli_args(settings), "--no-progress"], capsys)
    assert code == 0, err
    assert "kronypt: no --out given: the run folder is runs/train" in err
    assert (tmp_path / "runs" / "train" / "metrics.jsonl").is_file()
    code, _, err = run_train_cli([*cli_args({**settings, "out": "elsewhere"}), "--no-progress"], capsys)
    assert code == 0 and "no --out given" not in err
    code, _, err = run_train_cli(cli_args({**settings, "model_config": None}), capsys)  # bad input: one line
    assert code == 2 and err == "kronypt: error: --init-from scratch needs --model-config (a GPT2Config JSON file)\n"


def test_every_setting_has_a_flag_made_from_its_declaration() -> None:
    """Adding a setting to TrainConfig (or a group) adds its `kronypt train` flag: each flag parses into
    its setting, with the declared type, and `--help` shows the declared help text."""
    import typer

    from kronypt.cli.main import _register_commands, app
    from kronypt.cli.train import _flag_type
    from kronypt.train.args import flag_name
    from kronypt.train.config import declared_settings

    _register_commands()
    command = typer.main.get_command(app).commands["train"]
    samples = {int: ("7", 7), float: ("0.25", 0.25), str: ("x", "x")}
    for _, setting, hint in declared_settings():
        flag = flag_name(setting)
        if isinstance(setting.default, bool):
            given, expected = [flag], True
        else:
            text, expected = samples[_flag_type(hint)]  # a tuple is given as text: 0.9,0.95
            given = [flag, text]
        params = command.make_context("train", given).params
        assert params[setting.name] == expected, (setting.name, params[setting.name])
        assert [p for p in command.params if p.name == setting.name][0].help == setting.metadata["help"]
    assert {"--distill-alpha", "--freeze-embeddings", "--out"} <= {flag_name(s) for _, s, _ in declared_settings()}
