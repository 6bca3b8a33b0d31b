import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

import kronypt
from kronypt import CompressionConfig, KroneckerLinear, KronyGPT2LMHeadModel, compress_, count_params, to_dense
from kronypt.errors import KronyptError
from kronypt.models.schemes import config_size, plan_row
from tests.conftest import tiny_config, tiny_model

IDS = torch.randint(0, 50257, (2, 24), generator=torch.Generator().manual_seed(0))


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_conv1d_orientation_with_exact_factors_keeps_the_logits():
    model = tiny_model()
    before = model(IDS).logits
    # B is 4x1 for c_fc (256, 64) and 1x4 for c_proj: 4 terms represent any matrix exactly.
    compress_(model, CompressionConfig(a_shape=(64, 64), factors=4), progress=False)
    assert isinstance(model.transformer.h[0].mlp.c_fc, KroneckerLinear)
    assert model.transformer.h[0].mlp.c_proj.shape.a_shape == (64, 64)
    assert rel(model(IDS).logits, before) < 1e-5


def test_report_and_parameter_count_match_the_plan():
    model = tiny_model()
    report = compress_(model, CompressionConfig(a_shape=(16, 8), scalars=True), progress=False)
    assert report.params_before == 3_324_736
    planned = plan_row(config_size(tiny_config()), (16, 8), 1, True).model_params
    assert report.params_after == count_params(model) == planned
    assert [m.name for m in report.matrices] == [f"transformer.h.{i}.mlp.{n}" for i in (0, 1)
                                                 for n in ("c_fc", "c_proj")]
    assert all(0 < m.rel_error < 1 for m in report.matrices)
    assert model.transformer.wte.weight is model.lm_head.weight


def test_gpt2_124m_config_compressed_to_81M_has_exactly_the_planned_size():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config())
    report = compress_(model, CompressionConfig.from_scheme("81M"), progress=False)
    assert report.params_before == 124_439_808
    assert count_params(model) == 81_972_576
    compress_more = GPT2LMHeadModel(GPT2Config(n_layer=1))
    compress_(compress_more, CompressionConfig.from_scheme("92M-4", scalars=True, init="random"), progress=False)
    planned = plan_row(config_size(GPT2Config(n_layer=1)), (1024, 256), 4, True).model_params
    assert count_params(compress_more) == planned


def test_save_and_load_give_identical_logits_and_generate_works(tmp_path):
    model = tiny_model()
    compress_(model, CompressionConfig(a_shape=(16, 8), factors=2, scalars=True), progress=False)
    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.scalars.copy_(torch.tensor([3.0, -1.5]))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is KronyGPT2LMHeadModel
    assert torch.equal(loaded(IDS).logits, model(IDS).logits)
    assert count_params(loaded) == count_params(model)
    assert loaded.transformer.wte.weight.data_ptr() == loaded.lm_head.weight.data_ptr()
    out = loaded.generate(IDS[:1, :5], max_new_tokens=4, do_sample=False, pad_token_id=0)
    ref = model.generate(IDS[:1, :5], max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 9) and torch.equal(out, ref)


def test_to_dense_is_a_plain_gpt2_with_the_same_logits(tmp_path):
    model = tiny_model()
    compress_(model, CompressionConfig(a_shape=(32, 16), factors=2, scalars=True), progress=False)
    dense = to_dense(model)
    assert type(dense) is GPT2LMHeadModel and dense.config.model_type == "gpt2"
    assert rel(dense(IDS).logits, model(IDS).logits) < 1e-5
    dense.save_pretrained(tmp_path)
    reloaded = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert rel(reloaded(IDS).logits, model(IDS).logits) < 1e-5
    assert reloaded.transformer.wte.weight.data_ptr() == reloaded.lm_head.weight.data_ptr()


