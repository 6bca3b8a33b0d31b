"""A size per block by measured loss (sensitivity allocation): the exact knapsack, and whole models."""

import itertools

import pytest
import torch

from kronypt import CompressionConfig, compress_, count_params
from kronypt.errors import KronyptError
from kronypt.models.allocation import LEVELS, _knapsack
from kronypt.models.calibration import Calibration
from tests.conftest import tiny_llama

CALIBRATION = Calibration(torch.randint(0, 50257, (8, 32), generator=torch.Generator().manual_seed(0)), "x")


def test_knapsack_is_exact_against_brute_force():
    g = torch.Generator().manual_seed(3)
    blocks = range(4)
    increase = {b: {r: float(torch.rand(1, generator=g)) * (1 - r) * 4 for r in LEVELS} for b in blocks}
    cost = {1.0: dict.fromkeys(blocks, 1000), **{r: dict.fromkeys(blocks, int(1000 * r) + 7) for r in LEVELS}}
    for budget in (600, 1500, 2300, 3100, 4000):
        best = min((sum(0.0 if r == 1.0 else increase[b][r] for b, r in zip(blocks, picks, strict=True)), picks)
                   for picks in itertools.product((1.0, *LEVELS), repeat=4)
                   if sum(cost[r][b] for b, r in zip(blocks, picks, strict=True)) <= budget)
        chosen = _knapsack(increase, cost, budget)
        assert sum(0.0 if r == 1.0 else increase[b][r] for b, r in chosen.items()) == pytest.approx(best[0])
    with pytest.raises(KronyptError, match="cannot hold every block"):
        _knapsack(increase, cost, 100)


@pytest.mark.parametrize("method", ["kronecker", "low-rank"])
def test_the_block_that_hurts_most_stays_dense_within_the_budget(method, monkeypatch):
    """The measured loss, faked so that block 1 is 50x as sensitive as the others (a random tiny model's loss
    barely moves): the allocation keeps block 1 dense, meets the budget, and measured every block and level."""
    from kronypt.models import allocation
    from kronypt.nn.compressed import is_compressed_layer, layer_params

    weight = {0: 1.0, 1: 50.0, 2: 1.0, 3: 1.0}

    def fake_loss(model, calibration, batch_size=4):
        loss = 3.0
        for block, layer in enumerate(model.model.layers):
            for module in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
                if is_compressed_layer(module):
                    loss += weight[block] * (1 - layer_params(module) / (192 * 64))
        return loss

    monkeypatch.setattr(allocation, "mean_loss", fake_loss)
    model = tiny_llama(num_hidden_layers=4)
    dense = count_params(model)
    report = compress_(model, CompressionConfig(method=method, ratio=0.5, allocation="sensitivity"), CALIBRATION,
                       progress=False)
    chosen = {int(b): r for b, r in report.sensitivity["chosen"].items()}
    assert chosen[1] == 1.0 and "model.layers.1.mlp.up_proj" not in model.config.compressed_modules
    assert all(chosen[b] < 1.0 for b in (0, 2, 3))
    mlp = 12 * 192 * 64
    assert report.params_after <= dense - round(0.5 * mlp)  # the budget: half the MLP parameters
    increase = report.sensitivity["increase"]
    assert set(increase) == {"0", "1", "2", "3"} and all(len(levels) == len(LEVELS) for levels in increase.values())
    assert increase["1"]["0.5"] == pytest.approx(50 * 3 * (1 - report_level_params(model, method, 0.5)), rel=1e-3)


def report_level_params(model, method, ratio):
    """The fraction of a 192x64 matrix's parameters that the level keeps."""
    if method == "low-rank":
        return round(ratio * 192 * 64 / 256) * 256 / (192 * 64)
    return (96 * 64 + 2) / (192 * 64)  # A 96x64, B 2x1: the one-factor scheme nearest a half


def test_sensitivity_needs_a_budget_and_calibration():
    with pytest.raises(KronyptError, match="needs a budget"):
        CompressionConfig(a_shape=(96, 32), allocation="sensitivity")
    with pytest.raises(KronyptError, match="--allocation sensitivity needs calibration data"):
        compress_(tiny_llama(), CompressionConfig(ratio=0.5, allocation="sensitivity"), progress=False)
