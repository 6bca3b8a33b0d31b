"""The general forward kernel, for any shape: y = x · (Σ_i s_i A_i ⊗ B_i)ᵀ + b (+ gelu_new), one launch.

Per token, with x viewed as X (n1, n2) and y as Y (m1, m2): Y = Σ_i s_i A_i X B_iᵀ. `kron_forward` sends
large B factors (m2, n2 ≥ 9) to `kronypt.kernels.large_b_forward` and the rest to the kernel here, which
applies B in registers. One program owns BLOCK_T tokens × BLOCK_A rows of A, i.e. the contiguous output
columns [a0·m2, (a0+BLOCK_A)·m2). For each factor i and each j of the small inner dimension it runs one
tensor-core GEMM over the n1 axis and folds the (BLOCK_T, BLOCK_A) result into a (BLOCK_T, BLOCK_A, m2)
accumulator with B in registers:

- A first (n2 ≤ m2):  P = X[:, :, j] · A_iᵀ,                 acc[:, :, b] += s_i B_i[b, j] · P
- B first (n2 > m2):  P = (Σ_d B_i[j, d] X[:, :, d]) · A_iᵀ,  acc[:, :, j] += s_i · P

so the tensor cores do k·m1·n1·min(m2, n2) multiply-adds per token and the registers the small rest.
x is read from memory once (the other A-row blocks of a token tile re-read it from L2), y is written
once; bias, the saved pre-activation and the activation are in the epilogue.

The same kernels compute the input gradient, grad_x = grad_y · (Σ s_i A_iᵀ ⊗ B_iᵀ), from transposed strides
of A and B, and can sum their input over tokens on the way (`colsum`): the bias gradient in the same pass.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from kronypt.kernels.availability import uses_large_b_kernel
from kronypt.kernels.large_b_forward import large_b_kernel
from kronypt.kernels.tiles import add_colsum, load_a, load_x, mma, pick_x, store_output, token_tile
from kronypt.kernels.tuning import (
    FORWARD_CONFIGS,
    LARGE_B_CONFIGS,
    cdiv,
    dot_flags,
    launch,
    next_pow2,
    prune_forward,
    prune_large_b,
    token_bucket,
    tuned,
)

# The factor strides tell the forward (contiguous A) from grad_x (A transposed) of a square layer.
FORWARD_KEY = ["T_BUCKET", "M1", "N1", "M2", "N2", "K", "HAS_S", "HAS_BIAS", "ACT", "SAVE_PRE", "COLSUM",
               "stride_am", "stride_an", "stride_bm", "stride_bn"]


@triton.jit
def _forward_kernel(
    X, A, B, S, BIAS, Y, PRE, COLS,
    T, T_BUCKET, stride_xt, stride_yt,
    stride_ak: tl.constexpr, stride_am: tl.constexpr, stride_an: tl.constexpr,
    stride_bk: tl.constexpr, stride_bm: tl.constexpr, stride_bn: tl.constexpr,
    M1: tl.constexpr, N1: tl.constexpr, M2: tl.constexpr, N2: tl.constexpr,
    M2P: tl.constexpr, N2P: tl.constexpr, K: tl.constexpr, A_FIRST: tl.constexpr, J: tl.constexpr,
    HAS_S: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, SAVE_PRE: tl.constexpr,
    COLSUM: tl.constexpr, DOT_F32: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # N1 <= BLOCK_C (a compile-time test): all of n1 in one block: read the token tile once
    pid_a, offs_t, offs_a = token_tile(tl.program_id(0), M1, BLOCK_T, BLOCK_A)
    offs_b = tl.arange(0, M2P)
    offs_d = tl.arange(0, N2P)
    mask_t = offs_t < T
    x_rows = X + offs_t.to(tl.int64)[:, None] * stride_xt  # (BLOCK_T, 1)

    if N1 <= BLOCK_C:
        x_tile = load_x(x_rows, 0, mask_t, N1, N2, N2P, BLOCK_C)
        if COLSUM:
            if pid_a == 0:
                add_colsum(COLS, x_tile, 0, N1, N2, N2P, BLOCK_C)
    acc = tl.zeros((BLOCK_T, BLOCK_A, M2P), dtype=tl.float32)
    for i in range(K):
        s = 1.0
        if HAS_S:
            s = tl.load(S + i).to(tl.float32)
        if N1 <= BLOCK_C:
            a_tile = load_a(A, i, 0, offs_a, stride_ak, stride_am, stride_an, M1, N1, BLOCK_C)
        for j in range(J):  # J = n2 (A first) or m2 (B first)
            if A_FIRST:  # pick x[:, :, j]; column j of B_i spreads the GEMM result over every b
                u = tl.where(offs_d == j, 1.0, 0.0)
                w = tl.load(B + i * stride_bk + offs_b * stride_bm + j * stride_bn, mask=offs_b < M2, other=0.0)
                w = w.to(tl.float32) * s
            else:  # row j of B_i contracts x over d; the result lands in column b = j
                u = tl.load(B + i * stride_bk + j * stride_bm + offs_d * stride_bn, mask=offs_d < N2, other=0.0)
                u = u.to(tl.float32)
                w = tl.where(offs_b == j, s, 0.0)
            part = tl.zeros((BLOCK_T, BLOCK_A), dtype=tl.float32)
            if N1 <= BLOCK_C:
                part = mma(pick_x(x_tile, u, N2P), a_tile, part, DOT_F32, IEEE)
            else:
                for c0 in range(0, N1, BLOCK_C):
                    tile = load_x(x_rows, c0, mask_t, N1, N2, N2P, BLOCK_C)
                    if COLSUM:
                        if (i == 0) & (j == 0) & (pid_a == 0):
                            add_colsum(COLS, tile, c0, N1, N2, N2P, BLOCK_C)
                    a_tile = load_a(A, i, c0, offs_a, stride_ak, stride_am, stride_an, M1, N1, BLOCK_C)
                    part = mma(pick_x(tile, u, N2P), a_tile, part, DOT_F32, IEEE)
            acc += part[:, :, None] * w[None, None, :]

    store_output(acc, offs_t, offs_a, T, stride_yt, BIAS, Y, PRE, M1, M2, M2P, HAS_BIAS, SAVE_PRE, ACT)


# Tuning re-runs a kernel: the column sums it adds atomically must start from zero each time.
_forward_tuned = tuned(_forward_kernel, FORWARD_CONFIGS, FORWARD_KEY, prune_forward, reset=["COLS"])
_large_b_tuned = tuned(large_b_kernel, LARGE_B_CONFIGS, FORWARD_KEY, prune_large_b, reset=["COLS"])

@functools.cache
def _no_colsum(device: torch.device) -> torch.Tensor:
    """A fixed one-element stand-in for COLS when no column sums are wanted (graph-safe, never written)."""
    return torch.zeros(1, device=device, dtype=torch.float32)


def kron_forward(
    x: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    scalars: torch.Tensor | None,
    bias: torch.Tensor | None,
    act: int = 0,
    save_pre: bool = False,
    colsum: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel on a 2-D x (T, n1·n2) with unit stride along features.

    A (k, m1, n1) and B (k, m2, n2) may be strided views (transposes for grad_x). Returns (y, pre) where
    pre is the pre-activation when `save_pre`, else an empty tensor. With `colsum` (a zeroed float32
    tensor of n1·n2 elements) the kernel also adds x summed over tokens into it.
    """
    T = x.shape[0]
    k, m1, n1 = A.shape
    _, m2, n2 = B.shape
    y = torch.empty(T, m1 * m2, device=x.device, dtype=x.dtype)
    pre = torch.empty_like(y) if save_pre else y.new_empty(0)
    args = dict(
        X=x, A=A, B=B, S=scalars if scalars is not None else y, BIAS=bias if bias is not None else y,
        Y=y, PRE=pre if save_pre else y, COLS=colsum if colsum is not None else _no_colsum(x.device),
        T=T, T_BUCKET=token_bucket(T), stride_xt=x.stride(0), stride_yt=y.stride(0),
        stride_ak=A.stride(0), stride_am=A.stride(1), stride_an=A.stride(2),
        stride_bk=B.stride(0), stride_bm=B.stride(1), stride_bn=B.stride(2),
        M1=m1, N1=n1, M2=m2, N2=n2, M2P=next_pow2(m2), N2P=next_pow2(n2), K=k,
        HAS_S=scalars is not None, HAS_BIAS=bias is not None, ACT=act, SAVE_PRE=save_pre,
        COLSUM=colsum is not None, **dot_flags(x.dtype),
    )

    def grid(meta: dict) -> tuple[int]:
        return (cdiv(T, meta["BLOCK_T"]) * cdiv(m1, meta["BLOCK_A"]),)

    if uses_large_b_kernel(m2, n2):
        launch(_large_b_tuned, LARGE_B_CONFIGS, grid, args)
    else:
        launch(_forward_tuned, FORWARD_CONFIGS, grid, {**args, "A_FIRST": n2 <= m2, "J": min(m2, n2)})
    return y, pre