def test_chosen_layers_and_modules_only():
    model = tiny_model()
    compress_(model, CompressionConfig(a_shape=(16, 8), layers=[1], modules=["c_fc"]), progress=False)
    kinds = {n: type(m).__name__ for n, m in model.named_modules() if n.endswith(("c_fc", "c_proj"))}
    assert kinds["transformer.h.1.mlp.c_fc"] == "KroneckerLinear"
    assert kinds["transformer.h.0.mlp.c_fc"] == kinds["transformer.h.1.mlp.c_proj"] == "Conv1D"
    # A second call compresses more of the same model and keeps the first layers' map.
    compress_(model, CompressionConfig(a_shape=(16, 8), layers=[0]), progress=False)
    assert set(model.config.compressed_modules) == {"transformer.h.1.mlp.c_fc", "transformer.h.0.mlp.c_fc",
                                              "transformer.h.0.mlp.c_proj"}


def test_prune_scheme_keeps_even_columns_of_c_fc():
    model = tiny_model()
    w = model.transformer.h[0].mlp.c_fc.weight.detach().T.clone()  # (256, 64)
    compress_(model, CompressionConfig(a_shape=(256, 32), init="prune"), progress=False)
    layer = model.transformer.h[0].mlp.c_fc
    torch.testing.assert_close(layer.A[0], w[:, 0::2])
    for spelling in ("96M-prune", "96m-prune", "96M prune"):  # the scheme's init follows any accepted spelling
        assert CompressionConfig.from_scheme(spelling).init == "prune"


def test_bad_inputs_are_refused():
    model = tiny_model()
    with pytest.raises(KronyptError, match="does not divide"):
        compress_(model, CompressionConfig(a_shape=(768, 768)), progress=False)
    with pytest.raises(KronyptError, match="out of range"):
        compress_(model, CompressionConfig(a_shape=(16, 8), layers=[5]), progress=False)
    with pytest.raises(KronyptError, match="unknown init"):
        CompressionConfig(a_shape=(16, 8), init="svd")
    with pytest.raises(KronyptError, match="causal LM"):
        compress_(torch.nn.Linear(2, 2), CompressionConfig(a_shape=(16, 8)))
    with pytest.raises(KronyptError, match="pair of integers"):
        CompressionConfig(a_shape=64)
    with pytest.raises(KronyptError, match="factors must be an integer"):
        CompressionConfig(a_shape=(16, 8), factors=2.0)
    with pytest.raises(KronyptError, match="got GPT2Model"):
        to_dense(model.transformer)
    compress_(model, CompressionConfig(a_shape=(16, 8)), progress=False)
    with pytest.raises(KronyptError, match="already compressed"):
        compress_(model, CompressionConfig(a_shape=(16, 8)), progress=False)


def test_modules_may_be_spelled_as_the_cli_does():
    import numpy as np

    assert CompressionConfig(a_shape=np.array([16, 8]), factors=np.int64(2)).factors == 2
    assert CompressionConfig(a_shape=(16, 8), modules="c_fc").modules == ("c_fc",)
    assert CompressionConfig(a_shape=(16, 8), modules="c_proj, c_fc").modules == ("c_proj", "c_fc")


@pytest.mark.parametrize("selection", [{"layers": [0]}, {"modules": ["c_fc"]}, {}])
def test_target_params_counts_only_the_matrices_compressed(selection):
    """With layers/modules only some matrices are compressed; the others stay dense and count in full, so
    the scheme picked for a target is smaller than the one for every matrix, and the model stays within it."""
    config = tiny_config()
    dense = count_params(GPT2LMHeadModel(config))
    target = dense - 25_000  # two of the four 256 x 64 matrices can save at most 2 x 16,384
    model = GPT2LMHeadModel(config)
    report = compress_(model, CompressionConfig(target_params=target, **selection), progress=False)
    assert report.params_after <= target
    everything = compress_(GPT2LMHeadModel(config), CompressionConfig(target_params=target), progress=False)
    if selection:  # fewer matrices must each save more
        size = config_size(config)
        per_matrix = plan_row(size, report.a_shape, 1).params_per_matrix
        assert per_matrix < plan_row(size, everything.a_shape, 1).params_per_matrix


