"""Checkpoints: atomic layout, keep-last-N plus best, damage detection, RNG round trip."""

from __future__ import annotations

import math
import os
import random
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train_support import tiny_gpt2
from transformers import GPT2LMHeadModel

from kronypt.errors import KronyptError
from kronypt.models import load_model
from kronypt.train.checkpoint import (
    best_checkpoint,
    best_val_loss,
    clean_partial,
    latest_checkpoint,
    list_checkpoints,
    load_state,
    restore_rng,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_index,
)


@pytest.fixture(scope="module")
def model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(tiny_gpt2(n_layer=1))


def test_keeps_the_last_n_and_the_best_and_links_them(tmp_path: Path, model: GPT2LMHeadModel) -> None:
    for step, val_loss in [(1, 3.0), (2, 2.0), (3, 2.5), (4, None), (5, 2.7)]:
        save_checkpoint(tmp_path, step, model, {"step": step, "tokens": step * 10}, val_loss, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002", "step-00000004", "step-00000005"]
    assert best_checkpoint(tmp_path).name == "step-00000002"
    assert (tmp_path / "best").resolve() == best_checkpoint(tmp_path).resolve()
    assert (tmp_path / "latest").resolve() == latest_checkpoint(tmp_path).resolve()
    model_dir, state = load_state(tmp_path / "latest")
    assert state == {"step": 5, "tokens": 50}
    reloaded = load_model(str(model_dir))
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), model.state_dict().values(),
                                                  strict=True))


def test_a_non_finite_val_loss_is_never_the_best(tmp_path: Path, model: GPT2LMHeadModel) -> None:
    save_checkpoint(tmp_path, 1, model, {"step": 1}, math.nan, keep_last=5)
    assert best_checkpoint(tmp_path) is None and best_val_loss(tmp_path) == math.inf
    save_checkpoint(tmp_path, 2, model, {"step": 2}, 3.0, keep_last=5)
    save_checkpoint(tmp_path, 3, model, {"step": 3}, math.inf, keep_last=5)
    assert best_checkpoint(tmp_path).name == "step-00000002" and best_val_loss(tmp_path) == 3.0
    assert (tmp_path / "best").resolve().name == "step-00000002"


def test_partial_folders_are_never_checkpoints(tmp_path: Path, model: GPT2LMHeadModel) -> None:
    save_checkpoint(tmp_path, 1, model, {"step": 1}, None, keep_last=1)
    partial = tmp_path / "checkpoints" / ".tmp-step-00000002-123"
    (partial / "model").mkdir(parents=True)  # what a kill in the middle of a save leaves
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000001"]
    clean_partial(tmp_path)
    assert not partial.exists()


