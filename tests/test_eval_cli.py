"""`kronypt eval` end to end on a local model folder and ../shared/data: table, JSON, one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SHARED_DATA, requires_shared

from kronypt.eval import evaluate
from kronypt.models.loading import load_model
from kronypt.models.tokenizers import load_tokenizer
from tests.test_cli import assert_one_line_error, run

pytestmark = requires_shared


@pytest.fixture(autouse=True)
def _no_save_progress_bar():
    """tiny_dir's save_pretrained draws a progress bar on stderr, which the one-line checks would see when a
    test runs first in its process (later, an earlier --no-progress run has turned the bars off)."""
    from transformers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    yield
    if was_enabled:
        logging.enable_progress_bar()


def test_eval_writes_records_and_prints_the_table(capsys, tiny_dir, tmp_path):
    out_file = tmp_path / "eval.json"
    code, out, err = run(capsys, "eval", str(tiny_dir), "--tasks", "wikitext2,lambada",
                       "--protocol", "krony-pt,lambada-openai", "--data-dir", str(SHARED_DATA),
                       "--max-tokens", "300", "--batch-size", "2", "--json", str(out_file), "--no-progress")
    assert code == 0
    assert "krony-pt" in out and "lambada-openai" in out and "wikitext2 ppl" in out and "lambada acc" in out
    # krony-pt's LAMBADA token perplexity and lambada-openai's last-word perplexity never share a column
    assert "lambada ppl" in out and "lambada last-word ppl" in out
    assert "(test split)" in out and "scored tokens" in out
    # each task runs under the protocols defined on it: nothing left unused; only the window length is said
    assert err.count("warning") == 1 and (f"warning: {tiny_dir}: its context is 128 tokens, so krony-pt scores "
                                          "128-token windows, not the 1024 of its definition") in err
    records = json.loads(out_file.read_text())
    assert [(r["task"], r["protocol"], r["metric"]) for r in records] == [
        ("wikitext2", "krony-pt", "perplexity"), ("lambada", "krony-pt", "perplexity"),
        ("lambada", "lambada-openai", "perplexity"), ("lambada", "lambada-openai", "accuracy")]
    expected = evaluate(load_model(str(tiny_dir)), load_tokenizer(str(tiny_dir)), ["wikitext2"], ["krony-pt"],
                        data_dir=SHARED_DATA, max_tokens=300, progress=False)[0]
    assert records[0]["value"] == pytest.approx(expected.value, rel=1e-6)
    assert records[0]["model"] == str(tiny_dir) and records[0]["params"] == expected.params
    assert records[0]["split"] == "test" and records[0]["tokens"] == expected.tokens
    # each table row shows its scored tokens: the krony-pt row scored both of its tasks
    krony_row = next(line for line in out.splitlines() if "krony-pt" in line)
    assert f"{records[0]['tokens'] + records[1]['tokens']:,}" in krony_row


def test_a_context_no_model_takes_is_refused_before_any_evaluation(capsys, tiny_dir, tmp_path):
    out_file = tmp_path / "eval.json"
    code, _, err = run(capsys, "eval", str(tiny_dir), str(tiny_dir), "--context", "200", "--data-dir",
                       str(SHARED_DATA), "--max-tokens", "300", "--json", str(out_file), "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "context 200 must be between 2 and the context length of" in err
    assert not out_file.exists()  # nothing was evaluated


def test_eval_json_to_stdout_on_validation(capsys, tiny_dir):
    code, out, _ = run(capsys, "eval", str(tiny_dir), "--protocol", "krony-pt", "--split", "validation",
                       "--data-dir", str(SHARED_DATA), "--max-tokens", "200", "--json", "-", "--no-progress")
    assert code == 0
    (record,) = json.loads(out)
    assert (record["split"], record["protocol"], record["task"]) == ("validation", "krony-pt", "wikitext2")


@pytest.mark.parametrize(("args", "pattern"), [
    (["--protocol", "perplexity"], "unknown protocol 'perplexity'; choose from krony-pt, hf-strided"),
    (["--tasks", "lambada", "--protocol", "word"], "task lambada has no protocol among word"),
    (["--tasks", "wikitext103", "--protocol", "krony-pt"], "wikitext-103/wiki.test.tokens: --data-dir expects"),
    (["--split", "train"], "unknown split 'train'; choose from test, validation"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--dtype", "int8"], "unknown dtype 'int8'"),
    (["--stride", "4096"], "stride 4096 must be between 1 and the context length 128"),
    (["--tasks", "lambada", "--stride", "64"], "--stride applies to the hf-strided protocol only, not "
                                                "lambada-openai"),
    (["--tasks", "lambada", "--split", "validation"], "task lambada has no validation split under "
                                                      "lambada-openai; it has one under krony-pt"),
    (["--tasks", "wikitext2,lambada", "--protocol", "lambada-openai", "--split", "validation"],
     "nothing to evaluate: task wikitext2 has no protocol among lambada-openai; it supports krony-pt, "
     "hf-strided, word; task lambada has no validation split under lambada-openai"),
])
def test_bad_inputs_give_one_line_errors(capsys, tiny_dir, args, pattern):
    code, _, err = run(capsys, "eval", str(tiny_dir), "--data-dir", str(SHARED_DATA), "--max-tokens", "200",
                       "--no-progress", *args)
    assert_one_line_error(code, err, pattern)


def test_missing_model_folder_and_tokenizer(capsys, tmp_path, tiny_dir):
    code, _, err = run(capsys, "eval", str(tmp_path / "nope"), "--data-dir", str(SHARED_DATA))
    assert_one_line_error(code, err, "does not exist")
    (tiny_dir / "vocab.json").unlink()
    code, _, err = run(capsys, "eval", str(tiny_dir), "--data-dir", str(SHARED_DATA))
    assert_one_line_error(code, err, "--tokenizer")


def test_an_interrupted_eval_keeps_the_models_already_done(capsys, tiny_dir, tmp_path, monkeypatch):
    import kronypt.eval.runner as runner

    real, calls = runner.evaluate, []

    def evaluate_then_interrupt(*args, **kwargs):
        calls.append(kwargs["model_name"])
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C during the second model
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "evaluate", evaluate_then_interrupt)
    out_file = tmp_path / "eval.json"
    second = tmp_path / "second"
    second.symlink_to(tiny_dir)
    code, _, err = run(capsys, "eval", str(tiny_dir), str(second), "--protocol", "krony-pt", "--data-dir",
                       str(SHARED_DATA), "--max-tokens", "200", "--json", str(out_file), "--no-progress")
    assert code == 130 and "interrupted" in err
    records = json.loads(out_file.read_text())
    assert [r["model"] for r in records] == [str(tiny_dir)]  # the first model's numbers survived
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_each_task_runs_under_its_own_default_protocol(capsys, tiny_dir):
    code, out, err = run(capsys, "eval", str(tiny_dir), "--tasks", "wikitext2,lambada", "--data-dir",
                         str(SHARED_DATA), "--max-tokens", "200", "--json", "-", "--no-progress")
    assert code == 0 and not _other_lines(err)
    assert [(r["task"], r["protocol"], r["metric"]) for r in json.loads(out)] == [
        ("wikitext2", "hf-strided", "perplexity"), ("lambada", "lambada-openai", "perplexity"),
        ("lambada", "lambada-openai", "accuracy")]


def test_pairs_without_the_split_are_skipped_with_one_warning(capsys, tiny_dir):
    code, out, err = run(capsys, "eval", str(tiny_dir), "--tasks", "wikitext2,lambada", "--protocol",
                         "krony-pt,lambada-openai", "--split", "validation", "--data-dir", str(SHARED_DATA),
                         "--max-tokens", "200", "--json", "-", "--no-progress")
    assert code == 0
    assert [(r["task"], r["protocol"], r["split"]) for r in json.loads(out)] == [
        ("wikitext2", "krony-pt", "validation"), ("lambada", "krony-pt", "validation")]
    (line,) = _other_lines(err)
    assert line.startswith("kronypt: warning: skipping ")
    assert "wikitext2 under lambada-openai" in line and "lambada under lambada-openai (no validation split" in line


def test_a_task_or_protocol_left_unused_is_named_in_one_warning(capsys, tiny_dir):
    code, out, err = run(capsys, "eval", str(tiny_dir), "--tasks", "wikitext2,lambada", "--protocol",
                         "hf-strided,word", "--data-dir", str(SHARED_DATA), "--max-tokens", "200", "--json", "-",
                         "--no-progress")  # used to fail: "task lambada has no protocol among hf-strided, word"
    assert code == 0
    assert {(r["task"], r["protocol"]) for r in json.loads(out)} == {("wikitext2", "hf-strided"), ("wikitext2", "word")}
    assert _other_lines(err) == [
        "kronypt: warning: skipping lambada under hf-strided (hf-strided is defined on wikitext2, wikitext103 "
        "only); lambada under word (word is defined on wikitext2, wikitext103 only)"]


def _other_lines(err: str) -> list[str]:
    """stderr's lines but the note on tiny_dir's 128-token context (krony-pt and hf-strided use 1024)."""
    return [line for line in err.splitlines() if line.strip() and "-token windows, not the 1024" not in line]


def _record_evaluations(monkeypatch) -> list[str]:
    import kronypt.eval.runner as runner

    real, calls = runner.evaluate, []

    def recording(*args, **kwargs):
        calls.append(kwargs["model_name"])
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "evaluate", recording)
    return calls


def test_every_model_is_resolved_before_the_first_evaluation(capsys, tiny_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants

    calls = _record_evaluations(monkeypatch)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # a hub id fails without retries
    common = ["--protocol", "krony-pt", "--data-dir", str(SHARED_DATA), "--max-tokens", "200", "--no-progress"]
    code, _, err = run(capsys, "eval", str(tiny_dir), "nonexist", *common)  # a hub id that cannot load
    assert_one_line_error(code, err, "cannot load config 'nonexist': not a local folder, and the hub said")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    code, _, err = run(capsys, "eval", str(tiny_dir), str(broken), *common)
    assert_one_line_error(code, err, f"cannot read {broken / 'config.json'}")
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_text((tiny_dir / "config.json").read_text())
    code, _, err = run(capsys, "eval", str(tiny_dir), str(no_tokenizer), *common)
    assert_one_line_error(code, err, "--tokenizer")
    assert calls == []  # no model was evaluated before the bad one was found
    code, _, _ = run(capsys, "eval", str(tiny_dir), *common)
    assert code == 0 and calls == [str(tiny_dir)]


def test_device_defaults_to_the_gpu_when_there_is_one(capsys, tiny_dir, monkeypatch):
    import kronypt.eval

    seen = []
    monkeypatch.setattr(kronypt.eval, "evaluate_models", lambda *args, **kwargs: seen.append(kwargs["device"]) or [])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert run(capsys, "eval", str(tiny_dir), "--json", "-")[0] == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run(capsys, "eval", str(tiny_dir), "--json", "-")[0] == 0
    assert seen == [torch.device("cuda"), torch.device("cpu")]


def test_stride_reaches_the_hf_strided_evaluation(capsys, tiny_dir):
    common = ["eval", str(tiny_dir), "--protocol", "hf-strided", "--data-dir", str(SHARED_DATA), "--max-tokens",
              "400", "--json", "-", "--no-progress"]
    code, out, err = run(capsys, *common, "--stride", "32")
    assert code == 0, err
    (record,) = json.loads(out)
    expected = evaluate(load_model(str(tiny_dir)), load_tokenizer(str(tiny_dir)), ["wikitext2"], ["hf-strided"],
                        data_dir=SHARED_DATA, stride=32, max_tokens=400, progress=False)[0]
    assert (record["protocol"], record["stride"], record["context_length"]) == ("hf-strided", 32, 128)
    assert record["tokens"] == expected.tokens
    assert record["value"] == pytest.approx(expected.value, rel=1e-6)
    # the default stride (half the context) gives another number, far outside the 1e-6 above (about 1e-3
    # relative for this near-uniform tiny model), so a stride lost on the way would fail the comparison
    code, out, err = run(capsys, *common)
    assert code == 0, err
    (default,) = json.loads(out)
    assert default["stride"] == 64 and abs(default["value"] / record["value"] - 1) > 1e-4
