"""Shared fixtures: tiny GPT-2 models saved like hub checkpoints, the offline data folder, and the modules of
benchmarks/ that tests check."""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as transformers_logging

# Fixtures save models before any `kronypt` command has run (which turns these off for the CLI): without
# this, transformers' "Writing model shards" bars land in the stderr that one-line-error tests capture,
# depending on which test happens to run first.
transformers_logging.disable_progress_bar()

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TOKENIZER_DIR = SHARED_DATA / "gpt2-tokenizer"


def tiny_config(**overrides) -> GPT2Config:
    """A 2-block GPT-2 with the real vocabulary: c_fc is (256, 64)."""
    values = {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 128, "vocab_size": 50257}
    values.update(overrides)
    return GPT2Config(**values)


def tiny_model(seed: int = 0, **overrides) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(tiny_config(**overrides)).eval()


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    """A saved tiny dense GPT-2 folder with the GPT-2 tokenizer files (as vocab.json + merges.txt)."""
    path = tmp_path / "tiny-gpt2"
    tiny_model().save_pretrained(path)
    if TOKENIZER_DIR.is_dir():
        shutil.copy(TOKENIZER_DIR / "encoder.json", path / "vocab.json")
        shutil.copy(TOKENIZER_DIR / "vocab.bpe", path / "merges.txt")
    return path


requires_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")


def benchmark_module(name: str) -> ModuleType:
    """A module of benchmarks/ ("sweep", "kernel_tools.sass", ...), imported as the scripts import each
    other: with benchmarks/ first on sys.path."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)
