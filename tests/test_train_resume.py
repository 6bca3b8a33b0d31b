"""Resuming a run: settings that define it must match the checkpoint's, what may change is applied, the
run folder holds only the run's files unless forced, and what happens is said on stderr."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
import torch
import yaml
from file_snapshot import snapshot
from test_train_checkpoint import scribble, tensor_data_offset
from test_train_support import (
    cli_args,
    dense_settings,
    make_token_folder,
    run_python,
    run_train_cli,
    scratch_config,
    scratch_settings,
)

from kronypt.errors import KronyptError
from kronypt.train import TrainConfig, train
from kronypt.train.checkpoint import INDEX_FILE, STATE_FILE, latest_checkpoint, write_index
from kronypt.train.metrics import read_metrics
from kronypt.train.optim import lr_multiplier


def _snapshot(run: Path) -> dict[str, bytes]:
    """The run's own files and the latest checkpoint's index: what a refused resume must leave alone."""
    files = [run / "metrics.jsonl", run / "config.yaml", latest_checkpoint(run) / INDEX_FILE]
    return {str(f): f.read_bytes() for f in files}


def _dense_settings(tmp_path: Path, **overrides) -> dict:
    return dense_settings(tmp_path, **{"max_steps": 2, "save_every": 2, "eval_every": 2, **overrides})


def test_a_resume_that_changes_what_defines_the_run_is_refused(tmp_path: Path) -> None:
    settings = _dense_settings(tmp_path)
    train(TrainConfig().with_overrides(settings), progress=False)
    run = Path(settings["out"])
    before = _snapshot(run)
    other_data = make_token_folder(tmp_path / "other-tokens", blocks=100)
    cases = [
        ({"a_shape": "32x8"}, ["a_shape: 16x8 -> 32x8"]),
        ({"a_shape": None, "scheme": "81M"}, ["scheme: none -> 81M", "a_shape: 16x8 -> none"]),
        ({"data": str(other_data)}, [f"data: {tmp_path / 'tokens'} -> {other_data}",
                                     f"data contents: {other_data} holds other tokens than the checkpoint trained "
                                     "on (its meta.json names other inputs, splits or token counts)"]),
        ({"lr": 0.01, "schedule": "cosine"}, ["lr: 0.003 -> 0.01", "schedule: constant -> cosine"]),
        ({"seq_len": 16}, ["seq_len: 32 -> 16"]),
        ({"eval_batches": 3}, ["eval_batches: 2 -> 3"]),
        ({"tokens_per_step": 256}, ["tokens_per_step: 128 -> 256"]),
        ({"micro_batch_size": 1}, ["validation windows (micro_batch_size × eval_batches): 2 × 2 -> 1 × 2 "
                                   "(keep the product with --set eval_batches=N)"]),
        ({"betas": "0.9,0.99", "seed": 8}, ["betas: 0.9,0.95 -> 0.9,0.99", "seed: 7 -> 8"]),
    ]
    for overrides, expected in cases:
        config = TrainConfig().with_overrides({**settings, "max_steps": 4, **overrides})
        with pytest.raises(KronyptError) as caught:
            train(config, progress=False)
        message = str(caught.value)
        assert message.startswith(f"cannot resume from {run / 'checkpoints' / 'step-00000002'}: "), message
        assert "\n" not in message and "another --out" in message, message
        listed = message.split("(checkpoint -> now): ")[1].split(". Rerun")[0].split("; ")
        assert sorted(listed) == sorted(expected), (overrides, message)
    assert _snapshot(run) == before  # nothing was trained, logged or recorded
    shutil.rmtree(tmp_path / "tokens")
    make_token_folder(tmp_path / "tokens", blocks=150)  # the same folder prepared again from other text
    with pytest.raises(KronyptError, match=f"data contents: {tmp_path / 'tokens'} holds other tokens"):
        train(TrainConfig().with_overrides({**settings, "max_steps": 4}), progress=False)
    shutil.rmtree(tmp_path / "tokens")
    make_token_folder(tmp_path / "tokens")  # and again from the same: resumes
    assert train(TrainConfig().with_overrides({**settings, "max_steps": 4}), progress=False).step == 4


def test_the_cli_refuses_a_changed_resume_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    settings = scratch_settings(tmp_path, max_steps=2, save_every=2)
    assert run_train_cli(cli_args(settings), capsys)[0] == 0
    code, _, err = run_train_cli(cli_args({**settings, "max_steps": 4, "lr": 0.01}), capsys)
    assert code == 2 and err.count("\n") == 1 and "lr: 0.003 -> 0.01" in err, err
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["optim"]["lr"] == 0.003


def test_resume_says_so_and_a_run_at_max_steps_does_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    settings = scratch_settings(tmp_path, max_steps=2, save_every=2)
    run = tmp_path / "run"
    code, _, err = run_train_cli(cli_args(settings), capsys)
    assert code == 0 and "resuming" not in err
    code, out, err = run_train_cli([*cli_args({**settings, "max_steps": 4}), "--json"], capsys)
    assert code == 0 and json.loads(out)["step"] == 4
    assert f"resuming {run} from step 2 (256 tokens)\n" in err, err
    before = _snapshot(run)
    for max_steps in (4, 3):  # at or past max_steps: say so, exit 0, touch nothing
        code, out, err = run_train_cli([*cli_args({**settings, "max_steps": max_steps}), "--json"], capsys)
        assert code == 0 and json.loads(out)["step"] == 4 and json.loads(out)["best_checkpoint"]
        assert f"{run} is already at step 4 (512 tokens), max_steps is {max_steps}: nothing to train" in err, err
        assert _snapshot(run) == before


def test_micro_batch_size_may_change_when_the_step_batch_and_validation_stay(tmp_path: Path) -> None:
    # Dropout off: its masks are drawn per micro-batch, so they differ (the batch does not).
    straight = train(scratch_config(tmp_path, out=str(tmp_path / "straight"), dropout=0.0), progress=False)
    train(scratch_config(tmp_path, max_steps=4, dropout=0.0), progress=False)
    # 4 accumulated micro-batches of 1 instead of 2 of 2: the same 4 windows per step from the same
    # generator; 4 validation batches of 1 are the same 4 windows as 2 of 2.
    resumed = train(scratch_config(tmp_path, micro_batch_size=1, eval_batches=4, dropout=0.0), progress=False)
    assert (resumed.step, resumed.tokens) == (straight.step, straight.tokens)
    expected = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    got = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in got] == [r["step"] for r in expected] == list(range(9))
    for mine, ref in zip(got, expected, strict=True):
        for key in ("loss", "val_loss", "lr"):
            assert (key in mine) == (key in ref)
            if key in ref:
                assert mine[key] == pytest.approx(ref[key], rel=1e-5), (key, mine, ref)
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert recorded["train"]["micro_batch_size"] == 1 and recorded["eval"]["eval_batches"] == 4


def test_a_longer_run_follows_the_new_schedule_from_the_first_resumed_step(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    common = {"schedule": "cosine", "min_lr": 3e-4, "warmup_steps": 1, "eval_every": 0}
    train(scratch_config(tmp_path, max_steps=4, save_every=4, **common), progress=False)
    capsys.readouterr()
    config = scratch_config(tmp_path, max_steps=8, **common)
    train(config, progress=False)
    multiplier = lr_multiplier(config.optim, 8)
    lrs = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "lr" in r}
    for step in range(5, 9):  # the lr logged at step s is the one step s trained with: schedule index s - 1
        assert lrs[step] == pytest.approx(3e-3 * multiplier(step - 1), rel=1e-12), step
    assert "note: max_steps 8 reshapes the cosine schedule: the lr of step 5 is" in capsys.readouterr().err


def _rewrite_state(path: Path, edit) -> None:
    """Apply `edit` to a checkpoint's trainer state, keeping its index's recorded sizes and checksums right."""
    state = torch.load(path / STATE_FILE, weights_only=False)
    edit(state)
    torch.save(state, path / STATE_FILE)
    index = json.loads((path / INDEX_FILE).read_text())
    write_index(path, index["step"], index["tokens"], index["val_loss"])


def test_the_same_inputs_spelled_differently_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train(scratch_config(tmp_path, max_steps=2, save_every=2), progress=False)
    monkeypatch.chdir(tmp_path)
    resumed = train(scratch_config(tmp_path, max_steps=3, data="tokens", model_config="./gpt2.json"),
                    progress=False)
    assert resumed.step == 3


def test_a_folder_with_other_files_is_refused_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    run.mkdir()
    own = {"metrics.jsonl": '{"step": 0, "tokens": 0}\n', "config.yaml": "seed: 1\n"}
    for name, text in {**own, "notes.txt": "my notes\n"}.items():
        (run / name).write_text(text)
    settings = scratch_settings(tmp_path, max_steps=1, eval_every=0)
    code, _, err = run_train_cli(cli_args(settings), capsys)
    assert code == 2 and err.count("\n") == 1 and "notes.txt" in err and "--force" in err, err
    assert {p.name: p.read_text() for p in run.iterdir()} == {**own, "notes.txt": "my notes\n"}
    code, _, err = run_train_cli([*cli_args(settings), "--force"], capsys)
    assert code == 0, err
    assert (run / "notes.txt").read_text() == "my notes\n" and latest_checkpoint(run).name == "step-00000001"
    assert yaml.safe_load((run / "config.yaml").read_text())["force"] is True
    # a folder of the run's own files only (e.g. killed before its first checkpoint) needs no --force
    (run / "notes.txt").unlink()
    code, _, err = run_train_cli(cli_args({**settings, "max_steps": 2}), capsys)
    assert code == 0 and f"resuming {run} from step 1" in err, err
    (tmp_path / "a-file").write_text("")
    with pytest.raises(KronyptError, match="exists and is not a folder"):
        train(scratch_config(tmp_path, out=str(tmp_path / "a-file")), progress=False)


def test_inputs_reached_through_a_symlink_are_the_same_inputs(tmp_path: Path) -> None:
    train(scratch_config(tmp_path, max_steps=2, save_every=2), progress=False)
    link = tmp_path / "tokens-link"
    link.symlink_to(tmp_path / "tokens")
    assert train(scratch_config(tmp_path, max_steps=3, data=str(link)), progress=False).step == 3


def test_the_cli_write_probe_is_not_a_foreign_file(tmp_path: Path) -> None:
    """`kronypt train` probes its run folder (rank 0); under torchrun another rank may look meanwhile."""
    from kronypt.train.resume import foreign_files

    (tmp_path / ".kronypt-probe-4242").touch()
    (tmp_path / "metrics.jsonl").touch()
    assert foreign_files(tmp_path) == []
    (tmp_path / "notes.txt").touch()
    assert foreign_files(tmp_path) == ["notes.txt"]


def test_the_best_of_a_run_resumed_into_another_folder_is_a_checkpoint_of_that_folder(tmp_path: Path) -> None:
    """--resume OTHER --out NEW: best_val_loss and best_checkpoint describe the same checkpoint of NEW (the
    state's best was OTHER's, so the two disagreed); the rerun that has nothing to train reports the same."""
    first = train(scratch_config(tmp_path, max_steps=6, save_every=2, eval_every=2, keep_last=5), progress=False)
    assert first.best_val_loss is not None
    # as if OTHER had a better checkpoint than any the resumed run will write
    _rewrite_state(latest_checkpoint(tmp_path / "run"), lambda state: state.update(best_val_loss=0.5))
    moved = scratch_config(tmp_path, max_steps=7, eval_every=1, out=str(tmp_path / "new"),
                           resume=str(tmp_path / "run"))
    for _ in range(2):  # the run, then the rerun at max_steps
        result = train(moved, progress=False)
        index = json.loads((Path(result.best_checkpoint) / INDEX_FILE).read_text())
        assert Path(result.best_checkpoint).parent == tmp_path / "new" / "checkpoints"
        assert result.best_val_loss == index["val_loss"]


def test_the_recorded_recipe_works_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OUT/config.yaml records input paths given relative to the launch folder as absolute ones, so that
    `--config OUT/config.yaml` resumes from anywhere (it failed with "token folder tokens does not exist")."""
    proj = tmp_path / "proj"
    proj.mkdir()
    scratch_settings(proj)
    monkeypatch.chdir(proj)
    relative = {"data": "tokens", "model_config": "gpt2.json", "out": "runs/r", "max_steps": 2, "save_every": 2}
    train(TrainConfig().with_overrides({**scratch_settings(proj), **relative}), progress=False)
    recipe = proj / "runs" / "r" / "config.yaml"
    values = yaml.safe_load(recipe.read_text())
    assert (values["data"], values["model_config"]) == (str(proj / "tokens"), str(proj / "gpt2.json"))
    monkeypatch.chdir(tmp_path)
    again = TrainConfig.from_yaml(recipe).with_overrides({"out": str(proj / "runs" / "r"), "max_steps": 3})
    assert train(again, progress=False).step == 3


