"""The trainer on a tiny GPT-2: learning, exact resume after SIGKILL, signals, divergence, freezing, distillation."""

from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_support import (
    cli_args,
    make_token_folder,
    run_python,
    run_train_cli,
    scratch_config,
    scratch_settings,
    tiny_gpt2,
)
from transformers import GPT2LMHeadModel

from kronypt.errors import KronyptError
from kronypt.models import load_model
from kronypt.nn import KroneckerLinear
from kronypt.train import TrainingDiverged, train
from kronypt.train.checkpoint import latest_checkpoint, list_checkpoints, load_state
from kronypt.train.metrics import read_metrics


def test_loss_falls_within_a_few_steps(tmp_path: Path) -> None:
    result = train(scratch_config(tmp_path, max_steps=12, eval_every=0), progress=False)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert records[0] == {"step": 0, "tokens": 0, "val_loss": pytest.approx(math.log(256), abs=0.3)}
    losses = [r["loss"] for r in records[1:]]
    assert len(losses) == 12 and result.step == 12 and result.tokens == 12 * 128
    assert sum(losses[-3:]) / 3 < losses[0] - 0.3, losses
    assert result.val_loss is not None and result.val_loss < math.log(256)


KILL_WHEN_STEP_6_IS_LOGGED = """
import sys, time
from pathlib import Path
from kronypt.train import loop
from test_train_support import scratch_config

tmp = Path({tmp!r})
log = loop.Trainer._log

def log_then_hang(self, *args, **kwargs):
    log(self, *args, **kwargs)
    if self.step == 6:  # the checkpoint of step 4 is on disk, metrics already hold steps 5 and 6
        (tmp / "hanging").write_text("")
        time.sleep(600)

loop.Trainer._log = log_then_hang
loop.train(scratch_config(tmp, out=str(tmp / "killed")), progress=False)
"""


def test_resume_after_sigkill_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    reference = train(scratch_config(tmp_path, out=str(tmp_path / "straight")), progress=False)
    child = run_python(KILL_WHEN_STEP_6_IS_LOGGED.format(tmp=str(tmp_path)))
    deadline = time.monotonic() + 120
    while not (tmp_path / "hanging").exists():
        assert child.poll() is None, child.stdout.read()
        assert time.monotonic() < deadline, "the child never reached step 6"
        time.sleep(0.1)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    killed = tmp_path / "killed"
    assert [p.name for p in list_checkpoints(killed)] == ["step-00000004"]
    assert read_metrics(killed / "metrics.jsonl")[-1]["step"] == 6

    resumed = train(scratch_config(tmp_path, out=str(killed)), progress=False)
    expected = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    got = read_metrics(killed / "metrics.jsonl")
    assert [r["step"] for r in got] == [r["step"] for r in expected] == list(range(9))
    for mine, ref in zip(got, expected, strict=True):
        for key in ("loss", "grad_norm", "lr", "val_loss"):
            assert (key in mine) == (key in ref)
            if key in ref:
                assert abs(mine[key] - ref[key]) <= 1e-6, (mine, ref)
    assert (resumed.step, resumed.tokens) == (reference.step, reference.tokens)
    straight = load_file(tmp_path / "straight" / "latest" / "model" / "model.safetensors")
    again = load_file(killed / "latest" / "model" / "model.safetensors")
    assert all(torch.equal(straight[k], again[k]) for k in straight)


def _kill_self_on_call(model: torch.nn.Module, call: int, sig: int) -> None:
    """Send `sig` to this process during the model's `call`-th training forward pass."""
    calls = []

    def hook(module, args, output):
        calls.append(module.training)  # validation passes run in eval mode and do not count
        if sum(calls) == call and module.training:
            os.kill(os.getpid(), sig)

    model.register_forward_hook(hook)


