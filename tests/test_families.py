"""Model families: detection, and the Llama family end to end in memory (GPT-2's is in test_models.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    BertConfig,
    BertLMHeadModel,
    LlamaForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
)

import kronypt
from kronypt import CompressionConfig, KroneckerLinear, compress_, count_params, to_dense
from kronypt.errors import KronyptError
from kronypt.models.families import FAMILIES, family_of, mlp_layout
from kronypt.models.schemes import config_size, plan_row
from tests.conftest import tiny_llama, tiny_llama_config, tiny_model

IDS = torch.randint(0, 50257, (2, 24), generator=torch.Generator().manual_seed(0))
REPO = Path(__file__).resolve().parents[1]


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_families_are_found_by_their_module_names():
    assert family_of(tiny_model()).name == "gpt2"
    assert family_of(tiny_llama()).name == "llama"
    layout = mlp_layout(tiny_llama())
    assert (layout.blocks, layout.hidden, layout.inner) == (2, 64, 192)
    assert [s.path for s in layout.sites([1])] == [f"model.layers.1.mlp.{m}" for m in ("gate_proj", "up_proj",
                                                                                        "down_proj")]
    assert [(s.out_features, s.in_features) for s in layout.sites([0])] == [(192, 64), (192, 64), (64, 192)]


def test_every_family_names_its_matrices_once():
    for family in FAMILIES:
        assert len(set(family.matrices)) == len(family.matrices) and family.widening and family.narrowing


@pytest.mark.parametrize("model", [
    BertLMHeadModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                               vocab_size=100, is_decoder=True)),
    Phi3ForCausalLM(Phi3Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                               vocab_size=100, pad_token_id=0)),  # fused gate_up_proj
], ids=["bert", "phi3-fused-gate-up"])
def test_an_unsupported_family_is_refused_naming_the_supported_ones(model):
    with pytest.raises(KronyptError, match="supported families: GPT-2.*Llama-style") as caught:
        compress_(model, CompressionConfig(ratio=0.5), progress=False)
    assert "\n" not in str(caught.value)


def test_exact_factors_keep_the_logits_and_down_uses_the_transposed_shapes():
    model = tiny_llama()
    before = model(IDS).logits
    # gate/up (192, 64) with A 64x64 have B 3x1: three terms represent any matrix exactly.
    report = compress_(model, CompressionConfig(a_shape=(64, 64), factors=3), progress=False)
    mlp = model.model.layers[0].mlp
    assert all(isinstance(getattr(mlp, m), KroneckerLinear) for m in ("gate_proj", "up_proj", "down_proj"))
    assert (mlp.gate_proj.shape.a_shape, mlp.gate_proj.shape.b_shape) == ((64, 64), (3, 1))
    assert (mlp.down_proj.shape.a_shape, mlp.down_proj.shape.b_shape) == ((64, 64), (1, 3))
    assert mlp.gate_proj.bias is None  # Llama's MLP has none
    assert rel(model(IDS).logits, before) < 1e-5
    assert max(m.rel_error for m in report.matrices) < 1e-6


def test_parameter_count_equals_the_plan_and_embeddings_stay_tied():
    model = tiny_llama()
    report = compress_(model, CompressionConfig(a_shape=(96, 32), factors=2, scalars=True), progress=False)
    row = plan_row(config_size(tiny_llama_config()), (96, 32), 2, scalars=True)
    assert report.params_after == count_params(model) == row.model_params
    assert len(report.matrices) == 6
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_save_load_identical_logits_generate_and_dense_export(tmp_path):
    model = tiny_llama()
    compress_(model, CompressionConfig(ratio=0.5, scalars=True), progress=False)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.scalars.fill_(-2.5)
    model.save_pretrained(tmp_path / "k")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "k").eval()
    assert type(loaded) is kronypt.KronyLlamaForCausalLM
    assert torch.equal(loaded(IDS).logits, model(IDS).logits)
    assert count_params(loaded) == count_params(model)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    out = loaded.generate(IDS[:1, :5], max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 9) and torch.equal(out, model.generate(IDS[:1, :5], max_new_tokens=4, do_sample=False,
                                                                   pad_token_id=0))
    body = AutoModel.from_pretrained(tmp_path / "k").eval()
    assert torch.equal(body(IDS).last_hidden_state, model.model(IDS).last_hidden_state)

    dense = to_dense(loaded)
    assert type(dense) is LlamaForCausalLM and dense.config.model_type == "llama"
    assert rel(dense(IDS).logits, model(IDS).logits) < 1e-5
    assert dense.lm_head.weight is dense.model.embed_tokens.weight
    dense.save_pretrained(tmp_path / "dense")
    torch.save(model(IDS).logits.detach(), tmp_path / "expected.pt")
    # the exported folder loads with transformers alone (no kronypt imported), tied, with the same logits
    script = ("import sys, torch; from transformers import AutoModelForCausalLM; "
              "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval(); "
              "assert 'kronypt' not in sys.modules and type(m).__name__ == 'LlamaForCausalLM'; "
              "assert m.lm_head.weight is m.model.embed_tokens.weight; "
              "ids = torch.tensor(eval(sys.argv[3])); e = torch.load(sys.argv[2]); "
              "r = ((m(ids).logits - e).norm() / e.norm()).item(); assert r < 1e-5, r; print('ok')")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "dense"), str(tmp_path / "expected.pt"),
                           str(IDS.tolist())], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_llama_modules_and_layers_select_matrices():
    model = tiny_llama()
    compress_(model, CompressionConfig(a_shape=(96, 32), layers=[1], modules="up_proj,down_proj"), progress=False)
    assert set(model.config.compressed_modules) == {"model.layers.1.mlp.up_proj", "model.layers.1.mlp.down_proj"}
    assert type(model.model.layers[1].mlp.gate_proj).__name__ == "Linear"
    with pytest.raises(KronyptError, match=r"unknown MLP modules \['c_fc'\].*gate_proj, up_proj, down_proj"):
        compress_(tiny_llama(), CompressionConfig(a_shape=(96, 32), modules="c_fc"), progress=False)


def test_a_shape_that_does_not_divide_a_llama_matrix_suggests_plan():
    with pytest.raises(KronyptError, match="does not divide.*kronypt plan MODEL"):
        compress_(tiny_llama(), CompressionConfig(a_shape=(768, 768)), progress=False)


def test_ratio_and_target_params_pick_a_scheme_for_llama():
    size = config_size(tiny_llama_config())
    model = tiny_llama()
    report = compress_(model, CompressionConfig(ratio=0.25), progress=False)
    assert abs(report.matrices[0].params / report.matrices[0].dense_params - 0.25) < 0.01
    target = size.dense_params - 40_000
    report = compress_(tiny_llama(), CompressionConfig(target_params=target), progress=False)
    assert report.params_after <= target


@pytest.mark.parametrize("scalars", [False, True])
def test_a_gated_mlp_of_vector_b_factors_runs_as_one_path_with_the_same_function(scalars):
    """gate/up A (96, 64) ⊗ b (2, 1), down A (64, 96) ⊗ b (1, 2): the MLP takes `gated_vector_b`, equal to its
    layers run one by one (float64), gradients included; a layer forced onto another path falls back."""
    model = tiny_llama().double()
    compress_(model, CompressionConfig(a_shape=(96, 64), scalars=scalars), progress=False)
    mlp = model.model.layers[0].mlp
    assert type(mlp).__name__ == "KroneckerGatedLlamaMLP"
    if scalars:
        with torch.no_grad():
            for layer in (mlp.gate_proj, mlp.up_proj, mlp.down_proj):
                layer.scalars.uniform_(0.5, 2.0)
    x = torch.randn(3, 300, 64, dtype=torch.float64, requires_grad=True)
    fast = mlp(x)
    fast.square().sum().backward()
    fast_grads = [x.grad.clone(), mlp.gate_proj.A.grad.clone(), mlp.down_proj.B.grad.clone()]
    for p in (x, mlp.gate_proj.A, mlp.down_proj.B):
        p.grad = None
    ref = mlp.down_proj(mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x))
    ref.square().sum().backward()
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    for got, want in zip(fast_grads, [x.grad, mlp.gate_proj.A.grad, mlp.down_proj.B.grad], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    mlp.up_proj.path = "materialised"
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), ref, rtol=1e-10, atol=1e-12)
