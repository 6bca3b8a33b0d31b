"""Dropping whole blocks: which ones, the sizes they match, and the plain model that remains."""

import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from kronypt import CompressionConfig, compress_, count_params
from kronypt.models.calibration import Calibration, block_influence
from kronypt.models.dropping import choose_blocks
from kronypt.models.families import mlp_layout
from tests.conftest import tiny_llama, tiny_model

CALIBRATION = Calibration(torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(0)), "x")


def test_every_other_spreads_the_dropped_blocks():
    model = tiny_llama(num_hidden_layers=8)
    layout = mlp_layout(model)
    assert choose_blocks(model, layout, 4, "every-other") == [1, 3, 5, 7]
    assert choose_blocks(model, layout, 2, "every-other") == [2, 6]
    assert choose_blocks(model, layout, 2, "every-other", candidates=[4, 5, 6, 7]) == [5, 7]


def test_importance_drops_the_blocks_that_turn_the_hidden_state_least():
    model = tiny_llama(num_hidden_layers=4)
    with torch.no_grad():  # block 2 does nothing: its output projections are zero
        model.model.layers[2].mlp.down_proj.weight.zero_()
        model.model.layers[2].self_attn.o_proj.weight.zero_()
    influence = block_influence(model, mlp_layout(model).family, CALIBRATION)
    assert abs(influence[2]) < 1e-6 and min(influence[:2] + influence[3:]) > 1e-4
    report = compress_(model, CompressionConfig(method="drop-blocks", ratio=0.6), CALIBRATION, progress=False)
    assert report.dropped_blocks == [2]


def test_dropped_blocks_leave_a_plain_model_that_saves_loads_and_generates(tmp_path):
    model = tiny_llama(num_hidden_layers=4)
    ids = torch.randint(0, 50257, (1, 6))
    report = compress_(model, CompressionConfig(method="drop-blocks", drop="every-other", ratio=0.3),
                       progress=False)
    block = report.params_before - count_params(tiny_llama(num_hidden_layers=3))
    assert len(report.dropped_blocks) == 2 and report.params_after == report.params_before - 2 * block
    assert model.config.num_hidden_layers == 2 and type(model) is LlamaForCausalLM
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    cached = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    uncached = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0, use_cache=False)
    assert torch.equal(cached, uncached)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is LlamaForCausalLM and torch.equal(loaded(ids).logits, model(ids).logits)


def test_gpt2_blocks_drop_too():
    model = tiny_model()
    report = compress_(model, CompressionConfig(method="drop-blocks", drop="every-other", ratio=0.2),
                       progress=False)
    assert report.dropped_blocks == [1] and model.config.n_layer == 1 and len(model.transformer.h) == 1


def test_dropping_blocks_of_a_compressed_model_renumbers_its_compressed_matrices(tmp_path):
    import kronypt

    model = tiny_llama(num_hidden_layers=4)
    compress_(model, CompressionConfig(ratio=0.5, layers=[1, 3]), progress=False)
    report = compress_(model, CompressionConfig(method="drop-blocks", drop="every-other", ratio=0.5),
                       progress=False)
    assert report.dropped_blocks == [2]  # block 3 becomes block 2
    assert sorted({path.split(".")[2] for path in model.config.compressed_modules}) == ["1", "2"]
    ids = torch.randint(0, 50257, (1, 6))
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is kronypt.KronyLlamaForCausalLM and torch.equal(loaded(ids).logits, model(ids).logits)


def test_compressing_a_folder_whose_blocks_were_dropped_again(tmp_path, capsys):
    import json

    from tests.conftest import _with_gpt2_tokenizer
    from tests.test_cli import run

    source = tmp_path / "four"
    tiny_llama(num_hidden_layers=4).save_pretrained(source)
    _with_gpt2_tokenizer(source)
    args = ["--method", "drop-blocks", "--drop", "every-other", "--ratio", "0.6"]
    code, _, err = run(capsys, "compress", str(source), *args, "--out", str(tmp_path / "three"))
    assert code == 0, err
    code, out, err = run(capsys, "compress", str(tmp_path / "three"), *args, "--out", str(tmp_path / "two"),
                         "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["matrices"] == [] and report["mean_rel_error"] == 0.0 and report["params_before"] > 0
