"""The general factor-gradient kernels, for any shape: dA and M (hence dB, ds) as token reductions of G · x.

With G viewed per token as (m1, m2) and x as (n1, n2):

- dA_i[a, c] = s_i Σ_t Σ_d (Σ_b G[t,a,b] B_i[b,d]) x[t,c,d]     (`kron_grad_a`)
- M_i[b, d]  =     Σ_t Σ_a G[t,a,b] (Σ_c A_i[a,c] x[t,c,d])     (`kron_grad_m`), from which
  dB_i = s_i M_i and ds_i = ⟨B_i, M_i⟩.

Both contract the small inner dimension in registers and the large one on the tensor cores, over the
smaller of n2 and m2. When m2 < n2 the same kernels run on the transposed problem (x ↔ G, A ↔ Aᵀ,
B ↔ Bᵀ), which yields dAᵀ and Mᵀ: the outputs are written through transposed strides, never copied.
Programs split the tokens; partial results are added atomically into float32 buffers (run-to-run
differences are rounding-level; everything stays on the device, so the pass can be graph-captured).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kronypt.kernels.tiles import load_a, load_x, mma, pick_x
from kronypt.kernels.tuning import (
    FACTOR_GRAD_CONFIGS,
    cdiv,
    dot_flags,
    launch,
    next_pow2,
    prune_factor_grads,
    sm_count,
    token_bucket,
    tuned,
)

GRAD_A_KEY = ["T_BUCKET", "M1", "N1", "M2", "N2", "K", "HAS_S"]
GRAD_M_KEY = ["T_BUCKET", "M1", "N1", "M2", "N2", "K"]
# Token slices are multiples of the largest BLOCK_T so that no config straddles two slices.
SLICE_ALIGN = 128


@triton.jit
def _grad_a_kernel(
    X, G, B, S, DA,
    T, T_BUCKET, T_SLICE, stride_xt, stride_gt,
    stride_bk: tl.constexpr, stride_bm: tl.constexpr, stride_bn: tl.constexpr,
    stride_dk: tl.constexpr, stride_dm: tl.constexpr, stride_dn: tl.constexpr,
    M1: tl.constexpr, N1: tl.constexpr, M2: tl.constexpr, N2: tl.constexpr, M2P: tl.constexpr,
    N2P: tl.constexpr, K: tl.constexpr, HAS_S: tl.constexpr, DOT_F32: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_C: tl.constexpr,
):
    num_a = tl.cdiv(M1, BLOCK_A)
    num_c = tl.cdiv(N1, BLOCK_C)
    pid = tl.program_id(0)
    i = pid // (num_a * num_c)
    pid_a = (pid // num_c) % num_a
    pid_c = pid % num_c
    offs_a = pid_a * BLOCK_A + tl.arange(0, BLOCK_A)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_b = tl.arange(0, M2P)
    offs_d = tl.arange(0, N2P)
    mask_a = offs_a < M1
    mask_c = offs_c < N1
    g_cols = offs_a[:, None] * M2 + offs_b[None, :]
    mask_g = mask_a[:, None] & (offs_b < M2)[None, :]
    t_start = tl.program_id(1) * T_SLICE
    t_end = tl.minimum(T, t_start + T_SLICE)

    acc = tl.zeros((BLOCK_A, BLOCK_C), dtype=tl.float32)
    for t0 in range(t_start, t_end, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        mask_t = offs_t < t_end
        rows = offs_t.to(tl.int64)
        g3 = tl.load(G + rows[:, None, None] * stride_gt + g_cols[None, :, :],  # kept narrow: fewer registers
                     mask=mask_t[:, None, None] & mask_g[None, :, :], other=0.0)
        x_tile = load_x(X + rows[:, None] * stride_xt, pid_c * BLOCK_C, mask_t, N1, N2, N2P, BLOCK_C)
        for d in range(N2):
            b_col = tl.load(B + i * stride_bk + offs_b * stride_bm + d * stride_bn, mask=offs_b < M2, other=0.0)
            h = tl.sum(g3.to(tl.float32) * b_col.to(tl.float32)[None, None, :], axis=2)  # (T, A)
            xd = pick_x(x_tile, tl.where(offs_d == d, 1.0, 0.0), N2P)
            acc = mma(tl.trans(h.to(X.dtype.element_ty)), xd, acc, DOT_F32, IEEE)
    if HAS_S:
        acc = acc * tl.load(S + i).to(tl.float32)
    tl.atomic_add(DA + i * stride_dk + offs_a[:, None] * stride_dm + offs_c[None, :] * stride_dn, acc,
                  mask=mask_a[:, None] & mask_c[None, :])


@triton.jit
def _grad_m_kernel(
    X, G, A, MOUT,
    T, T_BUCKET, T_SLICE, stride_xt, stride_gt,
    stride_ak: tl.constexpr, stride_am: tl.constexpr, stride_an: tl.constexpr,
    stride_mk: tl.constexpr, stride_mm: tl.constexpr, stride_mn: tl.constexpr,
    M1: tl.constexpr, N1: tl.constexpr, M2: tl.constexpr, N2: tl.constexpr, M2P: tl.constexpr,
    N2P: tl.constexpr, K: tl.constexpr, KP: tl.constexpr, DOT_F32: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_a = tl.program_id(0)
    offs_a = pid_a * BLOCK_A + tl.arange(0, BLOCK_A)
    offs_b = tl.arange(0, M2P)
    offs_d = tl.arange(0, N2P)
    offs_k = tl.arange(0, KP)
    mask_a = offs_a < M1
    g_cols = offs_a[:, None] * M2 + offs_b[None, :]
    mask_g = mask_a[:, None] & (offs_b < M2)[None, :]
    t_start = tl.program_id(1) * T_SLICE
    t_end = tl.minimum(T, t_start + T_SLICE)

    # N1 <= BLOCK_C (a compile-time test): all of n1 in one block: read each token tile once
    acc = tl.zeros((KP, M2P, N2P), dtype=tl.float32)  # M for every factor, filled one (i, d) at a time
    for t0 in range(t_start, t_end, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        mask_t = offs_t < t_end
        rows = offs_t.to(tl.int64)
        x_rows = X + rows[:, None] * stride_xt
        g3 = tl.load(G + rows[:, None, None] * stride_gt + g_cols[None, :, :],
                     mask=mask_t[:, None, None] & mask_g[None, :, :], other=0.0)
        if N1 <= BLOCK_C:
            x_tile = load_x(x_rows, 0, mask_t, N1, N2, N2P, BLOCK_C)
        for i in range(K):
            if N1 <= BLOCK_C:
                a_tile = load_a(A, i, 0, offs_a, stride_ak, stride_am, stride_an, M1, N1, BLOCK_C)
            for d in range(N2):
                u = tl.where(offs_d == d, 1.0, 0.0)
                z = tl.zeros((BLOCK_T, BLOCK_A), dtype=tl.float32)  # Z[t, a] = Σ_c A_i[a, c] x[t, c, d]
                if N1 <= BLOCK_C:
                    z = mma(pick_x(x_tile, u, N2P), a_tile, z, DOT_F32, IEEE)
                else:
                    for c0 in range(0, N1, BLOCK_C):
                        xd = pick_x(load_x(x_rows, c0, mask_t, N1, N2, N2P, BLOCK_C), u, N2P)
                        a_tile = load_a(A, i, c0, offs_a, stride_ak, stride_am, stride_an, M1, N1, BLOCK_C)
                        z = mma(xd, a_tile, z, DOT_F32, IEEE)
                m = tl.sum(tl.sum(g3.to(tl.float32) * z[:, :, None], axis=0), axis=0)  # (M2P,) = M_i[:, d]
                here = (offs_k == i)[:, None, None] & (offs_d == d)[None, None, :]
                acc += tl.where(here, m[None, :, None], 0.0)
    out = (MOUT + offs_k[:, None, None] * stride_mk + offs_b[None, :, None] * stride_mm
           + offs_d[None, None, :] * stride_mn)
    mask = (offs_k < K)[:, None, None] & (offs_b < M2)[None, :, None] & (offs_d < N2)[None, None, :]
    tl.atomic_add(out, acc, mask=mask)


_grad_a_tuned = tuned(_grad_a_kernel, FACTOR_GRAD_CONFIGS, GRAD_A_KEY, prune_factor_grads, reset=["DA"])
_grad_m_tuned = tuned(_grad_m_kernel, FACTOR_GRAD_CONFIGS, GRAD_M_KEY, prune_factor_grads, reset=["MOUT"])


def _token_slice(tokens: int, tiles: int, device: torch.device) -> int:
    """Tokens per program along the split axis: enough programs to fill the GPU about twice."""
    slices = max(1, min(cdiv(2 * sm_count(device), max(tiles, 1)), cdiv(tokens, SLICE_ALIGN)))
    return cdiv(cdiv(tokens, slices), SLICE_ALIGN) * SLICE_ALIGN


def _common(x: torch.Tensor, g: torch.Tensor, k: int, m1: int, n1: int, m2: int, n2: int,
            tiles: int) -> dict:
    T = x.shape[0]
    return dict(
        X=x, G=g, T=T, T_BUCKET=token_bucket(T), T_SLICE=_token_slice(T, tiles, x.device),
        stride_xt=x.stride(0), stride_gt=g.stride(0), M1=m1, N1=n1, M2=m2, N2=n2,
        M2P=next_pow2(m2), N2P=next_pow2(n2), K=k, **dot_flags(x.dtype),
    )


def kron_grad_a(x: torch.Tensor, g: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                scalars: torch.Tensor | None) -> torch.Tensor:
    """dA (k, m1, n1) in float32 for x (T, n1·n2) and the output gradient g (T, m1·m2)."""
    k, m1, n1 = A.shape
    _, m2, n2 = B.shape
    out = torch.zeros(k, m1, n1, device=x.device, dtype=torch.float32)
    if n2 > m2:  # transposed problem: contract x with B over n2 in registers, loop over m2
        x, g, B, dst = g, x, B.transpose(1, 2), out.transpose(1, 2)
        m1, n1, m2, n2 = n1, m1, n2, m2
    else:
        dst = out
    args = dict(
        **_common(x, g, k, m1, n1, m2, n2, tiles=k * cdiv(m1, 64) * cdiv(n1, 64)),
        B=B, S=scalars if scalars is not None else out, DA=dst,
        stride_bk=B.stride(0), stride_bm=B.stride(1), stride_bn=B.stride(2),
        stride_dk=dst.stride(0), stride_dm=dst.stride(1), stride_dn=dst.stride(2), HAS_S=scalars is not None,
    )

    def grid(meta: dict) -> tuple[int, int]:
        tiles = k * cdiv(m1, meta["BLOCK_A"]) * cdiv(n1, meta["BLOCK_C"])
        return tiles, cdiv(args["T"], args["T_SLICE"])

    launch(_grad_a_tuned, FACTOR_GRAD_CONFIGS, grid, args)
    return out


def kron_grad_m(x: torch.Tensor, g: torch.Tensor, A: torch.Tensor, m2: int, n2: int) -> torch.Tensor:
    """M (k, m2, n2) in float32, M_i[b, d] = Σ_{t,a,c} G[t,a,b] A_i[a,c] x[t,c,d]."""
    k, m1, n1 = A.shape
    out = torch.zeros(k, m2, n2, device=x.device, dtype=torch.float32)
    if n2 > m2:  # transposed problem: the tensor cores contract G with A over m1, loop over m2
        x, g, A, dst = g, x, A.transpose(1, 2), out.transpose(1, 2)
        m1, n1, m2, n2 = n1, m1, n2, m2
    else:
        dst = out
    args = dict(
        **_common(x, g, k, m1, n1, m2, n2, tiles=cdiv(m1, 64)),
        A=A, MOUT=dst, stride_ak=A.stride(0), stride_am=A.stride(1), stride_an=A.stride(2),
        stride_mk=dst.stride(0), stride_mm=dst.stride(1), stride_mn=dst.stride(2),
        KP=next_pow2(k),
    )

    def grid(meta: dict) -> tuple[int, int]:
        return cdiv(m1, meta["BLOCK_A"]), cdiv(args["T"], args["T_SLICE"])

    launch(_grad_m_tuned, FACTOR_GRAD_CONFIGS, grid, args)
    return out
