"""Where the trained model comes from (any family, compressed on the fly by any size) and what of it trains."""

import pytest
import torch
from test_train_support import VOCAB, make_token_folder, scratch_settings
from transformers import LlamaConfig, LlamaForCausalLM

from kronypt.errors import KronyptError
from kronypt.nn.compressed import is_compressed_layer
from kronypt.train import TrainConfig, train
from kronypt.train.model_source import build_model, freeze_all_but


def tiny_llama_folder(path):
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64, tie_word_embeddings=True,
                         bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def llama_settings(tmp, **overrides):
    model = tmp / "llama"
    if not model.exists():
        tiny_llama_folder(model)
    return scratch_settings(tmp, **{"init_from": "dense", "model": str(model), "model_config": None,
                                    "ratio": 0.5, **overrides})


def test_a_llama_compressed_on_the_fly_by_ratio_heals_and_resumes(tmp_path):
    first = train(TrainConfig().with_overrides(llama_settings(tmp_path, max_steps=4)), progress=False)
    assert first.step == 4 and first.best_checkpoint is not None
    resumed = train(TrainConfig().with_overrides(llama_settings(tmp_path, max_steps=8)), progress=False)
    assert resumed.step == 8 and resumed.val_loss < 6.0  # ln 256 = 5.55 at the start: it learns
    model = build_model(TrainConfig().with_overrides(llama_settings(tmp_path)))
    assert type(model).__name__ == "KronyLlamaForCausalLM" and len(model.config.compressed_modules) == 6


def test_init_from_model_trains_any_model_as_it_is(tmp_path):
    settings = llama_settings(tmp_path, init_from="model", ratio=None)
    model = build_model(TrainConfig().with_overrides(settings))
    assert type(model) is LlamaForCausalLM
    with pytest.raises(KronyptError, match="is not a kronypt model .* --init-from model"):
        build_model(TrainConfig().with_overrides({**settings, "init_from": "kronypt"}))
    with pytest.raises(KronyptError, match="only appl.* to --init-from dense"):
        TrainConfig().with_overrides({**settings, "ratio": 0.5}).validate()


def test_trainable_mlp_or_compressed_freezes_the_rest(tmp_path):
    model = build_model(TrainConfig().with_overrides(llama_settings(tmp_path)))
    freeze_all_but(model, "compressed")
    assert all(p.requires_grad == is_compressed_layer(m) for m in model.modules() for p in m.parameters(recurse=False))
    assert any(p.requires_grad for p in model.parameters())
    dense = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=96, num_hidden_layers=1,
                                         num_attention_heads=4, vocab_size=VOCAB))
    freeze_all_but(dense, "mlp")
    assert {n for n, p in dense.named_parameters() if p.requires_grad} == {
        f"model.layers.0.mlp.{m}.weight" for m in ("gate_proj", "up_proj", "down_proj")}
    with pytest.raises(KronyptError, match="has no compressed layers"):
        freeze_all_but(dense, "compressed")
    data = make_token_folder(tmp_path / "data2")
    result = train(TrainConfig().with_overrides(llama_settings(tmp_path, data=str(data), out=str(tmp_path / "mlp"),
                                                               trainable="compressed", max_steps=2)), progress=False)
    assert result.step == 2
