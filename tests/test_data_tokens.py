"""Reading token folders and drawing batches: checked against plain slicing of the token array."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import kronypt.data.tokens as token_files
from kronypt.data.tokens import fingerprint, open_tokens, read_meta, sample_batch, sequential_batches
from kronypt.data.writer import TokenFolderWriter
from kronypt.errors import KronyptError


def token_folder(path: Path, train: np.ndarray, val: np.ndarray) -> Path:
    """A folder as `kronypt data prepare` writes it, with the given token arrays."""
    with TokenFolderWriter(path) as writer:
        writer.write("train", train)
        writer.write("val", val)
        writer.commit({"splits": {split: {"file": f"{split}.bin", "tokens": writer.tokens[split]}
                                  for split in ("train", "val")}})
    return path


@pytest.fixture
def ramp_dir(tmp_path: Path) -> Path:
    """Token i has value i mod 50000, so any window shows where it starts."""
    return token_folder(tmp_path / "ramp", np.arange(10_000) % 50_000, np.arange(300) + 60_000)


def test_open_tokens_is_a_read_only_memmap(ramp_dir: Path) -> None:
    train = open_tokens(ramp_dir, "train")
    assert isinstance(train, np.memmap) and train.dtype == np.uint16
    np.testing.assert_array_equal(train, np.arange(10_000))
    np.testing.assert_array_equal(open_tokens(ramp_dir, "val"), np.arange(300) + 60_000)
    with pytest.raises(ValueError):
        train[0] = 1
    assert read_meta(ramp_dir)["splits"]["train"]["tokens"] == 10_000


def test_sample_batch_matches_plain_slicing(ramp_dir: Path) -> None:
    tokens = open_tokens(ramp_dir)
    batch_size, seq_len = 8, 64
    x, y = sample_batch(tokens, batch_size, seq_len, torch.Generator().manual_seed(5))
    starts = torch.randint(len(tokens) - seq_len, (batch_size,), generator=torch.Generator().manual_seed(5))
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (batch_size, seq_len)
    assert x.is_contiguous() and y.is_contiguous()
    for row, start in enumerate(starts.tolist()):
        assert x[row].tolist() == tokens[start: start + seq_len].tolist()
        assert y[row].tolist() == tokens[start + 1: start + seq_len + 1].tolist()


def test_sample_batch_resumes_from_generator_state(ramp_dir: Path) -> None:
    tokens = open_tokens(ramp_dir)
    generator = torch.Generator().manual_seed(0)
    sample_batch(tokens, 4, 32, generator)
    state = generator.get_state()
    expected = [sample_batch(tokens, 4, 32, generator) for _ in range(3)]
    resumed = torch.Generator()
    resumed.set_state(state)
    for x_ref, y_ref in expected:
        x, y = sample_batch(tokens, 4, 32, resumed)
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)


def test_every_window_start_is_drawn(ramp_dir: Path) -> None:
    tokens = open_tokens(ramp_dir)[:20]  # windows of 5 + 1 tokens can start at 0..14
    x, _ = sample_batch(tokens, 500, 5, torch.Generator().manual_seed(1))
    assert sorted(set(x[:, 0].tolist())) == list(range(15))


def test_sequential_batches_cover_the_split_in_order(ramp_dir: Path) -> None:
    tokens = open_tokens(ramp_dir, "val")  # 300 tokens: 4 windows of 64 (+1 target), tail left out
    batches = list(sequential_batches(tokens, 3, 64))
    assert [x.shape[0] for x, _ in batches] == [3, 1]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert torch.equal(x.flatten(), torch.arange(256) + 60_000)
    assert torch.equal(y.flatten(), torch.arange(1, 257) + 60_000)
    assert len(list(sequential_batches(tokens, 1, 64, max_batches=2))) == 2


def test_too_few_tokens_for_a_window(ramp_dir: Path) -> None:
    tokens = open_tokens(ramp_dir, "val")
    with pytest.raises(KronyptError, match="too few"):
        sample_batch(tokens, 2, 300, torch.Generator())
    with pytest.raises(KronyptError, match="too few"):
        next(sequential_batches(tokens, 2, 300))


def test_empty_split_is_an_empty_array(tmp_path: Path) -> None:
    folder = token_folder(tmp_path / "noval", np.arange(100), np.zeros(0, dtype=np.uint16))
    assert open_tokens(folder, "val").shape == (0,)


def test_incomplete_or_modified_folders_are_refused(ramp_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(KronyptError, match="split"):
        open_tokens(ramp_dir, "test")
    with open(ramp_dir / "train.bin", "r+b") as handle:
        handle.truncate(1000)
    with pytest.raises(KronyptError, match="does not match"):
        open_tokens(ramp_dir, "train")
    meta = (ramp_dir / "meta.json").read_text()
    for broken, message in (("{", "is not valid JSON"), ("[1, 2]", "is not a token folder's meta.json"),
                            (meta.replace('"tokens"', '"count"'), "is not a token folder's meta.json"),
                            (meta.replace('"val"', '"valid"'), "expected splits train and val"),
                            ("\xff", "is not valid JSON")):
        (ramp_dir / "meta.json").write_text(broken, encoding="latin-1")
        with pytest.raises(KronyptError, match=message):
            open_tokens(ramp_dir, "val")
    (ramp_dir / "meta.json").unlink()
    with pytest.raises(KronyptError, match="no meta.json"):
        open_tokens(ramp_dir, "val")
    with pytest.raises(FileNotFoundError):
        read_meta(tmp_path / "missing")


def test_meta_json_must_name_its_own_files_and_a_numeric_vocabulary(ramp_dir: Path) -> None:
    """`file` entries were joined to the folder as given (`../../x` and absolute paths read other files), and
    a text vocab_size failed later with a ValueError traceback."""
    meta = json.loads((ramp_dir / "meta.json").read_text())
    for split, entry, value, message in (
            ("train", "file", "../ramp/train.bin", "the train split's file '../ramp/train.bin' is not a file name"),
            ("val", "file", str(ramp_dir / "val.bin"), "the val split's file '/"),
            ("train", "file", "..", "is not a file name inside"),
            (None, "vocab_size", "50257", "vocab_size must be a positive whole number, got '50257'"),
            (None, "vocab_size", True, "vocab_size must be a positive whole number, got True"),
            (None, "vocab_size", 0, "vocab_size must be a positive whole number, got 0")):
        changed = json.loads(json.dumps(meta))
        (changed["splits"][split] if split else changed)[entry] = value
        (ramp_dir / "meta.json").write_text(json.dumps(changed))
        with pytest.raises(KronyptError, match=re.escape(message)):
            read_meta(ramp_dir)
    (ramp_dir / "meta.json").write_text(json.dumps({**meta, "vocab_size": 50257}))
    assert read_meta(ramp_dir)["vocab_size"] == 50257


def test_token_ids_are_checked_against_the_vocabulary(ramp_dir: Path) -> None:
    val = open_tokens(ramp_dir, "val")  # 60000 .. 60299
    token_files.check_token_ids(val, 60_300, "val.bin")
    with pytest.raises(KronyptError, match="^val.bin holds token id 60,299, but the model's vocabulary has 60,299 "):
        token_files.check_token_ids(val, 60_299, "val.bin")
    token_files.check_token_ids(np.empty(0, dtype=np.uint16), 1, "an empty split")


def test_the_fingerprint_names_the_text_not_where_it_came_from() -> None:
    """Same inputs and token counts: the same fingerprint, wherever the inputs and the vocabulary files lay
    (encoder.json+vocab.bpe or vocab.json+merges.txt of the same vocabulary); other inputs or counts differ."""
    meta = {"splits": {"train": {"file": "train.bin", "tokens": 900}, "val": {"file": "val.bin", "tokens": 100}},
            "val_split": {"method": "fraction", "fraction": 0.1},
            "inputs": [{"path": "/a/book.txt", "sha256": "ab" * 32, "role": "input"}],
            "tokenizer": {"folder": "/t", "files": {"encoder.json": "1" * 64, "vocab.bpe": "2" * 64}}}
    moved = {**meta, "inputs": [{**meta["inputs"][0], "path": "/b/book.txt"}],
             "tokenizer": {"folder": "/u", "files": {"vocab.json": "1" * 64, "merges.txt": "2" * 64}}}
    assert fingerprint(moved) == fingerprint(meta)
    other_text = {**meta, "inputs": [{**meta["inputs"][0], "sha256": "cd" * 32}]}
    other_split = {**meta, "splits": {**meta["splits"], "val": {"file": "val.bin", "tokens": 101}}}
    assert len({fingerprint(meta), fingerprint(other_text), fingerprint(other_split)}) == 3
