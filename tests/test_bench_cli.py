"""`kronypt bench` end to end on tiny models: JSON and table, parameter counts, ratios, one-line errors.

Rates are only checked to be positive and consistent with the ratios: nothing here asserts a timing.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers.utils import logging

from kronypt import CompressionConfig, compress_, count_params, load_model, to_dense
from tests.conftest import tiny_model
from tests.test_cli import assert_one_line_error, run

FAST = ("--prompt-tokens", "8", "--new-tokens", "3", "--repeats", "2", "--no-progress")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny dense GPT-2 folder and its compressed (Kronecker) version."""
    root = tmp_path_factory.mktemp("bench")
    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # save_pretrained's bars would land on stderr
    model = tiny_model(vocab_size=512, n_positions=64)
    model.save_pretrained(root / "dense")
    compress_(model, CompressionConfig(a_shape=(16, 8), factors=2), progress=False)
    model.save_pretrained(root / "kron")
    if was_enabled:
        logging.enable_progress_bar()
    return root


def check_rates(payload: dict) -> None:
    for key, ratio in payload["ratios"].items():
        a, b = payload["model"][key], payload["against"][key]
        assert a > 0 and b > 0 and ratio == a / b


def test_against_dense_json(capsys, folders):
    code, out, err = run(capsys, "bench", str(folders / "kron"), "--train", "--batch", "2", "--json", "-", *FAST)
    assert code == 0, err
    payload = json.loads(out)
    kron = load_model(str(folders / "kron"))
    assert payload["model"]["name"] == str(folders / "kron") and payload["against"]["name"].startswith("dense")
    assert payload["model"]["params"] == count_params(kron)
    assert payload["against"]["params"] == count_params(to_dense(kron))
    assert (payload["model"]["compressed_layers"], payload["against"]["compressed_layers"]) == (4, 0)
    assert set(payload["ratios"]) == {"params", "prefill_tokens_per_s", "decode_tokens_per_s", "train_tokens_per_s"}
    check_rates(payload)
    assert payload["logits_max_abs_diff"] < 1e-4  # to_dense: the same logits, up to float32 rounding
    assert payload["settings"] == {"batch": 2, "prompt_tokens": 8, "new_tokens": 3, "repeats": 2, "warmup": 1,
                                   "train": True, "seed": 0}
    assert payload["environment"]["device"] == "cpu" and payload["environment"]["dtype"] == "float32"


def test_against_a_folder_prints_the_table_and_writes_json(capsys, folders, tmp_path):
    out_file = tmp_path / "bench.json"
    code, out, err = run(capsys, "bench", str(folders / "kron"), "--against", str(folders / "dense"),
                         "--device", "cpu", "--json", str(out_file), *FAST)
    assert code == 0, err
    assert "prefill tokens/s" in out and "decode tokens/s" in out and "ratio" in out and "train" not in out
    assert f"wrote {out_file}" in out
    payload = json.loads(out_file.read_text())
    assert payload["against"]["name"] == str(folders / "dense")
    assert payload["against"]["params"] == count_params(load_model(str(folders / "dense")))
    assert "logits_max_abs_diff" not in payload  # another model: its logits differ
    check_rates(payload)


@pytest.mark.parametrize("args,pattern", [
    (["{kron}", "--prompt-tokens", "60", "--new-tokens", "5"], "exceed the model's context of 64"),
    (["{kron}", "--repeats", "0"], "--repeats"),
    (["{kron}", "--new-tokens", "1"], "--new-tokens"),
    (["{kron}", "--batch", "0"], "--batch"),
    (["{dense}"], "no compressed layers"),
    (["{tmp}/missing"], "does not exist"),
    (["{kron}", "--against", "{tmp}/missing"], "does not exist"),
    (["{kron}", "--dtype", "float8"], "unknown dtype"),
    (["{kron}", "--device", "tpu"], "unknown device"),
    (["{kron}", "--json", "{tmp}"], "it is a folder"),
])
def test_bad_input_gives_one_line_errors(capsys, folders, tmp_path, args, pattern):
    args = [a.format(kron=folders / "kron", dense=folders / "dense", tmp=tmp_path) for a in args]
    code, out, err = run(capsys, "bench", *args, "--no-progress")
    assert_one_line_error(code, err, pattern)
    assert out == ""


def test_help_teaches_the_options(capsys):
    code, out, _ = run(capsys, "bench", "--help")
    assert code == 0
    for word in ("--against", "--prompt-tokens", "--new-tokens", "--train", "--repeats", "--json", "prefill",
                 "median"):
        assert word in out


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_in_bfloat16(capsys, folders):
    """The CUDA paths (synchronised timing, bfloat16 by default, the fused kernels in the Kronecker model)
    give rates and the same logits as the dense counterpart up to bfloat16 rounding."""
    code, out, err = run(capsys, "bench", str(folders / "kron"), "--device", "cuda", "--train", "--batch", "2",
                         "--json", "-", *FAST)
    assert code == 0, err
    payload = json.loads(out)
    assert payload["environment"]["device"].startswith("cuda") and payload["environment"]["dtype"] == "bfloat16"
    check_rates(payload)
    assert payload["logits_max_abs_diff"] < 5e-2
