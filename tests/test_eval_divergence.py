"""Window loss and KL to a reference, against a float64 computation written out in full."""

import numpy as np
import pytest
import torch

from kronypt.eval.divergence import window_scores
from tests.conftest import tiny_model
from tests.test_calibration import token_folder


def test_loss_and_kl_match_a_direct_float64_computation(tmp_path):
    data = token_folder(tmp_path / "tokens", np.random.default_rng(0).integers(0, 50257, 400).astype(np.uint16))
    model, reference = tiny_model(seed=1).double(), tiny_model(seed=2).double()
    scores = window_scores(model, data, reference, split="train", windows=3, seq_len=32)
    ids = torch.from_numpy(np.fromfile(data / "train.bin", dtype=np.uint16).astype(np.int64))
    windows = [ids[i * 32: i * 32 + 33] for i in range(3)]
    losses, ref_losses, kls = [], [], []
    with torch.no_grad():
        for w in windows:
            p = torch.log_softmax(model(input_ids=w[None, :-1]).logits[0].double(), -1)
            q = torch.log_softmax(reference(input_ids=w[None, :-1]).logits[0].double(), -1)
            losses += (-p[torch.arange(32), w[1:]]).tolist()
            ref_losses += (-q[torch.arange(32), w[1:]]).tolist()
            kls += (q.exp() * (q - p)).sum(-1).tolist()
    assert (scores.tokens, scores.windows) == (96, 3)
    assert scores.loss == pytest.approx(np.mean(losses), rel=1e-6)
    assert scores.reference_loss == pytest.approx(np.mean(ref_losses), rel=1e-6)
    assert scores.kl == pytest.approx(np.mean(kls), rel=1e-5) and scores.kl > 0
    same = window_scores(model, data, model, split="train", windows=2, seq_len=32)
    assert abs(same.kl) < 1e-9 and same.loss == same.reference_loss
    alone = window_scores(model, data, split="train", windows=2, seq_len=32)
    assert alone.kl is None and alone.loss == same.loss
