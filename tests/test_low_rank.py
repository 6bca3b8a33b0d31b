"""LowRankLinear against dense references, and low-rank compression of whole models (save, load, export)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, LlamaForCausalLM

import kronypt
from kronypt import CompressionConfig, compress_, count_params, to_dense
from kronypt.errors import KronyptError
from kronypt.nn.low_rank import LowRankLinear, truncated_svd
from tests.conftest import tiny_llama, tiny_model

IDS = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(0))


@settings(max_examples=25, deadline=None)
@given(out=st.integers(1, 12), inp=st.integers(1, 12), data=st.data())
def test_forward_and_gradients_match_a_dense_linear(out, inp, data):
    rank = data.draw(st.integers(1, min(out, inp)))
    layer = LowRankLinear(inp, out, rank, dtype=torch.float64)
    x = torch.randn(3, inp, dtype=torch.float64, requires_grad=True)
    W = layer.dense_weight()
    torch.testing.assert_close(layer(x), x @ W.T + layer.bias, rtol=1e-12, atol=1e-12)
    layer(x).square().sum().backward()
    grad_x = x.grad.clone()
    x.grad = None
    (x @ (layer.U @ layer.V).T + layer.bias).square().sum().backward()
    torch.testing.assert_close(grad_x, x.grad, rtol=1e-12, atol=1e-12)
    assert LowRankLinear.params(out, inp, rank) == sum(p.numel() for p in (layer.U, layer.V))


def test_truncated_svd_is_the_best_rank_r_approximation():
    W = torch.randn(10, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    U, V = truncated_svd(W, 3)
    S = torch.linalg.svdvals(W)
    assert float((W - U @ V).norm()) == pytest.approx(float(S[3:].square().sum().sqrt()), rel=1e-10)


def test_bad_ranks_are_refused():
    with pytest.raises(KronyptError, match="between 1 and 4"):
        LowRankLinear(4, 8, 5)
    with pytest.raises(KronyptError, match="no smaller than it"):
        compress_(tiny_llama(), CompressionConfig(method="low-rank", rank=64), progress=False)
    with pytest.raises(KronyptError, match="--rank sizes low-rank factors"):
        CompressionConfig(rank=4)


def test_counts_follow_the_rank_and_conv1d_weights_are_transposed():
    model = tiny_llama()
    report = compress_(model, CompressionConfig(method="low-rank", rank=40), progress=False)
    assert report.params_before - report.params_after == 6 * (192 * 64 - 40 * (192 + 64))
    assert all(m.method == "low-rank" and m.rank == 40 for m in report.matrices)
    gpt2 = tiny_model()
    weight = gpt2.transformer.h[0].mlp.c_fc.weight.detach().T.double()  # Conv1D stores (in, out)
    compress_(gpt2, CompressionConfig(method="low-rank", rank=16), progress=False)
    U, V = truncated_svd(weight, 16)
    torch.testing.assert_close(gpt2.transformer.h[0].mlp.c_fc.dense_weight().double(), U @ V, rtol=1e-5, atol=1e-6)


def test_low_rank_matches_a_kronecker_size_as_nearly_as_it_can():
    kron = compress_(tiny_llama(), CompressionConfig(a_shape=(96, 32), factors=2), progress=False)
    low = compress_(tiny_llama(), CompressionConfig(method="low-rank", a_shape=(96, 32), factors=2), progress=False)
    per_matrix = kron.matrices[0].params  # 2 * (96 * 32 + 2 * 2) = 6,152; (192 + 64) * r: r = 24 gives 6,144
    assert low.matrices[0].rank == 24 and abs(low.matrices[0].params - per_matrix) <= (192 + 64) // 2
    half = compress_(tiny_llama(), CompressionConfig(method="low-rank", ratio=0.5), progress=False)
    assert half.matrices[0].rank == round(0.5 * 192 * 64 / 256)


def test_save_load_identical_logits_and_dense_export(tmp_path):
    model = tiny_llama()
    compress_(model, CompressionConfig(method="low-rank", ratio=0.25, layers=[1]), progress=False)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is kronypt.KronyLlamaForCausalLM and count_params(loaded) == count_params(model)
    assert torch.equal(loaded(IDS).logits, model(IDS).logits)
    assert kronypt.load_model(tmp_path).config.compressed_modules["model.layers.1.mlp.up_proj"]["rank"] == 12
    dense = to_dense(loaded)
    assert type(dense) is LlamaForCausalLM
    torch.testing.assert_close(dense(IDS).logits, model(IDS).logits, rtol=1e-4, atol=1e-5)


def test_factors_a_checkpoint_lacks_are_initialised_with_the_models_range(tmp_path):
    """transformers' own loader fills missing weights (kronypt's refuses them): low-rank factors get entries
    whose product has the model's initializer_range."""
    from safetensors.torch import load_file, save_file

    model = tiny_llama(initializer_range=0.05)
    compress_(model, CompressionConfig(method="low-rank", rank=32), progress=False)
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    for name in ("U", "V"):
        del state[f"model.layers.0.mlp.gate_proj.{name}"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    product = loaded.model.layers[0].mlp.gate_proj.dense_weight()
    assert product.std().item() == pytest.approx(0.05, rel=0.15)
    assert torch.equal(loaded.model.layers[1].mlp.gate_proj.U, model.model.layers[1].mlp.gate_proj.U)


def test_a_bfloat16_model_keeps_its_dtype():
    model = tiny_llama().to(torch.bfloat16)
    compress_(model, CompressionConfig(method="low-rank", ratio=0.5), progress=False)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model(IDS).logits.dtype == torch.bfloat16
