"""Forward paths of y = x · (Σ_i s_i A_i ⊗ B_i)ᵀ + b, as plain tensor functions.

Shapes: x (..., n1·n2), A (k, m1, n1), B (k, m2, n2), scalars (k,) or None, bias (m1·m2,) or None.
For one token, (A ⊗ B) x = vec(A · X · Bᵀ) with X = x reshaped (n1, n2) row-major.

The factored paths are two plain 2-D GEMMs each: the k terms are folded into the GEMM dimension, A is
used through a free view, and the scalars are folded into the small factor. (A three-operand einsum may
contract A with B first, i.e. build W, and a 2-D × 3-D matmul can run one tiny product per token.)
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from kronypt.math.decompose import kron_reconstruct

Order = Literal["a_first", "b_first"]


def kron_linear_factored(
    x: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    scalars: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    order: Order = "a_first",
) -> torch.Tensor:
    """Apply the Kronecker layer without building W, contracting A first or B first.

    Under autocast the result has the autocast dtype, as `F.linear`'s (and the materialised path's) does.
    """
    if torch.is_autocast_enabled(x.device.type) and x.dtype != torch.float64:  # autocast leaves float64 be
        B, scalars, bias = _autocast_small(x.device.type, B, scalars, bias)
    k, m1, n1 = A.shape
    _, m2, n2 = B.shape
    if k == 1 and (n2 == 1 if order == "a_first" else m2 == 1):
        return _single_term_vector_b(x, A, B, scalars, bias, order)
    lead = x.shape[:-1]
    t = x.reshape(-1, n1 * n2)
    T = t.shape[0]
    if order == "a_first":
        # Z[t, d, i, a] = Σ_c X[t, c, d] A_i[a, c]
        xt = t.view(T, n1, n2).transpose(1, 2).reshape(T * n2, n1)
        z = (xt @ A.reshape(k * m1, n1).T).view(T, n2, k, m1)
        # y[t, a, b] = Σ_(d, i) Z[t, d, i, a] · s_i B_i[b, d]
        small = B if scalars is None else B * scalars.view(k, 1, 1).to(B.dtype)
        small = small.permute(2, 0, 1).reshape(n2 * k, m2)
        if n2 * k == 1:  # an outer product: one pass writes y, bias included (the 81M/86M/96M c_fc shapes)
            z = z.view(T, m1, 1)
            y = z * small if bias is None else torch.addcmul(bias.view(m1, m2), z, small)
            return y.view(*lead, m1 * m2)
        y = (z.permute(0, 3, 1, 2).reshape(T * m1, n2 * k) @ small).view(T, m1 * m2)
    else:
        # Z[t, c, i, b] = Σ_d X[t, c, d] B_i[b, d]
        z = (t.reshape(T * n1, n2) @ B.reshape(k * m2, n2).T).view(T, n1, k, m2)
        # y[t, b, a] = Σ_(c, i) Z[t, c, i, b] · s_i A_i[a, c], then back to (t, a, b)
        small = A if scalars is None else A * scalars.view(k, 1, 1).to(A.dtype)
        z = z.permute(0, 3, 1, 2).reshape(T * m2, n1 * k)
        small = small.permute(2, 0, 1).reshape(n1 * k, m1)
        if m2 == 1:  # y is already in (t, a) order: let the GEMM add the bias (the 81M/86M/96M c_proj shapes)
            y = z @ small if bias is None else torch.addmm(bias, z, small)
            return y.view(*lead, m1)
        y = (z @ small).view(T, m2, m1).transpose(1, 2).reshape(T, m1 * m2)
    if bias is not None:
        y = y + bias
    return y.view(*lead, m1 * m2)


def _autocast_small(device_type: str, *tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """The small operands in the autocast dtype. The GEMMs cast x and A themselves (autocast caches A's cast
    within its region); the elementwise products and bias additions do not, and a float32 B or bias would
    promote the output back to float32."""
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t
                 for t in tensors)


# From this many tokens, a row B's few entries contract strided slices of the input instead of one matmul over a
# trailing dimension of 2..8, which vectorises poorly: on a 2-core CPU in float32 the 1024-token contraction of
# SmolLM2's down_proj at half its parameters takes 0.47 ms this way and 1.14 ms as one matmul. Below it the single
# matmul is fewer operators per call (eager decoding).
SLICED_TOKENS = 256
SLICED_ENTRIES = 8


def _single_term_vector_b(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scalars: torch.Tensor | None,
                          bias: torch.Tensor | None, order: Order) -> torch.Tensor:
    """k = 1 with B a column (A first) or a row (B first): the 81M/86M/96M c_fc and c_proj shapes, and SmolLM2's
    MLP at half its parameters.

    Then no reshuffle is needed at all, only one GEMM against A and the vector B: one broadcast, or for a row B
    and many tokens one strided slice per entry (few operators per call either way: what eager decoding pays).
    """
    _, m1, n1 = A.shape
    b = B.reshape(-1)  # the m2 (column) or n2 (row) entries of B
    if scalars is not None:  # scaling the vector is cheaper than scaling A
        b = b * scalars.to(b.dtype)
    if order == "a_first":  # y[..., a, j] = (x·A_0ᵀ)[..., a] · s·B[j, 0] + bias
        z = F.linear(x, A[0]).unsqueeze(-1)
        y = z * b if bias is None else torch.addcmul(bias.view(m1, -1), z, b)
        return y.flatten(-2)
    # y[..., a] = Σ_c A_0[a, c] · (Σ_d x[..., c, d] · s·B[0, d]) + bias
    if x.numel() >= SLICED_TOKENS * x.shape[-1] and b.numel() <= SLICED_ENTRIES:
        n2 = b.numel()
        u = x[..., 0::n2] * b[0]
        for d in range(1, n2):
            u = torch.addcmul(u, x[..., d::n2], b[d])
        return F.linear(u, A[0], bias)
    return F.linear(x.unflatten(-1, (n1, -1)) @ b, A[0], bias)


def gated_vector_b(x: torch.Tensor, gate: tuple[torch.Tensor, torch.Tensor], up: tuple[torch.Tensor, torch.Tensor],
                   down: tuple[torch.Tensor, torch.Tensor], act) -> torch.Tensor:
    """A gated MLP, down(act(gate(x)) · up(x)), whose three matrices are single Kronecker terms with vector B:
    gate and up A (m1, n) ⊗ b (p, 1), down A (n, m1) ⊗ b (1, p). Each pair is (A, b), A (m1, n) or (n, m1), b (p,).

    Hidden unit (c, j) is act(z_g[c]·b_g[j]) · z_u[c]·b_u[j] with z = x·Aᵀ, and down contracts it with b_d[j]
    before its A: so the (tokens, m1·p) activations are never laid out, only p slices of (tokens, m1), each
    contiguous (the per-layer paths interleave the p entries, which vectorises poorly).
    """
    (a_g, b_g), (a_u, b_u), (a_d, b_d) = gate, up, down
    z_g, z_u = F.linear(x, a_g), F.linear(x, a_u)
    weights = b_u * b_d  # b_u[j] and b_d[j] both scale slice j linearly
    u = None
    for j in range(b_g.numel()):
        h = act(z_g * b_g[j]) * z_u
        u = h * weights[j] if u is None else torch.addcmul(u, h, weights[j])
    return F.linear(u, a_d)


def kron_linear_materialised(
    x: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    scalars: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Build W once (one einsum) and run a dense `F.linear`."""
    return F.linear(x, kron_reconstruct(A, B, scalars), bias)