def test_sigterm_saves_a_checkpoint_and_stops_cleanly(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    config = scratch_config(tmp_path, max_steps=50, save_every=100)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(tiny_gpt2())
    _kill_self_on_call(model, call=5, sig=signal.SIGTERM)  # micro-batch 5 = step 3 (2 per step)
    capfd.readouterr()
    result = train(config, model=model, progress=False)
    assert result.stopped_by == "SIGTERM" and result.step == 3
    assert latest_checkpoint(config.out).name == "step-00000003"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone again
    out, err = capfd.readouterr()  # the notice goes to stderr: stdout may be carrying --json
    assert out == "" and err.strip() == (f"SIGTERM: saved step 3 to {latest_checkpoint(config.out)}; rerun the "
                                         "same command to resume")
    finished = train(config.with_overrides({"max_steps": 5}), progress=False)
    assert finished.step == 5 and finished.stopped_by is None
    # rerun once finished: nothing to train, and the last step's loss and val_loss as logged
    logged = [r for r in read_metrics(Path(config.out) / "metrics.jsonl") if r["step"] == 5]
    again = train(config.with_overrides({"max_steps": 5}), progress=False)
    assert again.step == 5 and again.loss == next(r["loss"] for r in logged if "loss" in r)
    assert again.val_loss == next(r["val_loss"] for r in logged if "val_loss" in r) == finished.val_loss


def test_resuming_an_earlier_checkpoint_replaces_the_run_past_it(tmp_path: Path, capfd: pytest.CaptureFixture
                                                                  ) -> None:
    """--resume of an earlier checkpoint: its later checkpoints go with their metric records (left in place,
    latest/best and the next --resume auto went back to the abandoned run), and a stop says to resume with
    --resume auto (the same command would go back to the earlier checkpoint again)."""
    config = scratch_config(tmp_path, max_steps=6, save_every=2, eval_every=2, keep_last=5)
    out = Path(config.out)
    train(config, progress=False)
    assert [p.name for p in list_checkpoints(out)] == ["step-00000002", "step-00000004", "step-00000006"]
    earlier = out / "checkpoints" / "step-00000002"
    torch.manual_seed(0)
    model = GPT2LMHeadModel(tiny_gpt2())
    _kill_self_on_call(model, call=3, sig=signal.SIGTERM)  # the second micro-batch of step 4 after step 2
    capfd.readouterr()
    resumed = train(config.with_overrides({"max_steps": 10, "resume": str(earlier)}), model=model, progress=False)
    _, err = capfd.readouterr()
    assert resumed.stopped_by == "SIGTERM" and resumed.step == 4
    assert "dropped 2 later checkpoints of the run this resume replaces (step-00000004, step-00000006)" in err
    assert [p.name for p in list_checkpoints(out)] == ["step-00000002", "step-00000004"]
    assert (out / "latest").resolve() == (out / "checkpoints" / "step-00000004").resolve()
    assert (out / "best").resolve().parent == out / "checkpoints"
    assert f"rerun with --resume auto instead of --resume {earlier} to resume" in err
    assert max(r["step"] for r in read_metrics(out / "metrics.jsonl")) == 4
    again = train(config.with_overrides({"max_steps": 10}), progress=False)  # --resume auto: from step 4
    assert again.step == 10 and [r["step"] for r in read_metrics(out / "metrics.jsonl")] == list(range(11))


def test_a_run_that_never_beats_its_starting_model_says_so(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """The starting model (step 0) is validated but not saved: when every checkpoint is worse, `best` is only
    the least bad one, and the run says so (a learning rate of 3 wrecks this model at once)."""
    train(scratch_config(tmp_path, max_steps=2, eval_every=1, lr=3.0, warmup_steps=0), progress=False)
    _, err = capfd.readouterr()
    start = read_metrics(tmp_path / "run" / "metrics.jsonl")[0]["val_loss"]
    assert f"against {start:.4f} at step 0): training has not improved on it so far" in err, err
    train(scratch_config(tmp_path, max_steps=2, eval_every=1, out=str(tmp_path / "fine")), progress=False)
    assert "note: no checkpoint" not in capfd.readouterr().err


def test_a_signal_on_a_validation_step_still_validates(tmp_path: Path) -> None:
    # Stopping must not drop the step's validation: the resumed run would never evaluate that step again.
    config = scratch_config(tmp_path, max_steps=50, save_every=100, eval_every=4)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(tiny_gpt2())
    _kill_self_on_call(model, call=7, sig=signal.SIGTERM)  # micro-batch 7 = step 4, a validation step
    result = train(config, model=model, progress=False)
    assert result.stopped_by == "SIGTERM" and result.step == 4 and result.val_loss is not None
    assert "val_loss" in read_metrics(Path(config.out) / "metrics.jsonl")[-1]
    assert result.best_checkpoint is not None and result.best_checkpoint.endswith("step-00000004")


def test_a_fresh_start_rewrites_metrics_of_a_run_killed_before_its_first_checkpoint(tmp_path: Path) -> None:
    config = scratch_config(tmp_path, max_steps=2, eval_every=0)
    out = Path(config.out)
    out.mkdir(parents=True)
    (out / "metrics.jsonl").write_text('{"step": 0, "tokens": 0}\n{"step": 1, "tokens": 128}\n')
    train(config, progress=False)
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [0, 1, 2]


def test_resume_takes_a_run_folder_and_explains_anything_else(tmp_path: Path) -> None:
    config = scratch_config(tmp_path, max_steps=4, save_every=2, eval_every=0)
    train(config, progress=False)
    more = train(config.with_overrides({"max_steps": 6, "resume": config.out}), progress=False)
    assert more.step == 6  # resumed from the run folder's latest checkpoint (step 4)
    assert [r["step"] for r in read_metrics(Path(config.out) / "metrics.jsonl")] == list(range(7))
    with pytest.raises(KronyptError, match="is not a checkpoint: pass a run folder"):
        train(config.with_overrides({"resume": str(tmp_path), "out": str(tmp_path / "other")}), progress=False)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    config = scratch_config(tmp_path, max_steps=10, save_every=2, eval_every=0)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(tiny_gpt2())
    calls = []

    def poison(module, args, output):
        calls.append(module.training)
        return output * float("nan") if sum(calls) >= 7 else output  # step 4 (training micro-batches 7 and 8)

    model.lm_head.register_forward_hook(poison)
    with pytest.raises(TrainingDiverged, match="non-finite loss at step 4.*step-00000002"):
        train(config, model=model, progress=False)
    assert [p.name for p in list_checkpoints(config.out)] == ["step-00000002"]
    model_dir, state = load_state(latest_checkpoint(config.out))
    assert state["step"] == 2
    assert all(torch.isfinite(p).all() for p in load_model(str(model_dir)).parameters())
    # diverging before the first checkpoint: no checkpoint to name, the advice says so
    calls.clear()
    fresh = GPT2LMHeadModel(tiny_gpt2())
    fresh.lm_head.register_forward_hook(poison)
    with pytest.raises(TrainingDiverged, match="at step 4 .*; stopped without saving; no checkpoint yet: rerun "
                                               "with a lower --lr"):
        train(scratch_config(tmp_path / "early", max_steps=10, save_every=100, eval_every=0), model=fresh,
              progress=False)


def test_weights_or_a_val_loss_that_stopped_being_finite_are_never_saved(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    """lr 1e6: step 1's loss is finite (computed before the update), the weights after it are NaN. A run of
    one step saved them as its best checkpoint and exited 0; with a checkpoint every step and no validation,
    step 2's NaN loss named the NaN checkpoint of step 1 "last good"."""
    settings = scratch_settings(tmp_path, max_steps=1, eval_every=1, lr=1e6)
    code, _, err = run_train_cli([*cli_args(settings), "--no-progress"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "non-finite val_loss at step 1 (nan); stopped without saving; no checkpoint yet" in err, err
    assert not list_checkpoints(tmp_path / "run") and not (tmp_path / "run" / "best").exists()
    settings = scratch_settings(tmp_path, out=str(tmp_path / "every"), max_steps=6, save_every=1, eval_every=0,
                                lr=1e6)
    code, _, err = run_train_cli([*cli_args(settings), "--no-progress"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "non-finite loss on val.bin after step 1 (nan); stopped without saving; no checkpoint yet" in err, err
    assert not list_checkpoints(tmp_path / "every")
    # a NaN in weights that no window reaches (a position past seq_len): finite losses, still never saved
    torch.manual_seed(0)
    model = GPT2LMHeadModel(tiny_gpt2())
    with torch.no_grad():
        model.transformer.wpe.weight[60] = math.nan
    config = scratch_config(tmp_path, out=str(tmp_path / "unreached"), max_steps=2, save_every=1, eval_every=1)
    with pytest.raises(TrainingDiverged, match="^non-finite weights after step 1; stopped without saving; no "):
        train(config, model=model, progress=False)
    assert not list_checkpoints(config.out)


def _tiny_dense_folder(tmp_path: Path, **overrides) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "dense"
    GPT2LMHeadModel(tiny_gpt2(**overrides)).save_pretrained(path)
    return path


def test_frozen_embeddings_and_scalars_stay_bit_identical(tmp_path: Path) -> None:
    dense_dir = _tiny_dense_folder(tmp_path)
    config = scratch_config(tmp_path, init_from="dense", model=str(dense_dir), model_config=None,
                            a_shape="16x8", scalars=True, init="van-loan", max_steps=3, freeze_embeddings=True,
                            freeze_scalars=True, scalar_value=2.0)
    train(config, progress=False)
    dense = load_model(str(dense_dir))
    trained = load_model(str(latest_checkpoint(config.out) / "model"))
    assert torch.equal(trained.transformer.wte.weight, dense.transformer.wte.weight)
    assert torch.equal(trained.transformer.wpe.weight, dense.transformer.wpe.weight)
    layers = [m for m in trained.modules() if isinstance(m, KroneckerLinear)]
    assert len(layers) == 4 and all(torch.equal(m.scalars, torch.full_like(m.scalars, 2.0)) for m in layers)
    assert not torch.equal(trained.transformer.h[0].ln_1.weight, dense.transformer.h[0].ln_1.weight)


def test_distilling_from_an_identical_teacher_leaves_only_the_ce_share(tmp_path: Path) -> None:
    """At step 1 student = teacher (dropout off), so KL and hidden MSE vanish: the objective is (1 - alpha) · CE,
    while the logged `loss` stays the plain cross-entropy."""
    teacher_dir = _tiny_dense_folder(tmp_path)
    common = {"max_steps": 1, "dropout": 0.0, "eval_every": 0}
    plain = train(scratch_config(tmp_path, out=str(tmp_path / "plain"), **common),
                  model=load_model(str(teacher_dir)), progress=False)
    distilled = train(scratch_config(tmp_path, out=str(tmp_path / "distilled"), teacher=str(teacher_dir),
                                     alpha=0.75, hidden_weight=1.0, **common),
                      model=load_model(str(teacher_dir)), progress=False)
    assert distilled.loss == pytest.approx(plain.loss, rel=1e-6)
    [record] = [r for r in read_metrics(tmp_path / "distilled" / "metrics.jsonl") if r["step"] == 1]
    assert record["distill_objective"] == pytest.approx(0.25 * plain.loss, rel=1e-6)
    assert "distill_objective" not in read_metrics(tmp_path / "plain" / "metrics.jsonl")[-1]


def test_seq_len_beyond_the_context_is_refused(tmp_path: Path) -> None:
    make_token_folder(tmp_path / "tokens")
    with pytest.raises(ValueError, match="exceeds the model's context"):
        train(scratch_config(tmp_path, seq_len=128, tokens_per_step=None), progress=False)


def test_compile_mode_reaches_torch_compile_and_graphed_modes_mark_each_micro_step(tmp_path: Path,
                                                                                  monkeypatch) -> None:
    """--compile-mode is passed to torch.compile; the CUDA-graph modes start a new graph step before every
    forward, so a replay never overwrites outputs still in use, and refuse gradient accumulation (its
    gradients would live in graph memory that the next micro-batch's replay reuses)."""
    compiled, marks = [], []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compiled.append(kw))  # stays eager
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    for mode, expected_marks in (("reduce-overhead", 3), ("default", 0)):
        marks.clear()
        train(scratch_config(tmp_path, out=str(tmp_path / mode), compile=True, compile_mode=mode, max_steps=3,
                             eval_every=0, tokens_per_step=64), progress=False)  # one micro-batch of 2 x 32
        assert compiled[-1] == {"mode": mode} and len(marks) == expected_marks, (mode, len(marks))
    with pytest.raises(KronyptError, match="one micro-batch per step.*2 micro-batches.*--tokens-per-step"):
        train(scratch_config(tmp_path, out=str(tmp_path / "accumulating"), compile=True,
                             compile_mode="reduce-overhead", tokens_per_step=128), progress=False)


def test_compile_mode_must_be_known_and_is_ignored_without_compile(tmp_path: Path) -> None:
    scratch_config(tmp_path, compile_mode="reduce-overhead").validate()  # a recipe's mode with --no-compile
    with pytest.raises(KronyptError, match="compile_mode.*reduce-overhead"):
        scratch_config(tmp_path, compile=True, compile_mode="fast").validate()


def test_a_second_run_on_the_same_folder_is_refused_while_the_first_holds_it(tmp_path: Path) -> None:
    """Two runs on one --out would both resume from its latest checkpoint and interleave their files."""
    from kronypt.errors import KronyptError
    from kronypt.train.lock import run_folder_lock

    config = scratch_config(tmp_path, max_steps=2, eval_every=0)
    lock_file = Path(config.out).parent / f".{Path(config.out).name}.lock"
    with run_folder_lock(config.out):  # as a training process holds it
        assert lock_file.read_text().strip() == str(os.getpid())
        with pytest.raises(KronyptError, match=rf"run folder .*run is in use by another training process \(pid "
                                               rf"{os.getpid()}\); wait for it to stop, or choose another --out"):
            train(config, progress=False)
        assert not (Path(config.out) / "metrics.jsonl").exists()  # refused before writing anything
    assert not lock_file.exists()  # released and removed
    assert train(config, progress=False).step == 2
    assert not lock_file.exists()


def test_a_lock_file_replaced_between_open_and_lock_is_not_taken(tmp_path: Path, monkeypatch) -> None:
    """A run opening the lock file just as the previous run removes it must lock the new file, or two later
    runs could each hold 'the' lock (one on the removed file, one on its successor)."""
    import builtins

    import kronypt.train.lock as lock_module
    from kronypt.errors import KronyptError

    out = tmp_path / "run"
    first = lock_module.run_folder_lock(out)
    first.__enter__()

    def open_as_the_first_run_finishes(*args, **kwargs):
        handle = builtins.open(*args, **kwargs)
        monkeypatch.setattr(lock_module, "open", builtins.open, raising=False)
        first.__exit__(None, None, None)  # removes the file this run has just opened
        return handle

    monkeypatch.setattr(lock_module, "open", open_as_the_first_run_finishes, raising=False)
    with lock_module.run_folder_lock(out):
        with pytest.raises(KronyptError, match="in use by another training process"):
            with lock_module.run_folder_lock(out):
                pass
