"""Helpers shared by the tests/test_train_*.py files (no tests here): a tiny token folder and configs.

The token folder holds a learnable stream (rotations of one random 64-token block) over a 256-token
vocabulary, written through `kronypt.data.writer`, so a 2-block model with 32-wide embeddings shows a
falling loss within a few steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from conftest import tiny_config

from kronypt.data.writer import TokenFolderWriter
from kronypt.train import TrainConfig

VOCAB = 256
SRC = Path(__file__).resolve().parents[1] / "src"


def make_token_folder(path: Path, vocab_size: int = VOCAB, blocks: int = 200, **meta) -> Path:
    """train.bin / val.bin / meta.json with `blocks` (train) and 20 (val) rotations of a random block;
    `meta` adds meta.json entries (e.g. the tokenizer)."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, VOCAB, 64)
    train = np.concatenate([np.roll(base, k) for k in range(blocks)]).astype(np.uint16)
    val = np.concatenate([np.roll(base, 3 * k + 1) for k in range(20)]).astype(np.uint16)
    with TokenFolderWriter(path) as writer:
        writer.write("train", train)
        writer.write("val", val)
        writer.commit({"vocab_size": vocab_size, "splits": {"train": {"file": "train.bin", "tokens": len(train)},
                                                            "val": {"file": "val.bin", "tokens": len(val)}}, **meta})
    return path


def tiny_gpt2(**overrides):
    """conftest's tiny GPT-2 shrunk further: 32-wide, context 64, 256 tokens (c_fc is (128, 32))."""
    values = {"n_embd": 32, "n_positions": 64, "vocab_size": VOCAB, "bos_token_id": VOCAB - 1,
              "eos_token_id": VOCAB - 1}
    return tiny_config(**{**values, **overrides})


def write_model_config(path: Path, **overrides) -> Path:
    values = tiny_gpt2(**overrides).to_dict()
    path.write_text(json.dumps(values))
    return path


def scratch_settings(tmp: Path, **overrides) -> dict:
    """Flat settings of a short from-scratch run on the tiny folder (made under `tmp` once)."""
    data = tmp / "tokens"
    if not data.exists():
        make_token_folder(data)
    model_config = tmp / "gpt2.json"
    if not model_config.exists():
        write_model_config(model_config)
    settings = {"init_from": "scratch", "model_config": str(model_config), "data": str(data),
                "out": str(tmp / "run"), "max_steps": 8, "micro_batch_size": 2, "seq_len": 32,
                "tokens_per_step": 128, "lr": 3e-3, "log_every": 1, "eval_every": 4, "eval_batches": 2,
                "save_every": 4, "keep_last": 2, "seed": 7}
    settings.update(overrides)
    return settings


def dense_settings(tmp: Path, **overrides) -> dict:
    """Flat settings of a short run that compresses a tiny dense GPT-2 (saved under `tmp` once, seed 0) on
    the fly with A = 16x8."""
    dense = tmp / "dense"
    if not dense.exists():
        from transformers import GPT2LMHeadModel

        torch.manual_seed(0)
        GPT2LMHeadModel(tiny_gpt2()).save_pretrained(dense)
    return scratch_settings(tmp, **{"init_from": "dense", "model": str(dense), "model_config": None,
                                    "a_shape": "16x8", **overrides})


def scratch_config(tmp: Path, **overrides) -> TrainConfig:
    return TrainConfig().with_overrides(scratch_settings(tmp, **overrides))


def cli_args(settings: dict) -> list[str]:
    """`kronypt train` flags for flat settings (every setting used here has its own flag)."""
    args = []
    for key, value in settings.items():
        flag = key.replace("_", "-")
        if isinstance(value, bool):  # switches: --scalars / --no-scalars
            args.append(f"--{flag}" if value else f"--no-{flag}")
        elif value is not None:
            args += [f"--{flag}", str(value)]
    return args


def subprocess_env(threads: int) -> dict:
    """Environment for child Pythons: this checkout's sources and the test helpers importable, `threads`
    intra-op threads (the same count as this process gives bit-identical float sums)."""
    path = os.pathsep.join([str(SRC), str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=path)


def run_python(code: str) -> subprocess.Popen:
    """Start `python -c code` in the background, with this process's thread count."""
    return subprocess.Popen([sys.executable, "-c", code], env=subprocess_env(torch.get_num_threads()),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_train_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """`kronypt train ARGS` in this process: (exit code, stdout, stderr)."""
    from kronypt.cli.main import main

    try:
        main(["train", *args])
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err
