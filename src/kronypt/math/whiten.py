"""Fits that minimise the error on calibration inputs instead of on the weights.

For inputs X (rows = tokens) of a layer W (out, in), the output error is ‖(W − Ŵ)Xᵀ‖_F² = tr((W − Ŵ) C (W − Ŵ)ᵀ)
with C = XᵀX. With C = L·Lᵀ (Cholesky, a small ridge added) that is ‖(W − Ŵ)L‖_F², so a fit of W·L "whitened"
and un-whitened afterwards is optimal for the outputs:

- low rank (SVD-LLM's whitening): the truncated SVD of W·L, times L⁻¹, is the best rank-r Ŵ exactly;
- Kronecker: with C ≈ C1 ⊗ C2 (the nearest Kronecker product to C, by Van Loan) and L = L1 ⊗ L2,
  (A ⊗ B)·L = (A·L1) ⊗ (B·L2), so Van Loan on W·L gives A·L1 and B·L2 exactly; where C is not a Kronecker
  product this is an approximation, refined by alternating least squares on the full C (with B fixed the
  best A solves a linear system in closed form, and the other way round; the error never rises).

All in float64. C may be scaled freely (the fits do not change): callers pass the mean XᵀX / tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kronypt.math.decompose import _top_singular, rearrange, van_loan
from kronypt.math.shapes import KronShape, kron_shape

RIDGE = 1e-4  # added to C's diagonal, relative to its mean diagonal entry: keeps C invertible for few tokens


@dataclass
class WhitenedFit:
    """Factors of one matrix and their relative output error ‖(W − Ŵ)L‖_F / ‖W·L‖_F on the calibration inputs."""

    factors: tuple[torch.Tensor, ...]
    output_error: float
    weight_error: float  # ‖W − Ŵ‖_F / ‖W‖_F, for comparison with weight-space fits


def ridged(C: torch.Tensor, ridge: float = RIDGE) -> torch.Tensor:
    """C (float64, symmetrised) plus `ridge` times its mean diagonal entry on the diagonal."""
    C = C.to(torch.float64)
    C = (C + C.T) / 2
    scale = C.diagonal().mean().clamp_min(torch.finfo(torch.float64).tiny)
    return C + ridge * scale * torch.eye(C.shape[0], dtype=C.dtype, device=C.device)


def output_error(W: torch.Tensor, W_hat: torch.Tensor, C: torch.Tensor) -> float:
    """‖(W − Ŵ)L‖_F / ‖W·L‖_F for C = L·Lᵀ, i.e. sqrt(tr(E C Eᵀ) / tr(W C Wᵀ))."""
    W64, E = W.to(torch.float64), (W - W_hat).to(torch.float64)
    num, den = (E * (E @ C)).sum(), (W64 * (W64 @ C)).sum()
    return float((num / den).clamp_min(0).sqrt()) if den > 0 else 0.0


def whitened_low_rank(W: torch.Tensor, C: torch.Tensor, rank: int, ridge: float = RIDGE) -> WhitenedFit:
    """The rank-`rank` (U, V) with the least output error on inputs of second moment C (plus `ridge`): truncated
    SVD of W·L, then V·L⁻¹."""
    W64, C = W.detach().to(torch.float64), ridged(C, ridge)
    L = torch.linalg.cholesky(C)
    U, S, Vh = torch.linalg.svd(W64 @ L, full_matrices=False)
    root = S[:rank].sqrt()
    left, right = U[:, :rank] * root, _unwhiten(root[:, None] * Vh[:rank], L)
    W_hat = left @ right
    return WhitenedFit((left, right), output_error(W64, W_hat, C), _rel(W64, W_hat))


def kronecker_covariance(C: torch.Tensor, n1: int, n2: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The nearest C1 ⊗ C2 to a (n1·n2)² second-moment matrix (Van Loan's rank one of R(C)), with C1 (n1, n1) and
    C2 (n2, n2) symmetric positive semidefinite (the top singular vectors of R(C) of a PSD C can be taken so)."""
    shape = KronShape(n1, n1, n2, n2)
    U, sigma, V = _top_singular(rearrange(C.to(torch.float64), shape), 1)
    C1 = (U[:, 0] * sigma[0].sqrt()).reshape(n1, n1)
    C2 = (V[:, 0] * sigma[0].sqrt()).reshape(n2, n2)
    if C1.trace() < 0:  # the pair's common sign
        C1, C2 = -C1, -C2
    return (C1 + C1.T) / 2, (C2 + C2.T) / 2


