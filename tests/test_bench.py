"""kronypt.bench: alternation and medians, the dense counterpart, settings checks (no timing asserted)."""

from __future__ import annotations

import pytest
import torch

from kronypt import CompressionConfig, KronyptError, compress_, count_params
from kronypt.bench import BenchSettings, _alternate, bench_pair, dense_counterpart, steps_per_run
from tests.conftest import tiny_model


def tiny_kron():
    model = tiny_model(vocab_size=512, n_positions=64)
    compress_(model, CompressionConfig(a_shape=(16, 8), factors=2), progress=False)
    return model.eval()


def test_measures_alternate_and_take_medians():
    calls: list[str] = []
    values = {"A": iter([9.0, 1.0, 2.0, 3.0]), "B": iter([9.0, 10.0, 30.0, 20.0])}

    def measure(name):
        return lambda: calls.append(name) or next(values[name])

    ticks = []
    samples = _alternate([measure("A"), measure("B")], BenchSettings(repeats=3, warmup=1), lambda: ticks.append(1))
    assert calls == ["A", "B", "A", "B", "B", "A", "A", "B"]  # warm-up, then A B / B A / A B
    assert samples == [[1.0, 2.0, 3.0], [10.0, 30.0, 20.0]]  # the warm-up values (9.0) are not counted
    assert len(ticks) == len(calls)


def test_dense_counterpart_has_the_same_logits_and_more_parameters():
    kron = tiny_kron()
    dense = dense_counterpart(kron)
    ids = torch.randint(512, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(dense(ids).logits, kron(ids).logits, rtol=1e-5, atol=1e-5)
    assert type(dense).__name__ == "GPT2LMHeadModel" and count_params(dense) > count_params(kron)
    with pytest.raises(KronyptError, match="no compressed layers"):
        dense_counterpart(dense)


def test_bench_pair_reports_both_models_and_their_ratios():
    kron = tiny_kron()
    dense = dense_counterpart(kron)
    settings = BenchSettings(batch=2, prompt_tokens=8, new_tokens=3, repeats=2, warmup=1, train=True)
    ticks = []
    result = bench_pair(kron, dense, settings, on_step=lambda: ticks.append(1))
    assert len(ticks) == steps_per_run(settings)
    assert (result["model"]["params"], result["against"]["params"]) == (count_params(kron), count_params(dense))
    assert (result["model"]["compressed_layers"], result["against"]["compressed_layers"]) == (4, 0)
    for key, ratio in result["ratios"].items():
        assert result["model"][key] > 0 and result["against"][key] > 0
        assert ratio == result["model"][key] / result["against"][key]
    assert set(result["ratios"]) == {"params", "prefill_tokens_per_s", "decode_tokens_per_s", "train_tokens_per_s"}
    for row in (result["model"], result["against"]):  # batch 2: two tokens per decode step
        assert row["decode_tokens_per_s"] == pytest.approx(2 * 1e3 / row["decode_ms_per_token"])
    assert not kron.training and not dense.training


@pytest.mark.parametrize("changes,context,pattern", [
    ({"repeats": 0}, None, "repeats must be at least 1"),
    ({"batch": 0}, None, "batch must be at least 1"),
    ({"new_tokens": 1}, None, "new_tokens must be at least 2"),
    ({"warmup": -1}, None, "warmup must be 0 or more"),
    ({"train": True, "prompt_tokens": 1}, None, "training step needs"),
    ({"prompt_tokens": 60, "new_tokens": 5}, 64, "exceed the model's context of 64"),
])
def test_settings_are_checked(changes, context, pattern):
    with pytest.raises(KronyptError, match=pattern):
        BenchSettings(**changes).check(context)
    BenchSettings(prompt_tokens=60, new_tokens=4).check(64)  # exactly the context is fine


def test_a_compressed_llama_benches_against_its_dense_counterpart():
    from tests.conftest import tiny_llama

    kron = tiny_llama(vocab_size=512, max_position_embeddings=64)
    compress_(kron, CompressionConfig(ratio=0.5), progress=False)
    dense = dense_counterpart(kron.eval())
    assert type(dense).__name__ == "LlamaForCausalLM" and count_params(dense) > count_params(kron)
    result = bench_pair(kron, dense, BenchSettings(prompt_tokens=8, new_tokens=3, repeats=2, warmup=0))
    assert result["model"]["compressed_layers"] == 6 and result["against"]["compressed_layers"] == 0


def test_rounds_that_disagree_are_flagged_and_so_are_busy_cores():
    from kronypt.bench import noise_warnings, round_ratios

    steady = round_ratios([[1.0, 1.0, 1.0], [2.0, 2.02, 1.98]])  # seconds: model, against
    assert steady["median"] == pytest.approx(2.0) and steady["rel_spread"] < 0.03
    noisy = round_ratios([[1.0, 1.0, 1.0], [2.1, 0.95, 1.5]])
    assert (noisy["min"], noisy["max"]) == pytest.approx((0.95, 2.1))
    warnings = noise_warnings({"prefill_tokens_per_s": noisy, "decode_tokens_per_s": steady}, others=0.3)
    assert len(warnings) == 2 and warnings[0].startswith("prefill ratios of the rounds range from 0.95 to 2.10")
    assert "other processes used 30% of the CPU time" in warnings[1]
    assert noise_warnings({"decode_tokens_per_s": steady}, others=0.01) == []
