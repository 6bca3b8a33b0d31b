"""Activation-aware fits against plain references: a generic optimiser on the same objective, and the closed form
where one exists."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kronypt.math.decompose import kron_reconstruct, van_loan
from kronypt.math.whiten import (
    kronecker_covariance,
    output_error,
    whitened_kronecker,
    whitened_low_rank,
)


def correlated(n_in: int, tokens: int = 400, seed: int = 0) -> torch.Tensor:
    """E[x xᵀ] of inputs with strongly unequal, correlated directions (as MLP inputs are)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(n_in, n_in, generator=g, dtype=torch.float64) * torch.logspace(0, -2, n_in, dtype=torch.float64)
    X = torch.randn(tokens, n_in, generator=g, dtype=torch.float64) @ mix
    return X.T @ X / tokens


def lbfgs_optimum(W, C, A, B) -> float:
    """The output error a generic optimiser reaches from the given factors (float64)."""
    A, B = A.double().clone().contiguous().requires_grad_(), B.double().clone().contiguous().requires_grad_()
    opt = torch.optim.LBFGS([A, B], max_iter=3000, tolerance_grad=1e-14, tolerance_change=1e-16, history_size=50,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        E = W - kron_reconstruct(A, B)
        loss = (E * (E @ C)).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return output_error(W, kron_reconstruct(A, B).detach(), C)


@pytest.mark.parametrize(("a_shape", "k"), [((6, 4), 1), ((6, 4), 2), ((3, 3), 3), ((8, 12), 1)])
def test_whitened_kronecker_reaches_the_optimum_and_beats_van_loan(a_shape, k):
    W = torch.randn(24, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    C = correlated(12)
    fit = whitened_kronecker(W, C, a_shape, k, sweeps=300, ridge=0)
    A, B = fit.factors
    plain = van_loan(W, a_shape, k)
    assert fit.output_error <= output_error(W, kron_reconstruct(plain.A.double(), plain.B.double()), C) + 1e-12
    reference = lbfgs_optimum(W, C, plain.A, plain.B)
    assert fit.output_error <= reference + 1e-3  # alternating least squares is not a local method: ties or wins
    assert fit.output_error == pytest.approx(output_error(W, kron_reconstruct(A, B), C), rel=1e-9)


def test_a_kronecker_factored_covariance_is_fitted_exactly_without_alternation():
    """With C = C1 ⊗ C2 the whitened Van Loan is the optimum: alternating least squares finds nothing better."""
    g = torch.Generator().manual_seed(2)
    C1 = correlated(4, seed=3)
    C2 = correlated(3, seed=4)
    C = torch.kron(C1, C2)
    W = torch.randn(10, 12, generator=g, dtype=torch.float64)
    once = whitened_kronecker(W, C, (5, 4), 1, sweeps=0, ridge=0)
    refined = whitened_kronecker(W, C, (5, 4), 1, sweeps=50, ridge=0)
    assert refined.output_error == pytest.approx(once.output_error, rel=1e-6)
    K1, K2 = kronecker_covariance(C, 4, 3)
    torch.testing.assert_close(torch.kron(K1, K2), C, rtol=1e-10, atol=1e-12)


def test_identity_covariance_gives_van_loan():
    W = torch.randn(12, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    fit = whitened_kronecker(W, torch.eye(8, dtype=torch.float64), (4, 2), 2, ridge=0)
    assert fit.weight_error == pytest.approx(van_loan(W, (4, 2), 2).rel_error, rel=1e-6)


@settings(max_examples=20, deadline=None)
@given(rank=st.integers(1, 7), seed=st.integers(0, 1000))
def test_whitened_low_rank_is_the_best_rank_r_fit_of_the_outputs(rank, seed):
    """Against the closed form: min over rank-r Ŵ of ‖(W − Ŵ)L‖ is the tail of W·L's singular values."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(9, 8, generator=g, dtype=torch.float64)
    C = correlated(8, seed=seed)
    fit = whitened_low_rank(W, C, rank, ridge=0)
    U, V = fit.factors
    assert U.shape == (9, rank) and V.shape == (rank, 8)
    S = torch.linalg.svdvals(W @ torch.linalg.cholesky(C))
    assert fit.output_error == pytest.approx(float((S[rank:].square().sum() / S.square().sum()).sqrt()), abs=1e-9)
    Us, Ss, Vs = torch.linalg.svd(W, full_matrices=False)
    plain = (Us[:, :rank] * Ss[:rank]) @ Vs[:rank]
    assert fit.output_error <= output_error(W, plain, C) + 1e-12
