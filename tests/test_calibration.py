"""Calibration data, the second moments of MLP inputs, and activation-aware compression of whole models."""

import numpy as np
import pytest
import torch

from kronypt import CompressionConfig, compress_
from kronypt.data.writer import TokenFolderWriter
from kronypt.errors import KronyptError
from kronypt.models.calibration import Calibration, calibration_window, load_calibration, mean_loss, second_moments
from kronypt.models.families import mlp_layout
from tests.conftest import tiny_config, tiny_llama, tiny_llama_config, tiny_model


def token_folder(path, tokens: np.ndarray):
    with TokenFolderWriter(path) as writer:
        writer.write("train", tokens)
        writer.write("val", tokens[:10])
        writer.commit({"vocab_size": 50257, "splits": {"train": {"file": "train.bin", "tokens": len(tokens)},
                                                       "val": {"file": "val.bin", "tokens": 10}}})
    return path


def test_windows_come_from_a_token_folder_or_a_text_file(tmp_path):
    data = token_folder(tmp_path / "tokens", np.arange(5000, dtype=np.uint16))
    calibration = load_calibration(data, tokens=2048, seq_len=512)
    assert calibration.tokens.shape == (4, 512) and calibration.count == 2048
    rows = calibration.tokens
    assert torch.equal(rows[:, 1:] - rows[:, :-1], torch.ones(4, 511, dtype=torch.long))  # consecutive tokens
    assert torch.equal(load_calibration(data, 2048, 512).tokens, rows)  # seeded: the same windows again
    text = tmp_path / "text.txt"
    text.write_text("word " * 3000)

    class Words:
        def __call__(self, text, add_special_tokens=False):
            return type("Encoded", (), {"input_ids": list(range(len(text.split())))})()

    from_text = load_calibration(text, tokens=1024, seq_len=256, tokenizer=Words())
    assert from_text.tokens.shape == (4, 256) and from_text.tokens[0, 5] == 5
    with pytest.raises(KronyptError, match="needs the model's tokenizer"):
        load_calibration(text, 1024, 256)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_calibration(tmp_path / "missing", 1024)


def test_calibration_windows_fit_the_models_context():
    assert calibration_window(tiny_config(n_positions=64)) == 64  # GPT-2's position table ends there
    assert calibration_window(tiny_llama_config(max_position_embeddings=8192)) == 1024


def test_second_moments_are_the_mean_outer_products_of_each_matrix_input():
    model = tiny_llama()
    calibration = Calibration(torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(0)), "x")
    layout = mlp_layout(model)
    sites = layout.sites([1])
    captured = {}
    hooks = [model.get_submodule(s.path).register_forward_pre_hook(
        lambda m, a, path=s.path: captured.setdefault(path, []).append(a[0].reshape(-1, a[0].shape[-1])))
        for s in sites]
    with torch.no_grad():
        model(input_ids=calibration.tokens)
    for hook in hooks:
        hook.remove()
    moments = second_moments(model, sites, calibration, batch_size=1)
    for site in sites:
        X = torch.cat(captured[site.path]).double()
        torch.testing.assert_close(moments[site.path], X.T @ X / 32, rtol=1e-5, atol=1e-8)
    assert moments["model.layers.1.mlp.down_proj"].shape == (192, 192)


@pytest.mark.parametrize("method", ["kronecker", "low-rank"])
def test_fitting_the_outputs_lowers_the_output_error(method):
    calibration = Calibration(torch.randint(0, 50257, (4, 32), generator=torch.Generator().manual_seed(1)), "x")
    weights = compress_(tiny_llama(), CompressionConfig(method=method, ratio=0.25), calibration, progress=False)
    aware = compress_(tiny_llama(), CompressionConfig(method=method, ratio=0.25, fit="activations"), calibration,
                      progress=False)
    assert all(m.output_error is not None for m in aware.matrices)
    assert sum(m.output_error for m in aware.matrices) < sum(m.rel_error for m in weights.matrices)
    assert aware.calibration_loss_before == weights.calibration_loss_before
    assert "calibration loss" in aware.calibration_line() and "128 tokens of x" in aware.calibration_line()


def test_calibration_is_required_and_must_fit_the_vocabulary():
    with pytest.raises(KronyptError, match="--fit activations needs calibration data"):
        compress_(tiny_model(), CompressionConfig(ratio=0.5, fit="activations"), progress=False)
    wrong = Calibration(torch.full((1, 8), 60_000), "other tokenizer")
    with pytest.raises(KronyptError, match="holds token id 60000, but the model's vocabulary has 50,257"):
        compress_(tiny_model(), CompressionConfig(ratio=0.5, fit="activations"), wrong, progress=False)


def test_mean_loss_is_the_next_token_cross_entropy():
    model = tiny_model()
    calibration = Calibration(torch.randint(0, 50257, (3, 8), generator=torch.Generator().manual_seed(2)), "x")
    with torch.no_grad():
        expected = model(input_ids=calibration.tokens, labels=calibration.tokens).loss.item()
    assert mean_loss(model, calibration, batch_size=2) == pytest.approx(expected, rel=1e-5)
