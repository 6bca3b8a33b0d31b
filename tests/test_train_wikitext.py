"""Periodic WikiText-2 validation through kronypt.eval: the logged number is the evaluator's number."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SHARED_DATA, TOKENIZER_DIR, requires_shared
from test_train_support import make_token_folder, scratch_config, write_model_config

from kronypt.eval import evaluate
from kronypt.models import load_model, load_tokenizer
from kronypt.train import train
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