def whitened_kronecker(W: torch.Tensor, C: torch.Tensor, a_shape: tuple[int, int], k: int = 1,
                       sweeps: int = 30, ridge: float = RIDGE) -> WhitenedFit:
    """Σ_i A_i ⊗ B_i (k terms, A_i of `a_shape`) with little output error on inputs of second moment C (plus
    `ridge`): Van Loan in the space whitened by the Kronecker-factored C, then up to `sweeps` rounds of
    alternating least squares on the full C. Returns (A (k, m1, n1), B (k, m2, n2)) and its errors."""
    shape = kron_shape(*W.shape, a_shape)
    W64, C = W.detach().to(torch.float64), ridged(C, ridge)
    C1, C2 = kronecker_covariance(C, shape.n1, shape.n2)
    L1, L2 = torch.linalg.cholesky(ridged(C1)), torch.linalg.cholesky(ridged(C2))
    start = van_loan(W64 @ torch.kron(L1, L2), a_shape, k)
    A, B = _unwhiten(start.A, L1), _unwhiten(start.B, L2)
    best = (_objective(W64, A, B, C), A, B)
    for _ in range(sweeps):
        A = _solve_a(W64, B, C, shape)
        B = _solve_b(W64, A, C, shape)
        value, previous = _objective(W64, A, B, C), best[0]
        if value < previous:
            best = (value, A, B)
        if value > previous * (1 - 1e-4):  # less than 0.01% better: converged
            break
    _, A, B = best
    W_hat = _reconstruct(A, B)
    return WhitenedFit((A, B), output_error(W64, W_hat, C), _rel(W64, W_hat))


def _unwhiten(F: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """F · L⁻¹ for F (..., m, n) and L (n, n) lower triangular: the X with X·L = F."""
    F = F.to(torch.float64)
    return torch.linalg.solve_triangular(L, F, upper=False, left=False)


def _reconstruct(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    k, m1, n1 = A.shape
    _, m2, n2 = B.shape
    return torch.einsum("iac,ibd->abcd", A, B).reshape(m1 * m2, n1 * n2)


def _objective(W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> float:
    E = W - _reconstruct(A, B)
    return float((E * (E @ C)).sum())


def _solve_a(W: torch.Tensor, B: torch.Tensor, C: torch.Tensor, shape: KronShape) -> torch.Tensor:
    """The A (k, m1, n1) minimising tr(E C Eᵀ) for fixed B: one (k·n1)² system, every row block of A at once."""
    k = B.shape[0]
    m1, n1, m2, n2 = shape.m1, shape.n1, shape.m2, shape.n2
    C4 = C.reshape(n1, n2, n1, n2)
    G = torch.einsum("ibd,jbe->ijde", B, B)  # Σ_b B_i[b, d] B_j[b, d']
    H = torch.einsum("cdCe,ijde->icjC", C4, G).reshape(k * n1, k * n1)
    WC = (W @ C).reshape(m1, m2, n1, n2)
    rhs = torch.einsum("abcd,ibd->aic", WC, B).reshape(m1, k * n1)
    A = _spd_solve(H, rhs.T).T  # (m1, k·n1)
    return A.reshape(m1, k, n1).permute(1, 0, 2).contiguous()


def _solve_b(W: torch.Tensor, A: torch.Tensor, C: torch.Tensor, shape: KronShape) -> torch.Tensor:
    """The B (k, m2, n2) minimising tr(E C Eᵀ) for fixed A."""
    k = A.shape[0]
    m1, n1, m2, n2 = shape.m1, shape.n1, shape.m2, shape.n2
    C4 = C.reshape(n1, n2, n1, n2)
    G = torch.einsum("iac,jae->ijce", A, A)  # Σ_a A_i[a, c] A_j[a, c']
    H = torch.einsum("cdeD,ijce->idjD", C4, G).reshape(k * n2, k * n2)
    WC = (W @ C).reshape(m1, m2, n1, n2)
    rhs = torch.einsum("abcd,iac->bid", WC, A).reshape(m2, k * n2)
    B = _spd_solve(H, rhs.T).T  # (m2, k·n2)
    return B.reshape(m2, k, n2).permute(1, 0, 2).contiguous()


def _spd_solve(H: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """H⁻¹·rhs for a symmetric positive semidefinite H (a tiny ridge where it is singular: terms that are 0)."""
    H = (H + H.T) / 2
    jitter = 1e-12 * H.diagonal().abs().mean().clamp_min(1e-300)
    factor, info = torch.linalg.cholesky_ex(H + jitter * torch.eye(H.shape[0], dtype=H.dtype))
    if int(info) == 0:
        return torch.cholesky_solve(rhs, factor)
    return torch.linalg.lstsq(H, rhs).solution


def _rel(W: torch.Tensor, W_hat: torch.Tensor) -> float:
    norm = W.norm()
    return float((W - W_hat).norm() / norm) if norm > 0 else 0.0
