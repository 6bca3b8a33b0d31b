"""Forward kernel for large B factors (m2, n2 ≥ 9, e.g. MF1's (12, 12), 67M's (48, 24)): both contractions
on the tensor cores.

The general kernel of `kronypt.kernels.general_forward` applies B in registers: k·m1·m2·n2 CUDA-core FMAs
per token, and its x tile re-read once per column of B; for large B that dominates. Here one program owns
BLOCK_T tokens × BLOCK_A rows of A and, per factor i:

1. Z = A_i[a-block, :] · X'  with X'[c, (t, d)] = x[t, c, d]: one GEMM (BLOCK_A × n1) @ (n1 × BLOCK_T·n2)
   over c-blocks, the x slab permuted in registers (no strided loads);
2. acc += Z' · (s_i B_iᵀ) with Z' = Z viewed as (BLOCK_A·BLOCK_T, n2): one GEMM with K = n2, N = m2.

Tensor-core multiply-adds per token: k·m1·n2p·(n1 + m2p) with n2p, m2p the padded sizes (MF1: 14 % of
dense); x is read once per A-row block, y written once through the shared epilogue. `general_forward`
launches it (`kron_forward`) with the same arguments as its own kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kronypt.kernels.tiles import add_colsum, load_a, load_x, mma, store_output, token_tile


@triton.jit
def large_b_kernel(
    X, A, B, S, BIAS, Y, PRE, COLS,
    T, T_BUCKET, stride_xt, stride_yt,
    stride_ak: tl.constexpr, stride_am: tl.constexpr, stride_an: tl.constexpr,
    stride_bk: tl.constexpr, stride_bm: tl.constexpr, stride_bn: tl.constexpr,
    M1: tl.constexpr, N1: tl.constexpr, M2: tl.constexpr, N2: tl.constexpr,
    M2P: tl.constexpr, N2P: tl.constexpr, K: tl.constexpr,
    HAS_S: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, SAVE_PRE: tl.constexpr,
    COLSUM: tl.constexpr, DOT_F32: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_a, offs_t, offs_a = token_tile(tl.program_id(0), M1, BLOCK_T, BLOCK_A)
    offs_b = tl.arange(0, M2P)
    offs_d = tl.arange(0, N2P)
    mask_t = offs_t < T
    x_rows = X + offs_t.to(tl.int64)[:, None] * stride_xt

    acc = tl.zeros((BLOCK_A * BLOCK_T, M2P), dtype=tl.float32)  # rows (a, t)
    for i in range(K):
        s = 1.0
        if HAS_S:
            s = tl.load(S + i).to(tl.float32)
        bt = tl.load(B + i * stride_bk + offs_d[:, None] * stride_bn + offs_b[None, :] * stride_bm,
                     mask=(offs_d < N2)[:, None] & (offs_b < M2)[None, :], other=0.0)
        bt = (bt.to(tl.float32) * s).to(X.dtype.element_ty)  # (N2P, M2P) = s_i B_iᵀ, zero-padded
        z = tl.zeros((BLOCK_A, BLOCK_T * N2P), dtype=tl.float32)
        for c0 in range(0, N1, BLOCK_C):
            tile = load_x(x_rows, c0, mask_t, N1, N2, N2P, BLOCK_C)  # (BLOCK_T, BLOCK_C, N2P)
            if COLSUM:
                if (i == 0) & (pid_a == 0):
                    add_colsum(COLS, tile, c0, N1, N2, N2P, BLOCK_C)
            xr = tl.reshape(tl.permute(tile, (1, 0, 2)), (BLOCK_C, BLOCK_T * N2P))
            a_tile = load_a(A, i, c0, offs_a, stride_ak, stride_am, stride_an, M1, N1, BLOCK_C)
            z = mma(tl.trans(a_tile), xr, z, DOT_F32, IEEE)
        z2 = tl.reshape(z, (BLOCK_A * BLOCK_T, N2P)).to(X.dtype.element_ty)
        acc = mma(z2, bt, acc, DOT_F32, IEEE)
    out = tl.permute(tl.reshape(acc, (BLOCK_A, BLOCK_T, M2P)), (1, 0, 2))
    store_output(out, offs_t, offs_a, T, stride_yt, BIAS, Y, PRE, M1, M2, M2P, HAS_BIAS, SAVE_PRE, ACT)
