"""Periodic WikiText-2 validation through kronypt.eval: the logged number is the evaluator's number, also
when the model is sharded over ranks."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, TOKENIZER_DIR, requires_shared
from test_train_support import (
    cli_args,
    make_token_folder,
    run_train_cli,
    scratch_config,
    scratch_settings,
    subprocess_env,
    write_model_config,
)

from kronypt.errors import KronyptError
from kronypt.eval import evaluate, load_texts
from kronypt.models import load_model, load_tokenizer
from kronypt.train import TrainConfig, train
from kronypt.train.metrics import read_metrics
from kronypt.train.wikitext import WikiTextValidation


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


def _hub_datasets(monkeypatch, rows: list[str] | None, calls: list) -> None:
    """A fake `datasets` whose hub serves `rows` as WikiText-2 (None: the hub is unreachable)."""
    def load_dataset(path, name=None, *, split=None):
        calls.append((path, name, split))
        if rows is None:
            raise ConnectionError("Couldn't reach 'Salesforce/wikitext' on the Hub (LocalEntryNotFoundError)\nmore")
        return {"text": rows}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))


@requires_shared
def test_wikitext_validation_from_the_hub_reads_the_validation_split(monkeypatch) -> None:
    # `eval_wikitext: hub`: the same rows from the hub give the same token ids and windows as the local file.
    calls: list = []
    _hub_datasets(monkeypatch, load_texts("wikitext2", "validation", "tokens", SHARED_DATA), calls)
    hub = WikiTextValidation("hub", str(TOKENIZER_DIR), seq_len=32, batch_size=4, max_tokens=300)
    local = WikiTextValidation(str(SHARED_DATA), str(TOKENIZER_DIR), seq_len=32, batch_size=4, max_tokens=300)
    assert calls == [("Salesforce/wikitext", "wikitext-2-v1", "validation")]
    assert torch.equal(hub.plan.sequences[0], local.plan.sequences[0]) and len(hub.plan.sequences[0]) == 300
    assert hub.plan.requests == local.plan.requests


@requires_shared
def test_an_unreachable_wikitext_hub_stops_training_with_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    calls: list = []
    _hub_datasets(monkeypatch, None, calls)
    data = make_token_folder(tmp_path / "tokens", vocab_size=50257, tokenizer={"folder": str(TOKENIZER_DIR)})
    model_config = write_model_config(tmp_path / "gpt2.json", vocab_size=50257)
    settings = scratch_settings(tmp_path, data=str(data), model_config=str(model_config), max_steps=1,
                                eval_wikitext="hub", eval_wikitext_tokens=300)
    code, _, err = run_train_cli(cli_args(settings), capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("kronypt: error: cannot load Salesforce/wikitext (wikitext-2-v1, validation) from "
                               "the hub: Couldn't reach 'Salesforce/wikitext' on the Hub (LocalEntryNotFoundError);")
    assert calls == [("Salesforce/wikitext", "wikitext-2-v1", "validation")]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    with pytest.raises(KronyptError, match="meta.json names none"):
        WikiTextValidation("hub", None, seq_len=32, batch_size=4, max_tokens=300)
