"""Two CPU processes under torchrun (DDP, gloo) train like one process with the same global batch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_train_support import cli_args, scratch_settings, subprocess_env

from kronypt.train import TrainConfig, train
from kronypt.train.checkpoint import list_checkpoints
from kronypt.train.metrics import read_metrics


def test_two_gloo_ranks_match_one_process(tmp_path: Path) -> None:
    # 4 sequences per step: one process runs 2 micro-batches of 2, each of the two ranks runs one.
    settings = scratch_settings(tmp_path, max_steps=4, eval_every=2, save_every=2, dropout=0.0,
                                micro_batch_size=2, tokens_per_step=128)
    single = train(TrainConfig().with_overrides({**settings, "out": str(tmp_path / "single")}), progress=False)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "kronypt.cli.main", "train", *cli_args({**settings, "out": str(tmp_path / "ddp")}), "--json"]
    done = subprocess.run(command, env=subprocess_env(threads=1), capture_output=True, text=True, timeout=240)
    if done.returncode != 0 and "gloo" in done.stderr.lower() and "unavailable" in done.stderr.lower():
        pytest.skip("gloo is unavailable in this torch build")
    assert done.returncode == 0, done.stderr[-3000:]

    ddp = read_metrics(tmp_path / "ddp" / "metrics.jsonl")  # written by rank 0 only: one record per step
    one = read_metrics(tmp_path / "single" / "metrics.jsonl")
    assert [r["step"] for r in ddp] == [r["step"] for r in one] == [0, 1, 2, 3, 4]
    for mine, ref in zip(ddp, one, strict=True):
        assert mine["tokens"] == ref["tokens"] and mine.keys() == ref.keys()
        for key in ("loss", "grad_norm", "val_loss"):
            if key in ref:
                assert mine[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-5), (key, mine, ref)
    assert [p.name for p in list_checkpoints(tmp_path / "ddp")] == ["step-00000002", "step-00000004"]
    assert single.step == 4