def test_missing_kronecker_weights_are_initialised_not_garbage(tmp_path):
    from safetensors.torch import load_file, save_file

    model = tiny_model()
    compress_(model, CompressionConfig(a_shape=(16, 8), scalars=True), progress=False)
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["transformer.h.0.mlp.c_fc.scalars"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(loaded.transformer.h[0].mlp.c_fc.scalars, torch.ones(1))
    assert torch.equal(loaded.transformer.h[0].mlp.c_fc.A, model.transformer.h[0].mlp.c_fc.A)


def test_top_level_api_is_registered():
    from transformers import AutoConfig

    assert type(AutoConfig.for_model("kronypt", base_model_type="gpt2")) is kronypt.KronyGPT2Config
    assert type(AutoConfig.for_model("kronypt", base_model_type="llama")) is kronypt.KronyLlamaConfig


def test_hidden_states_are_returned_after_compress_and_after_loading(tmp_path):
    model = tiny_model()
    dense_out = model(IDS, output_hidden_states=True)
    compress_(model, CompressionConfig(a_shape=(64, 64), factors=4), progress=False)
    out = model(IDS, output_hidden_states=True)
    assert len(out.hidden_states) == len(dense_out.hidden_states) == 3
    assert rel(out.hidden_states[-1], dense_out.hidden_states[-1]) < 1e-5
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert len(loaded(IDS, output_hidden_states=True).hidden_states) == 3
    assert loaded(IDS, labels=IDS).loss is not None


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_compress_in_memory_keeps_the_attention_masks(tmp_path, attn):
    """A model compressed in memory masks like the same model reloaded: padding and causality (both were lost
    when the config was rebuilt without its attention implementation), and set_attn_implementation still
    reaches the blocks. The config the dense model was built from is left a plain GPT2Config."""
    config = tiny_config(attn_implementation=attn)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    sibling = GPT2LMHeadModel(config)
    compress_(model, CompressionConfig(a_shape=(64, 32)), progress=False)
    assert model.config._attn_implementation == attn and sibling.config.__class__ is GPT2Config
    assert all(block.attn.config is model.config for block in model.transformer.h)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation=attn).eval()
    mask = torch.ones_like(IDS)
    mask[0, :3] = 0  # left padding
    with torch.no_grad():
        ours, ref = model(IDS, attention_mask=mask).logits, reloaded(IDS, attention_mask=mask).logits
        assert torch.equal(ours[mask.bool()], ref[mask.bool()])
        changed = IDS.clone()
        changed[:, -1] = (changed[:, -1] + 1) % 50257
        assert torch.equal(model(IDS).logits[:, :-1], model(changed).logits[:, :-1])  # nothing sees the future
        assert torch.allclose(to_dense(model)(IDS, attention_mask=mask).logits[mask.bool()], ours[mask.bool()],
                              atol=1e-5)
    model.set_attn_implementation("eager")
    assert len(model(IDS, output_attentions=True).attentions) == 2


FUSED_MLP_SCRIPT = r"""
import torch
import kronypt.nn.kronecker_linear as kl
from kronypt import CompressionConfig, compress_
from tests.conftest import tiny_model

calls = []
fused = kl.kron_linear_fused
kl.kron_linear_fused = lambda *a, **k: calls.append((k.get("activation"), k.get("impl"))) or fused(*a, **k)
model = tiny_model()  # eval mode: no dropout; gradients still flow
compress_(model, CompressionConfig(a_shape=(64, 64), scalars=True), progress=False)
ids = torch.randint(0, 50257, (2, 24), generator=torch.Generator().manual_seed(0))
results = {}
for path, impl in (("materialised", "auto"), ("fused", "auto"), ("fused", "general")):
    model.zero_grad()
    for block in model.transformer.h:
        block.mlp.c_fc.path = path
        block.mlp.c_fc.fused_impl = impl
    out = model(ids, labels=ids)
    out.loss.backward()
    results[path, impl] = (out.logits.detach(), model.transformer.h[0].mlp.c_fc.A.grad.clone())
# one fused call per block with GELU inside the kernel, on the implementation the layer asks for
assert calls == [("gelu_new", "auto")] * 2 + [("gelu_new", "general")] * 2, calls
for impl in ("auto", "general"):
    torch.testing.assert_close(results["fused", impl][0], results["materialised", "auto"][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(results["fused", impl][1], results["materialised", "auto"][1], rtol=1e-3, atol=1e-5)
print("ok")
"""


