"""Initial Kronecker factors for a weight W of shape (out, in): Van Loan, pruning, random.

All functions return factors in the (out, in) orientation: A of shape (k, m1, n1), B of shape (k, m2, n2),
scalars of shape (k,), with W ≈ Σ_i scalars[i] · kron(A[i], B[i]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kronypt.errors import KronyptError
from kronypt.math.shapes import KronShape, kron_shape


@dataclass
class Decomposition:
    """Factors of one matrix and how well they approximate it."""

    A: torch.Tensor  # (k, m1, n1)
    B: torch.Tensor  # (k, m2, n2)
    scalars: torch.Tensor  # (k,)
    rel_error: float  # ‖W − Ŵ‖_F / ‖W‖_F

    @property
    def factors(self) -> int:
        return self.A.shape[0]


def kron_reconstruct(A: torch.Tensor, B: torch.Tensor, scalars: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_i s_i · kron(A_i, B_i) as one (m1·m2, n1·n2) matrix, built with a single einsum."""
    k, m1, n1 = A.shape
    _, m2, n2 = B.shape
    if scalars is not None:
        A = A * scalars.to(A.dtype).view(k, 1, 1)
    return torch.einsum("iac,ibd->abcd", A, B).reshape(m1 * m2, n1 * n2)


def rearrange(W: torch.Tensor, shape: KronShape) -> torch.Tensor:
    """Van Loan's R(W): row (i·n1 + j) is the (m2, n2) block W[i·m2:(i+1)·m2, j·n2:(j+1)·n2], flattened.

    kron(A, B) maps to the rank-one matrix vec(A) vec(B)ᵀ, so the nearest sum of k Kronecker products is
    the best rank-k approximation of R(W).
    """
    m1, n1, m2, n2 = shape.m1, shape.n1, shape.m2, shape.n2
    return W.reshape(m1, m2, n1, n2).permute(0, 2, 1, 3).reshape(m1 * n1, m2 * n2)


