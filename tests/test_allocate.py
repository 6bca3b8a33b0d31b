"""Per-matrix factor counts under a parameter budget: optimal against brute force, consistent with the Van
Loan decomposition, and a compressed model that round-trips with its mixed k."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli import assert_one_line_error, run

from kronypt.errors import KronyptError
from kronypt.math.allocate import allocate_terms, predicted_rel_error
from kronypt.math.decompose import kronecker_spectrum, van_loan
from kronypt.models import CompressionConfig, allocate_factors, compress_, count_params, load_model
from tests.conftest import SHARED_DATA, requires_shared, tiny_model

REPO = Path(__file__).resolve().parents[1]


def _spectrum(values: list[float]) -> torch.Tensor:
    return torch.tensor(sorted(values, reverse=True), dtype=torch.float64)


def _objective(spectra: dict[str, torch.Tensor], counts: dict[str, int]) -> float:
    return sum(predicted_rel_error(spectra[name], k) ** 2 for name, k in counts.items())


spectra_strategy = st.lists(st.lists(st.floats(0, 100), min_size=1, max_size=4), min_size=1, max_size=3)


@settings(max_examples=200, deadline=None)
@given(spectra_strategy, st.integers(0, 12), st.integers(1, 2), st.one_of(st.none(), st.integers(1, 4)))
def test_greedy_allocation_is_optimal_against_brute_force(raw, budget, min_factors, max_factors):
    spectra = {f"m{i}": _spectrum(values) for i, values in enumerate(raw)}
    caps = [len(v) if max_factors is None else min(len(v), max_factors) for v in spectra.values()]
    if min(caps) < min_factors or max_factors is not None and max_factors < min_factors \
            or budget < min_factors * len(spectra):
        with pytest.raises(KronyptError):
            allocate_terms(spectra, budget, min_factors, max_factors)
        return
    counts = allocate_terms(spectra, budget, min_factors, max_factors)
    assert list(counts) == list(spectra)
    assert sum(counts.values()) <= budget
    assert all(min_factors <= k <= cap for k, cap in zip(counts.values(), caps, strict=True))
    best = min(_objective(spectra, dict(zip(spectra, choice, strict=True)))
               for choice in itertools.product(*(range(min_factors, cap + 1) for cap in caps))
               if sum(choice) <= budget)
    assert _objective(spectra, counts) == pytest.approx(best, abs=1e-12)


def test_terms_that_remove_nothing_are_not_spent() -> None:
    counts = allocate_terms({"exact": _spectrum([4.0, 0.0, 0.0]), "rough": _spectrum([1.0, 1.0])}, total_terms=10)
    assert counts == {"exact": 1, "rough": 2}


def test_spectrum_predicts_the_van_loan_error() -> None:
    torch.manual_seed(0)
    W = torch.randn(48, 20, dtype=torch.float64)
    spectrum = kronecker_spectrum(W, (12, 5))
    assert spectrum.shape == (min(12 * 5, 4 * 4),)
    assert float(spectrum.sum()) == pytest.approx(float(W.square().sum()), rel=1e-12)
    assert torch.all(spectrum[:-1] >= spectrum[1:])
    for k in (1, 3, 16):
        assert predicted_rel_error(spectrum, k) == pytest.approx(van_loan(W, (12, 5), k).rel_error, abs=1e-9)


def _structured_model():
    """Block 0's c_fc is one Kronecker product plus tiny noise; the other matrices are random."""
    model = tiny_model()
    torch.manual_seed(1)
    with torch.no_grad():
        W = torch.kron(torch.randn(64, 16), torch.randn(4, 4)) * 0.02 + 1e-5 * torch.randn(256, 64)
        model.transformer.h[0].mlp.c_fc.weight.copy_(W.T)  # Conv1D: (in, out)
    return model


def test_allocation_meets_the_budget_and_beats_one_k_everywhere() -> None:
    uniform = _structured_model()
    uniform_report = compress_(uniform, CompressionConfig(a_shape=(64, 16), factors=2), progress=False)
    budget = uniform_report.params_after
    model = _structured_model()
    config = allocate_factors(model, CompressionConfig(a_shape=(64, 16), target_params=budget, allocate=True))
    report = compress_(model, config, progress=False)
    assert report.params_after <= budget == count_params(uniform)
    factors = {m.name: m.factors for m in report.matrices}
    assert factors["transformer.h.0.mlp.c_fc"] == 1  # already one Kronecker product: more terms buy nothing
    assert sum(m.rel_error**2 for m in report.matrices) < sum(m.rel_error**2 for m in uniform_report.matrices)
    spectra = {m.name: m.rel_error for m in report.matrices}
    assert spectra["transformer.h.0.mlp.c_fc"] < 1e-2
    capped = allocate_factors(_structured_model(), CompressionConfig(a_shape=(64, 16), target_params=budget,
                                                                     allocate=True, factors=2))
    assert max(capped.factors_by_module.values()) <= 2