def test_mlp_fuses_gelu_into_c_fc_on_the_fused_path():
    """Under Triton's interpreter (a subprocess: the variable must be set before the kernels load)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", FUSED_MLP_SCRIPT], env=env, cwd=repo, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


COMPILED_DECODE_SCRIPT = r"""
import warnings
import torch
import kronypt.nn.kronecker_linear as kl
from kronypt import CompressionConfig, compress_
from kronypt.nn import KroneckerLinear
from tests.conftest import tiny_model

model = tiny_model()
compress_(model, CompressionConfig(a_shape=(64, 64)), progress=False)
ids = torch.randint(0, 1000, (1, 8), generator=torch.Generator().manual_seed(0))
ref = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)  # plain paths, eager
for module in model.modules():
    if isinstance(module, KroneckerLinear):
        module.path = "fused"
calls = []
fused = kl.kron_linear_fused
kl.kron_linear_fused = lambda *a, **k: calls.append(1) or fused(*a, **k)
model.forward = torch.compile(model.forward, fullgraph=True, dynamic=False)  # no graph break allowed
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = model.generate(ids, max_new_tokens=4, do_sample=False, cache_implementation="static", pad_token_id=0)
assert calls, "the fused kernels did not run"
assert torch.equal(out, ref), (out, ref)
assert not [w for w in caught if "lru_cache" in str(w.message)], [str(w.message) for w in caught]
print("ok")
"""


def test_generate_with_static_cache_under_torch_compile_on_the_fused_path():
    """The decode path a GPU captures in CUDA graphs: `generate` with a static KV cache and the model's
    forward compiled with fullgraph=True (no graph break around the fused operators), on the fused
    kernels (Triton's interpreter here), gives the eager plain-path tokens."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton")
    repo = Path(__file__).resolve().parents[1]
    path = os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))  # tests/ and the source
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, "-c", COMPILED_DECODE_SCRIPT], env=env, cwd=repo,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_mlp_is_plain_gpt2_off_the_fused_path():
    model = tiny_model()
    compress_(model, CompressionConfig(a_shape=(64, 64)), progress=False)
    mlp = model.transformer.h[0].mlp
    assert type(mlp).__name__ == "KroneckerGPT2MLP" and mlp.fused_activation == "gelu_new"
    x = torch.randn(2, 5, 64)
    torch.testing.assert_close(mlp(x), mlp.c_proj(mlp.act(mlp.c_fc(x))))


def _entry_std(layer):
    from kronypt.math.decompose import kron_reconstruct

    return kron_reconstruct(layer.A.detach().double(), layer.B.detach().double()).std().item()