def _top_singular(R: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact top-k singular triplets of R (float64) via the Gram matrix of its smaller side and eigh."""
    transpose = R.shape[0] < R.shape[1]
    M = R.T if transpose else R  # tall: (rows ≥ cols)
    eigvals, V = torch.linalg.eigh(M.T @ M)  # ascending
    eigvals, V = eigvals.flip(0)[:k], V.flip(1)[:, :k]
    # Eigenvalues of MᵀM below its rounding floor are zero singular values, not noise to amplify.
    floor = eigvals[:1].clamp_min(0) * M.shape[1] * torch.finfo(M.dtype).eps
    sigma = torch.where(eigvals > floor, eigvals, torch.zeros_like(eigvals)).sqrt()
    # U = M V / σ; columns with σ = 0 contribute nothing, keep them zero instead of dividing by zero.
    safe = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
    U = (M @ V) / safe * (sigma > 0)
    return (V, sigma, U) if transpose else (U, sigma, V)


def kronecker_spectrum(W: torch.Tensor, a_shape: tuple[int, int]) -> torch.Tensor:
    """σ_i² of R(W), largest first (float64), one per independent term: the nearest sum of k Kronecker
    products leaves the squared error Σ_{i>k} σ_i², out of ‖W‖_F² = Σ_i σ_i²."""
    shape = kron_shape(*W.shape, a_shape)
    R = rearrange(W.detach().to(torch.float64), shape)
    M = R if R.shape[0] >= R.shape[1] else R.T
    return torch.linalg.eigvalsh(M.T @ M).flip(0).clamp_min(0)


def van_loan(
    W: torch.Tensor,
    a_shape: tuple[int, int],
    k: int = 1,
    rescale: bool = False,
) -> Decomposition:
    """Nearest sum of k Kronecker products to W in Frobenius norm (exact truncated SVD of R(W)).

    Factor i is √σ_i·u_i reshaped to A's shape and √σ_i·v_i reshaped to B's shape; scalars are 1.
    With `rescale`, the factors are scaled by α = ‖W‖_F / ‖Ŵ‖_F so that Ŵ keeps W's norm.
    """
    shape = kron_shape(*W.shape, a_shape)
    check_factors(k, shape.terms())
    W64 = W.detach().to(torch.float64)
    U, sigma, V = _top_singular(rearrange(W64, shape), k)
    root = sigma.sqrt()
    A = (U * root).T.reshape(k, shape.m1, shape.n1)
    B = (V * root).T.reshape(k, shape.m2, shape.n2)
    if rescale:
        norm_hat = sigma.square().sum().sqrt()
        alpha = (W64.norm() / norm_hat).sqrt() if norm_hat > 0 else torch.ones((), dtype=torch.float64)
        A, B = A * alpha, B * alpha
    return _finish(W64, A, B, torch.ones(k, dtype=torch.float64), W.dtype)


def prune_init(W: torch.Tensor, a_shape: tuple[int, int], k: int = 1, fill: float = 0.0) -> Decomposition:
    """Keep one entry of every (m2, n2) block of W: the paper's 96M-prune init, generalised.

    Term i keeps block position i (row-major): A_i[a, c] = W[a·m2 + p_i, c·n2 + q_i], and B_i is one at
    (p_i, q_i) and `fill` elsewhere. For (1, 2) blocks of c_fc this keeps the even input columns with
    B = [1, 0] (`fill=0`) or B = [1, 0.1] (`fill=0.1`); with k = m2·n2 and fill 0 it reproduces W exactly.
    """
    shape = kron_shape(*W.shape, a_shape)
    check_factors(k, shape.m2 * shape.n2)
    W64 = W.detach().to(torch.float64)
    blocks = W64.reshape(shape.m1, shape.m2, shape.n1, shape.n2)
    A = torch.empty(k, shape.m1, shape.n1, dtype=torch.float64)
    B = torch.full((k, shape.m2, shape.n2), float(fill), dtype=torch.float64)
    for i in range(k):
        p, q = divmod(i, shape.n2)
        A[i] = blocks[:, p, :, q]
        B[i, p, q] = 1.0
    return _finish(W64, A, B, torch.ones(k, dtype=torch.float64), W.dtype)


def random_init(
    out_features: int,
    in_features: int,
    a_shape: tuple[int, int],
    k: int = 1,
    std: float = 0.02,
    generator: torch.Generator | None = None,
    weight: torch.Tensor | None = None,
) -> Decomposition:
    """GPT-2-style random factors: entries of Σ_i A_i ⊗ B_i have standard deviation `std`.

    Each of A and B is normal with std (std / √k)^½, so each product term has std std/√k and the k
    independent terms sum to std. `rel_error` is measured against `weight` (the matrix being replaced)
    when it is given, else reported against a zero matrix as 1.0.
    """
    shape = kron_shape(out_features, in_features, a_shape)
    check_factors(k, shape.terms())
    factor_std = math.sqrt(std / math.sqrt(k))
    A = torch.randn(k, shape.m1, shape.n1, generator=generator, dtype=torch.float64) * factor_std
    B = torch.randn(k, shape.m2, shape.n2, generator=generator, dtype=torch.float64) * factor_std
    if weight is not None:
        return _finish(weight.to(torch.float64), A, B, torch.ones(k, dtype=torch.float64), torch.float32)
    return Decomposition(A.float(), B.float(), torch.ones(k), rel_error=1.0)


def relative_error(W: torch.Tensor, W_hat: torch.Tensor) -> float:
    """‖W − Ŵ‖_F / ‖W‖_F in float64 (0 for W = 0 = Ŵ)."""
    W64, H64 = W.to(torch.float64), W_hat.to(torch.float64)
    norm = W64.norm().item()
    diff = (W64 - H64).norm().item()
    return diff / norm if norm > 0 else float(diff > 0)


def _finish(W64: torch.Tensor, A: torch.Tensor, B: torch.Tensor, s: torch.Tensor, dtype) -> Decomposition:
    error = relative_error(W64, kron_reconstruct(A, B, s).to(W64.device))  # factors may be built on the CPU
    out_dtype = dtype if dtype.is_floating_point else torch.float32
    return Decomposition(A.to(out_dtype), B.to(out_dtype), s.to(out_dtype), rel_error=error)


def check_factors(k: int, limit: int) -> None:
    """Refuse k < 1, or more factors than the `limit` independent terms the shape (or init) admits."""
    if k < 1:
        raise KronyptError(f"the number of factors must be at least 1, got {k}")
    if k > limit:
        raise KronyptError(f"{k} factors exceed the {limit} independent terms this shape admits")