def test_mixed_factor_counts_round_trip_with_exact_logits(tmp_path) -> None:
    model = _structured_model()
    budget = count_params(model) - 2 * 256 * 64 + 7 * (64 * 16 + 4 * 4 + 1)  # 7 terms with scalars in block 0
    config = allocate_factors(model, CompressionConfig(a_shape=(64, 16), layers=[0], scalars=True,
                                                    target_params=budget, allocate=True))
    compress_(model, config, progress=False)
    assert config.factors_by_module == {"transformer.h.0.mlp.c_fc": 1, "transformer.h.0.mlp.c_proj": 6}
    model.save_pretrained(tmp_path / "m")
    loaded = load_model(str(tmp_path / "m"))
    ids = torch.randint(0, 50257, (2, 16))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    assert {p: s["factors"] for p, s in loaded.config.compressed_modules.items()} == dict(config.factors_by_module)


def test_compress_allocate_cli(capsys, tiny_dir, tmp_path) -> None:
    code, out, err = run(capsys, "compress", str(tiny_dir), "--a-shape", "64x16", "--target-params", "3300000",
                         "--allocate", "--factors", "3", "--out", str(tmp_path / "a"), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["params_after"] <= 3_300_000 and {m["factors"] for m in report["matrices"]} <= {1, 2, 3}
    for args, message in [
        (["--a-shape", "64x16", "--allocate"], "--allocate needs one budget (--target-params or --ratio) and one of "
                                               "--scheme or --a-shape"),
        (["--target-params", "3300000", "--allocate"], "--allocate needs one budget"),
        (["--a-shape", "64x16", "--ratio", "0.5", "--target-params", "3300000", "--allocate"], "--allocate needs "
                                                                                                "one budget"),
        (["--a-shape", "64x16", "--target-params", "10", "--allocate"], "cannot give each of the 4 matrices one"),
        (["--a-shape", "64x16", "--target-params", "3300000", "--allocate", "--init", "prune"],
         "needs init van-loan, not prune"),
    ]:
        code, _, err = run(capsys, "compress", str(tiny_dir), *args, "--out", str(tmp_path / "b"))
        assert_one_line_error(code, err, message)


@requires_shared
def test_allocation_benchmark_reports_no_more_error_at_no_more_parameters(tiny_dir, tmp_path) -> None:
    out = tmp_path / "allocate.json"
    done = subprocess.run([sys.executable, "benchmarks/allocate.py", "--model", str(tiny_dir), "--shapes", "64x16",
                           "--factors", "2", "--max-tokens", "1024", "--data-dir", str(SHARED_DATA),
                           "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    [row] = report["rows"]
    assert row["allocated"]["params"] <= row["uniform"]["params"]
    assert row["allocated"]["sum_sq_rel_error"] <= row["uniform"]["sum_sq_rel_error"] + 1e-9
    assert row["uniform"]["factors"] == {"2": 4} and report["dense_perplexity"] > 0


def test_an_allocated_report_names_no_fixed_k_scheme(capsys, tmp_path) -> None:
    """GPT-2's MLP width, where A 1024x256 with k = 1 is the named scheme MF2: an allocation with k = 1 and 2
    is not MF2, and its report says so (scheme null, k per matrix), as `info` shows it."""
    model = tiny_model(n_layer=1, n_embd=768, n_head=12, n_positions=32, vocab_size=256, bos_token_id=255,
                       eos_token_id=255)
    model.save_pretrained(tmp_path / "wide")
    capsys.readouterr()
    per_term = 1024 * 256 + 3 * 3
    budget = count_params(model) - 2 * 3072 * 768 + 3 * per_term  # 3 terms for 2 matrices: k = 1 and 2
    common = ["compress", str(tmp_path / "wide"), "--a-shape", "1024x256", "--json"]
    code, out, err = run(capsys, *common, "--out", str(tmp_path / "fixed"))
    assert code == 0 and json.loads(out)["scheme"] == "MF2", err  # one k everywhere: the named scheme
    code, out, err = run(capsys, *common, "--target-params", str(budget), "--allocate", "--out", str(tmp_path / "a"))
    assert code == 0, err
    report = json.loads(out)
    assert sorted(m["factors"] for m in report["matrices"]) == [1, 2]
    assert (report["scheme"], report["factors"], report["allocated"]) == (None, None, True)
    assert json.loads((tmp_path / "a" / "compression_report.json").read_text())["scheme"] is None
    code, out, err = run(capsys, "info", str(tmp_path / "a"))
    ks = {m["name"].rsplit(".", 1)[1]: m["factors"] for m in report["matrices"]}
    assert code == 0 and f"c_fc: A 1024x256, B 3x3, k={ks['c_fc']}" in out, out  # the same k per matrix
    assert f"c_proj: A 256x1024, B 3x3, k={ks['c_proj']}" in out, out
