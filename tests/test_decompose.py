import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kronypt.errors import KronyptError
from kronypt.math.decompose import (
    kron_reconstruct,
    prune_init,
    random_init,
    rearrange,
    relative_error,
    van_loan,
)
from kronypt.math.shapes import divisors, kron_shape

small_dims = st.sampled_from([4, 6, 8, 12])


@st.composite
def shapes_and_k(draw):
    out, inp = draw(small_dims), draw(small_dims)
    m1, n1 = draw(st.sampled_from(divisors(out))), draw(st.sampled_from(divisors(inp)))
    s = kron_shape(out, inp, (m1, n1))
    k = draw(st.integers(1, min(m1 * n1, s.m2 * s.n2)))
    return s, k, draw(st.integers(0, 2**16))


def test_reconstruct_matches_torch_kron():
    A, B = torch.randn(3, 4, 5, dtype=torch.float64), torch.randn(3, 2, 3, dtype=torch.float64)
    s = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    expected = sum(s[i] * torch.kron(A[i], B[i]) for i in range(3))
    torch.testing.assert_close(kron_reconstruct(A, B, s), expected)


def test_rearrangement_maps_a_kronecker_product_to_a_rank_one_matrix():
    A, B = torch.randn(4, 6, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    R = rearrange(torch.kron(A, B), kron_shape(12, 12, (4, 6)))
    torch.testing.assert_close(R, A.reshape(-1, 1) @ B.reshape(1, -1))


@settings(max_examples=60, deadline=None)
@given(shapes_and_k())
def test_exact_sums_of_k_products_are_recovered(case):
    s, k, seed = case
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(k, s.m1, s.n1, generator=g, dtype=torch.float64)
    B = torch.randn(k, s.m2, s.n2, generator=g, dtype=torch.float64)
    W = kron_reconstruct(A, B)
    dec = van_loan(W, s.a_shape, k)
    assert dec.rel_error < 1e-6
    torch.testing.assert_close(kron_reconstruct(dec.A, dec.B, dec.scalars), W, rtol=1e-6, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(shapes_and_k(), st.floats(1e-3, 1.0))
def test_van_loan_is_never_worse_than_a_perturbation(case, eps):
    s, k, seed = case
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(s.out_features, s.in_features, generator=g, dtype=torch.float64)
    dec = van_loan(W, s.a_shape, k)
    A = dec.A + eps * torch.randn(dec.A.shape, generator=g, dtype=torch.float64)
    B = dec.B + eps * torch.randn(dec.B.shape, generator=g, dtype=torch.float64)
    assert dec.rel_error <= relative_error(W, kron_reconstruct(A, B)) + 1e-12


@settings(max_examples=30, deadline=None)
@given(st.sampled_from([(4, 4), (2, 8), (8, 2)]), st.integers(0, 2**16))
def test_error_falls_as_k_grows_and_equals_the_singular_tail(a_shape, seed):
    W = torch.randn(16, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    sigma = torch.linalg.svdvals(rearrange(W, kron_shape(16, 16, a_shape)))
    errors = [van_loan(W, a_shape, k).rel_error for k in range(1, 17)]
    assert all(b <= a + 1e-12 for a, b in zip(errors, errors[1:], strict=False))
    for k, err in enumerate(errors, start=1):
        assert err == pytest.approx((sigma[k:].square().sum() / sigma.square().sum()).sqrt().item(), abs=1e-7)


def test_van_loan_on_a_wide_rearrangement_and_float32_input():
    W = torch.randn(64, 32)  # R(W) for A (2, 2) is 4 x 512: the Gram matrix of the other side is used
    dec = van_loan(W, (2, 2), 3)
    assert dec.A.dtype == torch.float32 and dec.A.shape == (3, 2, 2) and dec.B.shape == (3, 32, 16)
    assert dec.rel_error == pytest.approx(relative_error(W, kron_reconstruct(dec.A, dec.B)), abs=1e-6)


def test_rescale_keeps_the_norm():
    W = torch.randn(24, 12, dtype=torch.float64)
    dec = van_loan(W, (6, 3), 2, rescale=True)
    assert kron_reconstruct(dec.A, dec.B).norm().item() == pytest.approx(W.norm().item(), rel=1e-10)


def test_rank_deficient_matrix_gives_finite_zero_extra_factors():
    W = torch.kron(torch.randn(4, 4), torch.randn(3, 3)).double()
    dec = van_loan(W, (4, 4), 3)
    assert torch.isfinite(dec.A).all() and dec.rel_error < 1e-7
    assert dec.A[1:].abs().max() < 1e-5


def test_prune_keeps_every_other_column_like_the_paper():
    W = torch.randn(3072 // 64, 768 // 64, dtype=torch.float64)  # (48, 12), A (48, 6), B (1, 2)
    dec = prune_init(W, (48, 6))
    torch.testing.assert_close(dec.A[0], W[:, 0::2])
    torch.testing.assert_close(dec.B[0], torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    filled = prune_init(W, (48, 6), fill=0.1)
    torch.testing.assert_close(filled.B[0], torch.tensor([[1.0, 0.1]], dtype=torch.float64))
    c_proj = prune_init(W.T.contiguous(), (6, 48))  # transposed shapes keep the even output rows
    torch.testing.assert_close(c_proj.A[0], W.T[0::2, :])


def test_prune_with_one_term_per_block_position_is_exact():
    W = torch.randn(12, 8, dtype=torch.float64)
    dec = prune_init(W, (4, 4), k=6)  # blocks are 3x2
    assert dec.rel_error < 1e-12


def test_random_init_has_the_requested_entry_std():
    dec = random_init(768, 3072, (48, 48), k=4, std=0.02, generator=torch.Generator().manual_seed(0))
    W = kron_reconstruct(dec.A, dec.B)
    assert W.std().item() == pytest.approx(0.02, rel=0.05)


def test_random_init_measures_its_error_against_the_replaced_weight():
    W = torch.randn(24, 16, dtype=torch.float64) * 0.02
    dec = random_init(24, 16, (6, 4), k=2, generator=torch.Generator().manual_seed(0), weight=W)
    expected = relative_error(W, kron_reconstruct(dec.A.double(), dec.B.double(), dec.scalars.double()))
    assert dec.rel_error == pytest.approx(expected, rel=1e-6) and dec.rel_error > 1.0  # ≈ √2: unrelated


def test_bad_factor_counts_are_refused():
    W = torch.randn(8, 8)
    with pytest.raises(KronyptError, match="at least 1"):
        van_loan(W, (4, 4), 0)
    with pytest.raises(KronyptError, match="exceed"):
        van_loan(W, (4, 4), 5)
    with pytest.raises(KronyptError, match="does not divide"):
        van_loan(W, (3, 4), 1)
    assert math.isfinite(van_loan(W, (4, 4), 4).rel_error)


def test_decomposition_benchmark_agrees_with_a_full_svd(tmp_path) -> None:
    """benchmarks/decompose.py on a one-block model of GPT-2's width: every Van Loan row reaches the full
    SVD's error, the pruning scheme has no reference row, and the whole-model compress is timed."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import tiny_model

    repo = Path(__file__).resolve().parents[1]
    tiny_model(n_layer=1, n_embd=768, n_head=12, n_positions=32, vocab_size=256, bos_token_id=255,
               eos_token_id=255).save_pretrained(tmp_path / "wide")
    out = tmp_path / "decompose.json"
    done = subprocess.run([sys.executable, "benchmarks/decompose.py", "--model", str(tmp_path / "wide"),
                           "--schemes", "81M,67M-alt,96M-prune", "--quick", "--json", str(out)],
                          cwd=repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [(r["scheme"], r["matrix"]) for r in report["rows"]] == [
        (s, m) for s in ("81M", "67M-alt", "96M-prune") for m in ("c_fc", "c_proj")]
    svd_rows = [r for r in report["rows"] if r["init"] == "van-loan"]
    assert len(svd_rows) == 4 and report["all_agree"]
    for row in svd_rows:
        assert abs(row["rel_error"] - row["reference_rel_error"]) <= 1e-9 and 0 < row["rel_error"] < 1
        assert row["speedup"] == pytest.approx(row["reference_s"] / row["kronypt_s"])
    assert all("reference_s" not in r for r in report["rows"] if r["init"] == "prune")
    assert [m["scheme"] for m in report["models"]] == ["81M", "67M-alt", "96M-prune"]
    assert all(m["matrices"] == 2 and m["seconds"] > 0 for m in report["models"])

    dense = subprocess.run([sys.executable, "benchmarks/decompose.py", "--model", str(tmp_path / "nowhere"),
                            "--quick"], cwd=repo, capture_output=True, text=True, timeout=300)
    assert dense.returncode == 2 and "does not exist" in dense.stderr and "Traceback" not in dense.stderr