@pytest.mark.parametrize("damaged", ["model/model.safetensors", "trainer_state.pt"])
def test_a_checkpoint_damaged_inside_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                            damaged: str) -> None:
    """Random bytes written over the tensor data of the weights or into the trainer state (the sizes
    unchanged) loaded without complaint: the run trained on from the damaged checkpoint."""
    settings = scratch_settings(tmp_path, max_steps=2, save_every=2, eval_every=2)
    assert run_train_cli(cli_args(settings), capsys)[0] == 0
    run, step = tmp_path / "run", latest_checkpoint(tmp_path / "run")
    file = step / damaged
    scribble(file, tensor_data_offset(file) + 64 if file.suffix == ".safetensors" else None)
    before = snapshot(run)
    code, _, err = run_train_cli(cli_args({**settings, "max_steps": 4}), capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert f"corrupt checkpoint {step}: {damaged} does not match the SHA-256 recorded when it was saved" in err, err
    assert snapshot(run) == before
    # a new run started from the checkpoint's model checks it too (the weights alone)
    fresh = {**settings, "init_from": "kronypt", "model": str(run / "best" / "model"), "model_config": None,
             "out": str(tmp_path / "from-best")}
    code, _, err = run_train_cli(cli_args(fresh), capsys)
    if damaged == "trainer_state.pt":
        assert code == 2 and "is not a kronypt model" in err, err  # a dense scratch model: refused as such
    else:
        assert code == 2 and err.count("\n") == 1 and f"{damaged} does not match the SHA-256" in err, err
    assert not (tmp_path / "from-best").exists()


KILL_WHEN_METRICS_ARE_REWRITTEN = """
import builtins, io, os, signal
from kronypt.train import TrainConfig, train

real_open = io.open

def open_then_die(file, mode="r", *args, **kwargs):
    handle = real_open(file, mode, *args, **kwargs)
    if "w" in mode and "metrics.jsonl" in os.fspath(file):  # opened (so truncated) for the rewrite: killed
        os.kill(os.getpid(), signal.SIGKILL)
    return handle

builtins.open = io.open = open_then_die
train(TrainConfig().with_overrides({settings!r}), progress=False)
"""


def test_a_kill_while_a_resume_rewrites_the_metrics_keeps_them(tmp_path: Path) -> None:
    """The records past the resumed checkpoint are dropped by rewriting metrics.jsonl: in place, a kill
    there left it empty, and the next run went on with the records of the resumed steps only."""
    settings = scratch_settings(tmp_path, max_steps=6, save_every=4, eval_every=2)
    train(TrainConfig().with_overrides(settings), progress=False)
    run = tmp_path / "run"
    before = snapshot(run)
    step_4 = str(run / "checkpoints" / "step-00000004")
    child = run_python(KILL_WHEN_METRICS_ARE_REWRITTEN.format(settings={**settings, "resume": step_4}))
    output = child.communicate(timeout=300)[0]
    assert child.returncode == -signal.SIGKILL, output
    assert {name: data for name, data in snapshot(run).items() if ".tmp-" not in name} == before
    resumed = train(TrainConfig().with_overrides({**settings, "resume": step_4}), progress=False)
    assert resumed.step == 6 and [r["step"] for r in read_metrics(run / "metrics.jsonl")] == list(range(7))
    assert not [name for name in snapshot(run) if ".tmp-" in name]