def scribble(path: Path, offset: int | None = None) -> None:
    """Overwrite 64 bytes of `path` with random ones, the size unchanged (by default in the middle of the
    file; in a safetensors file pass an offset past its header, into the tensor data)."""
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.seek(size // 2 if offset is None else offset)
        handle.write(os.urandom(64))
    assert path.stat().st_size == size


def tensor_data_offset(path: Path) -> int:
    """Where the tensor bytes of a safetensors file start: after the 8-byte header length and the header."""
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


@pytest.mark.parametrize("damage", ["index", "weights", "state", "index-values", "inside-weights", "inside-state"])
def test_damaged_checkpoints_raise_one_clear_error(tmp_path: Path, model: GPT2LMHeadModel, damage: str) -> None:
    path = save_checkpoint(tmp_path, 1, model, {"step": 1, "tensor": torch.randn(1000)}, 2.0, keep_last=1)
    weights, state = path / "model" / "model.safetensors", path / "trainer_state.pt"
    named = {"index": "checkpoint.json", "index-values": "checkpoint.json", "weights": "model/model.safetensors",
             "inside-weights": "model/model.safetensors", "state": "trainer_state.pt",
             "inside-state": "trainer_state.pt"}[damage]
    if damage == "index":
        (path / "checkpoint.json").write_text("{")
    elif damage == "index-values":  # still valid JSON: another step's val_loss
        (path / "checkpoint.json").write_text((path / "checkpoint.json").read_text().replace('"val_loss": 2.0',
                                                                                             '"val_loss": 1.0'))
    elif damage == "weights":
        weights.write_bytes(b"short")
    elif damage == "state":
        state.write_bytes(b"x" * state.stat().st_size)
    elif damage == "inside-weights":  # the right size, a valid header: loaded without complaint before
        scribble(weights, tensor_data_offset(weights) + 256)
    else:
        scribble(state)
    with pytest.raises(KronyptError, match=f"^corrupt checkpoint {path}: .*{named}") as caught:
        load_state(path)
    assert "\n" not in str(caught.value)
    with pytest.raises(FileNotFoundError):
        load_state(tmp_path / "checkpoints" / "step-00000099")


class _Planted:
    """Unpickling it would create a file: a trainer state must never run code when it is read."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_trainer_state_holding_code_is_refused_without_running_it(tmp_path: Path, model: GPT2LMHeadModel) -> None:
    path = save_checkpoint(tmp_path, 1, model, {"step": 1}, None, keep_last=1)
    marker = tmp_path / "code-ran"
    torch.save({"step": 1, "payload": _Planted(marker)}, path / "trainer_state.pt")
    write_index(path, 1, None, None)  # as if written so: the checksums agree, only the content is hostile
    with pytest.raises(KronyptError, match=f"^corrupt checkpoint {path}: cannot read trainer_state.pt"):
        load_state(path)
    assert not marker.exists()


def test_rng_states_round_trip() -> None:
    state = rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_a_resume_on_more_ranks_gives_each_new_rank_its_own_torch_stream() -> None:
    """Resumed from a one-rank checkpoint on two ranks, both ranks used to load the one saved state and
    draw identical dropout masks."""
    torch.manual_seed(5)
    saved = [rng_state()]
    expected = torch.rand(4)

    def draws(saved: list, rank: int) -> torch.Tensor:
        restore_rng(saved, rank, seed=1, step=30)
        return torch.rand(4)

    assert torch.equal(draws(saved, 0), expected)  # the saved rank continues its own stream
    new_rank = draws(saved, 1)
    assert not torch.equal(new_rank, expected)
    assert torch.equal(draws(saved, 1), new_rank)  # derived, not random: a resume is reproducible
    assert not torch.equal(draws(saved, 2), new_rank)
    torch.manual_seed(6)
    two = [*saved, rng_state()]
    second = torch.rand(4)
    assert torch.equal(draws(two, 0), expected) and torch.equal(draws(two, 1), second)  # saved ranks: theirs


def test_checkpoint_model_folder_carries_the_tokenizer(tmp_path: Path, model: GPT2LMHeadModel) -> None:
    from conftest import TOKENIZER_DIR

    if not TOKENIZER_DIR.is_dir():
        pytest.skip("../shared/data is not present")
    from kronypt.models import load_tokenizer
    from kronypt.train.setup import tokenizer_dir

    previous = os.umask(0o027)
    try:
        final = save_checkpoint(tmp_path, 1, model, {"tokens": 0}, None, keep_last=2, tokenizer_dir=TOKENIZER_DIR)
    finally:
        os.umask(previous)
    assert load_tokenizer(str(final / "model"))("Hello world").input_ids == [15496, 995]
    # save_pretrained leaves model.safetensors at 0600; a checkpoint follows the umask like any new file
    assert {stat.S_IMODE(p.stat().st_mode) for p in final.rglob("*") if p.is_file()} == {0o640}
    # the source model's folder first, then the folder that made the token data
    config = type("C", (), {"model": str(tmp_path / "no-such-model"), "data": str(tmp_path)})()
    assert tokenizer_dir(config, {"tokenizer": {"folder": str(TOKENIZER_DIR)}}) == TOKENIZER_DIR
    assert tokenizer_dir(config, {"tokenizer": {"tiktoken": "gpt2"}}) is None
    copied = tmp_path / "tokenizer"  # one `data prepare` copied into the token folder: named relative to it
    copied.mkdir()
    for source, name in (("encoder.json", "vocab.json"), ("vocab.bpe", "merges.txt")):
        (copied / name).write_bytes((TOKENIZER_DIR / source).read_bytes())
    assert tokenizer_dir(config, {"tokenizer": {"folder": "tokenizer"}}) == copied