@pytest.mark.parametrize("factors", [1, 4])
def test_fresh_kronecker_factors_spread_like_gpt2_weights(tmp_path, factors):
    """W = sum_i A_i (x) B_i with A, B ~ N(0, sqrt(r / sqrt(k))^2): each term's entries have std r / sqrt(k) and
    the k independent terms sum to std r, GPT-2's init range (0.02 for a bare layer, `initializer_range` when the
    model initialises the layer). W's entries share factors, so the sample variance ||W||^2 / N fluctuates by
    about sqrt((2/(m1 n1) + 2/(m2 n2)) / k) relative: with A and B of 2048 entries each that is <= 4.5%, so its
    root is within about 2.2% (1 sigma); the 12% tolerance is over 5 sigma, and misses a lost sqrt(k) (factor 2
    at k = 4) or the wrong range (0.02 against 0.05) by far."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    layer = KroneckerLinear(1024, 4096, (64, 32), factors)  # B is 64x32
    assert _entry_std(layer) == pytest.approx(0.02, rel=0.12)

    base = GPT2Config(n_layer=1, n_embd=1024, n_head=4, n_positions=16, vocab_size=256, bos_token_id=255,
                      eos_token_id=255, initializer_range=0.05)
    model = GPT2LMHeadModel(base)
    compress_(model, CompressionConfig(a_shape=(64, 32), factors=factors, init="random"), progress=False)
    assert _entry_std(model.transformer.h[0].mlp.c_proj) == pytest.approx(0.05, rel=0.12)  # the model's range
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    for name in ("A", "B"):  # the checkpoint lacks the c_fc factors: the model's `_init_weights` makes them
        del state[f"transformer.h.0.mlp.c_fc.{name}"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    fc = loaded.transformer.h[0].mlp.c_fc
    assert (fc.factors, fc.A.shape, fc.B.shape) == (factors, (factors, 64, 32), (factors, 64, 32))
    assert _entry_std(fc) == pytest.approx(0.05, rel=0.12)
    assert torch.equal(loaded.transformer.h[0].mlp.c_proj.A, model.transformer.h[0].mlp.c_proj.A)  # loaded
    fresh = KronyGPT2LMHeadModel(loaded.config)  # built from a config: its init range, as its dense weights
    for module in ("c_fc", "c_proj"):
        assert _entry_std(getattr(fresh.transformer.h[0].mlp, module)) == pytest.approx(0.05, rel=0.12)


def test_auto_model_and_sequence_classification_load_a_kronypt_folder(tmp_path):
    """AutoModel gives the compressed body (the LM's hidden states exactly); AutoModelForSequenceClassification
    the same body under a new score head, which saves and reloads with identical logits."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    model = tiny_model()
    compress_(model, CompressionConfig(a_shape=(64, 32), factors=2, scalars=True), progress=False)
    model.save_pretrained(tmp_path / "lm")
    with torch.no_grad():
        expected = model.transformer(IDS).last_hidden_state
        body = AutoModel.from_pretrained(tmp_path / "lm").eval()
        assert type(body).__name__ == "KronyGPT2Model"
        assert isinstance(body.h[0].mlp.c_fc, KroneckerLinear)
        assert torch.equal(body(IDS).last_hidden_state, expected)
        classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path / "lm", num_labels=3).eval()
        assert torch.equal(classifier.transformer(IDS).last_hidden_state, expected)
        logits = classifier(IDS[:1]).logits
        assert logits.shape == (1, 3) and torch.isfinite(logits).all()
        classifier.save_pretrained(tmp_path / "cls")
        again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "cls").eval()
        assert torch.equal(again(IDS[:1]).logits, logits)


def test_target_params_counts_matrices_compressed_before_as_they_are():
    """A model whose c_fc is already compressed, sized for c_proj only: its c_fc counts as compressed, not
    dense, so a target only reachable that way is met (it was refused), and the pick is the largest that fits."""
    model = tiny_model()
    compress_(model, CompressionConfig(a_shape=(16, 8), modules=("c_fc",)), progress=False)
    candidates = []
    for row in kronypt.models.schemes.plan_rows(config_size(model.config)):
        if row.compresses:
            trial = copy.deepcopy(model)
            compress_(trial, CompressionConfig(a_shape=row.a_shape, modules=("c_proj",)), progress=False)
            candidates.append((count_params(trial), row.a_shape))
    target = sorted(candidates)[len(candidates) // 2][0] + 1
    compress_(model, CompressionConfig(target_params=target, modules=("c_proj",)), progress=False)
    assert count_params(model) == max(p for p, _ in candidates if p <= target)
