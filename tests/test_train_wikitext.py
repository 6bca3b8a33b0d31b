"""Periodic WikiText-2 validation through kronypt.eval: the logged number is the evaluator's number, also
when the model is sharded over ranks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA, TOKENIZER_DIR, requires_shared
from test_train_support import (
    cli_args,
    make_token_folder,
    scratch_config,
    scratch_settings,
    subprocess_env,
    write_model_config,
)

from kronypt.eval import evaluate
from kronypt.models import load_model, load_tokenizer
from kronypt.train import TrainConfig, train
from kronypt.train.metrics import read_metrics


@requires_shared
def test_wikitext_validation_is_logged_with_the_evaluators_value(tmp_path: Path) -> None:
    data = make_token_folder(tmp_path / "tokens", vocab_size=50257, tokenizer={"folder": str(TOKENIZER_DIR)})
    model_config = write_model_config(tmp_path / "gpt2.json", vocab_size=50257)
    config = scratch_config(tmp_path, data=str(data), model_config=str(model_config), max_steps=2, eval_every=0,
                            eval_wikitext=str(SHARED_DATA), eval_wikitext_tokens=300)
    train(config, progress=False)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records if "wikitext2_val_ppl" in r] == [0, 2]
    model = load_model(str(tmp_path / "run" / "latest" / "model"))
    [record] = evaluate(model, load_tokenizer(str(TOKENIZER_DIR)), tasks=["wikitext2"], protocols=["krony-pt"],
                        split="validation", data_dir=SHARED_DATA, max_tokens=300, context=32, progress=False)
    assert records[-1]["wikitext2_val_ppl"] == pytest.approx(record.value, rel=1e-5)


@requires_shared
def test_wikitext_validation_under_fsdp_matches_one_process(tmp_path: Path) -> None:
    # Sharded weights are gathered in every forward, so every rank runs the WikiText pass (rank 0 logs it).
    data = make_token_folder(tmp_path / "tokens", vocab_size=50257, tokenizer={"folder": str(TOKENIZER_DIR)})
    model_config = write_model_config(tmp_path / "gpt2.json", vocab_size=50257)
    settings = scratch_settings(tmp_path, data=str(data), model_config=str(model_config), max_steps=2,
                                eval_every=0, eval_wikitext=str(SHARED_DATA), eval_wikitext_tokens=300,
                                eval_batches=3, dropout=0.0)  # 3 val batches: one rank runs a padding round
    train(TrainConfig().with_overrides({**settings, "out": str(tmp_path / "one")}), progress=False)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "kronypt.cli.main", "train", *cli_args({**settings, "out": str(tmp_path / "fsdp")}),
               "--parallel", "fsdp", "--json"]
    done = subprocess.run(command, env=subprocess_env(threads=1), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    one = read_metrics(tmp_path / "one" / "metrics.jsonl")
    sharded = read_metrics(tmp_path / "fsdp" / "metrics.jsonl")
    assert [r["step"] for r in sharded if "wikitext2_val_ppl" in r] == [0, 2]
    for mine, ref in zip(sharded, one, strict=True):
        for key in ("wikitext2_val_ppl", "val_loss", "loss"):
            if key in ref:
                assert mine[key] == pytest.approx(ref[key], rel=1e-4), (key, mine, ref)
