"""`kronypt data prepare` through the real CLI entry point: results, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from kronypt.cli.main import main
from tests.conftest import SHARED_DATA, TOKENIZER_DIR, requires_shared
from tests.test_data_tokenizer import offline_tiktoken_cache

pytestmark = requires_shared

SHAKESPEARE = SHARED_DATA / "tiny-shakespeare" / "input.txt"
GUTENBERG_VAL = SHARED_DATA / "corpus" / "gutenberg" / "gutenberg_val.txt.gz"


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(["data", "prepare", *args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_prepare_prints_meta_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, stdout, _ = run_cli(["--input", str(SHAKESPEARE), "--input", str(GUTENBERG_VAL), "--val-fraction", "0.2",
                               "--tokenizer", str(TOKENIZER_DIR), "--out", str(out), "--workers", "2", "--json"],
                              capsys)
    assert code == 0
    meta = json.loads(stdout)
    assert meta == json.loads((out / "meta.json").read_text())
    assert meta["splits"]["val"]["documents"] == 1 and meta["splits"]["train"]["documents"] == 6
    assert np.fromfile(out / "train.bin", dtype=np.uint16).size == meta["splits"]["train"]["tokens"]


def test_default_tokenizer_is_tiktoken_gpt2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    offline_tiktoken_cache(tmp_path, monkeypatch)
    code, _, _ = run_cli(["--input", str(SHAKESPEARE), "--val-fraction", "0", "--out", str(tmp_path / "a")], capsys)
    assert code == 0
    run_cli(["--input", str(SHAKESPEARE), "--val-fraction", "0", "--out", str(tmp_path / "b"),
             "--tokenizer", str(TOKENIZER_DIR)], capsys)
    assert json.loads((tmp_path / "a" / "meta.json").read_text())["tokenizer"] == {"tiktoken": "gpt2"}
    assert (tmp_path / "a" / "train.bin").read_bytes() == (tmp_path / "b" / "train.bin").read_bytes()


def test_summary_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run_cli(["--input", str(SHAKESPEARE), "--val-fraction", "0", "--tokenizer", str(TOKENIZER_DIR),
                               "--out", str(tmp_path / "out")], capsys)
    assert code == 0 and "338,026" in stdout and "train" in stdout


BAD_INPUTS = {
    "missing file": (["--input", "{tmp}/missing.txt"], "does not exist"),
    "empty glob": (["--input", "{tmp}/nothing/*.txt"], "matches no file"),
    "unsupported type": (["--input", "{tmp}/notes.md"], "unsupported type"),
    "folder input": (["--input", "{tmp}"], "is a folder"),
    "no input": ([], "--input"),
    "input and dataset": (["--input", str(SHAKESPEARE), "--hf-dataset", "openwebtext"], "either"),
    "fraction and val input": (["--input", str(SHAKESPEARE), "--val-fraction", "0.1", "--val-input",
                                str(GUTENBERG_VAL)], "either"),
    "unquoted glob": (["--input", str(SHAKESPEARE), str(GUTENBERG_VAL)], "quote globs"),
    "val fraction of 1": (["--input", str(SHAKESPEARE), "--val-fraction", "1"], "must be in"),
    "non-empty out": (["--input", str(SHAKESPEARE), "--val-fraction", "0", "--out", "{tmp}"], "--force"),
    "unknown tokenizer": (["--input", str(SHAKESPEARE), "--tokenizer", "gpt9"], "tiktoken encoding"),
    "no datasets package": (["--hf-dataset", "openwebtext"], "kronypt[data]"),
    "zero workers": (["--input", str(SHAKESPEARE), "--workers", "0"], "at least 1"),
    "not utf-8": (["--input", "{tmp}/latin1.txt"], "not UTF-8"),
    "truncated gzip": (["--input", "{tmp}/cut.txt.gz"], "not a complete gzip file"),
    "bad jsonl": (["--input", "{tmp}/bad.jsonl"], "bad.jsonl:2: not valid JSON"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if the `data` extra were not installed
    (tmp_path / "notes.md").write_text("not a corpus")
    (tmp_path / "latin1.txt").write_bytes("café\n".encode("latin-1"))
    (tmp_path / "cut.txt.gz").write_bytes(GUTENBERG_VAL.read_bytes()[:5000])
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": oops}\n')
    args, expected = BAD_INPUTS[case]
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    code, stdout, stderr = run_cli(["--tokenizer", str(TOKENIZER_DIR), *args], capsys)
    assert code == 2
    assert stderr.startswith("kronypt: error: ") and stderr.count("\n") == 1, stderr
    assert expected in stderr
    assert not (tmp_path / "out" / "meta.json").exists()


def test_lopsided_or_tiny_validation_splits_warn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small, large = tmp_path / "small.txt", tmp_path / "large.txt"
    small.write_text("A few words only.\n")
    large.write_text(SHAKESPEARE.read_text()[:20_000])
    code, _, err = run_cli(["--input", str(small), "--input", str(large), "--val-fraction", "0.1", "--seed", "1",
                            "--tokenizer", str(TOKENIZER_DIR), "--out", str(tmp_path / "a")], capsys)
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert code == 0 and meta["splits"]["val"]["documents"] == 1
    lopsided = meta["splits"]["val"]["tokens"] > meta["splits"]["train"]["tokens"]
    assert ("more tokens" in err) == lopsided
    assert ("val.bin holds only" in err) == (meta["splits"]["val"]["tokens"] <= 1024)
    assert "more tokens" in err or "val.bin holds only" in err  # one of the two documents is held out
    code, _, err = run_cli(["--input", str(SHAKESPEARE), "--val-fraction", "0.1", "--tokenizer", str(TOKENIZER_DIR),
                            "--out", str(tmp_path / "b")], capsys)
    assert code == 0 and "warning" not in err  # 33,803 validation tokens of 338,026
    blank = tmp_path / "blank.txt"
    blank.write_text("\n")  # one newline: a 2-token training split, nothing a window fits in
    code, _, err = run_cli(["--input", str(blank), "--val-fraction", "0", "--tokenizer", str(TOKENIZER_DIR),
                            "--out", str(tmp_path / "c")], capsys)
    assert code == 0 and "train.bin holds only 2 tokens" in err
