"""`kronypt eval` end to end on a local model folder and ../shared/data: table, JSON, one-line errors."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED_DATA, requires_shared

from kronypt.eval import evaluate
from kronypt.models.loading import load_model, load_tokenizer
from tests.test_cli import assert_one_line_error, run

pytestmark = requires_shared


def test_eval_writes_records_and_prints_the_table(capsys, tiny_dir, tmp_path):
    out_file = tmp_path / "eval.json"
    code, out, _ = run(capsys, "eval", str(tiny_dir), "--tasks", "wikitext2,lambada",
                       "--protocol", "krony-pt,lambada-openai", "--data-dir", str(SHARED_DATA),
                       "--max-tokens", "300", "--batch-size", "2", "--json", str(out_file), "--no-progress")
    assert code == 0
    assert "krony-pt" in out and "lambada-openai" in out and "wikitext2 ppl" in out and "lambada acc" in out
    records = json.loads(out_file.read_text())
    assert [(r["task"], r["protocol"], r["metric"]) for r in records] == [
        ("wikitext2", "krony-pt", "perplexity"), ("lambada", "krony-pt", "perplexity"),
        ("lambada", "lambada-openai", "perplexity"), ("lambada", "lambada-openai", "accuracy")]
    expected = evaluate(load_model(str(tiny_dir)), load_tokenizer(str(tiny_dir)), ["wikitext2"], ["krony-pt"],
                        data_dir=SHARED_DATA, max_tokens=300, progress=False)[0]
    assert records[0]["value"] == pytest.approx(expected.value, rel=1e-6)
    assert records[0]["model"] == str(tiny_dir) and records[0]["params"] == expected.params
    assert records[0]["split"] == "test" and records[0]["tokens"] == expected.tokens


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
