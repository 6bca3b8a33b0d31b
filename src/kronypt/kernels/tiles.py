"""Tile-level building blocks shared by the Kronecker kernels (all `triton.jit`, inlined when compiled).

Layout conventions: x rows are tokens, with X[t, c, d] at column c·n2 + d; A_i[a, c]; outputs Y[t, a, b]
at column a·m2 + b. Shapes whose m2 or n2 is not a power of two are padded to M2P / N2P and masked.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kronypt.kernels.activation import gelu_tanh


@triton.jit
def token_tile(pid, M1: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_A: tl.constexpr):
    """(pid_a, offs_t, offs_a) of tile `pid` (a program id, or a persistent program's current tile) in a
    1-D order of token tiles × A-row blocks, A-row blocks fastest: the tiles that share a token tile run
    next to each other, so x is re-read from L2."""
    num_a = tl.cdiv(M1, BLOCK_A)
    pid_a = pid % num_a
    offs_t = (pid // num_a) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_a = pid_a * BLOCK_A + tl.arange(0, BLOCK_A)
    return pid_a, offs_t, offs_a


@triton.jit
def mma(a, b, acc, DOT_F32: tl.constexpr, IEEE: tl.constexpr):
    """acc + a @ b on the tensor cores (see `tuning.dot_flags` for the two switches)."""
    if DOT_F32:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    elif IEEE:
        out = tl.dot(a, b, acc, input_precision="ieee")
    else:
        out = tl.dot(a, b, acc)
    return out


@triton.jit
def load_x(x_rows, c0, mask_t, N1: tl.constexpr, N2: tl.constexpr, N2P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Columns [c0, c0 + BLOCK_C) of X per token: (BLOCK_T, BLOCK_C) if n2 = 1, else (BLOCK_T, BLOCK_C, N2P).

    Always the contiguous slab of x (16-byte loads); a single d is picked from it in registers (`pick_x`)
    rather than loaded with stride n2, which would issue 2-byte loads.
    """
    offs_c = c0 + tl.arange(0, BLOCK_C)
    if N2P == 1:
        tile = tl.load(x_rows + offs_c[None, :], mask=mask_t[:, None] & (offs_c < N1)[None, :], other=0.0)
    else:
        offs_d = tl.arange(0, N2P)
        mask = mask_t[:, None, None] & (offs_c < N1)[None, :, None] & (offs_d < N2)[None, None, :]
        tile = tl.load(x_rows[:, :, None] + (offs_c[:, None] * N2 + offs_d[None, :])[None, :, :], mask=mask,
                       other=0.0)
    return tile


@triton.jit
def pick_x(tile, u, N2P: tl.constexpr):
    """Σ_d u[d] · tile[:, :, d] in the tile's dtype (u one-hot picks a column exactly)."""
    if N2P == 1:
        out = tile
    else:
        out = tl.sum(tile.to(tl.float32) * u[None, None, :], axis=2).to(tile.dtype)
    return out


@triton.jit
def load_a(A, i, c0, offs_a, stride_ak: tl.constexpr, stride_am: tl.constexpr, stride_an: tl.constexpr,
           M1: tl.constexpr, N1: tl.constexpr, BLOCK_C: tl.constexpr):
    """A_i[a, c] for the program's rows a and columns [c0, c0 + BLOCK_C), as a (BLOCK_C, BLOCK_A) tile."""
    offs_c = c0 + tl.arange(0, BLOCK_C)
    return tl.load(A + i * stride_ak + offs_c[:, None] * stride_an + offs_a[None, :] * stride_am,
                   mask=(offs_c < N1)[:, None] & (offs_a < M1)[None, :], other=0.0)


@triton.jit
def add_colsum(COLS, tile, c0, N1: tl.constexpr, N2: tl.constexpr, N2P: tl.constexpr, BLOCK_C: tl.constexpr):
    offs_c = c0 + tl.arange(0, BLOCK_C)
    sums = tl.sum(tile.to(tl.float32), axis=0)
    if N2P == 1:
        tl.atomic_add(COLS + offs_c, sums, mask=offs_c < N1)
    else:
        offs_d = tl.arange(0, N2P)
        tl.atomic_add(COLS + offs_c[:, None] * N2 + offs_d[None, :], sums,
                      mask=(offs_c < N1)[:, None] & (offs_d < N2)[None, :])


@triton.jit
def store_activated(out, offsets, mask, Y, PRE, SAVE_PRE: tl.constexpr, ACT: tl.constexpr):
    """Store the float32 pre-activation `out` at Y + offsets: kept in PRE first when asked, then gelu_new."""
    if SAVE_PRE:
        tl.store(PRE + offsets, out.to(PRE.dtype.element_ty), mask=mask)
    if ACT == 1:
        out = gelu_tanh(out)
    tl.store(Y + offsets, out.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def store_output(acc, offs_t, offs_a, T, stride_yt, BIAS, Y, PRE, M1: tl.constexpr, M2: tl.constexpr,
                 M2P: tl.constexpr, HAS_BIAS: tl.constexpr, SAVE_PRE: tl.constexpr, ACT: tl.constexpr):
    """Epilogue of a (BLOCK_T, BLOCK_A, M2P) float32 tile: + bias, keep the pre-activation, gelu, store."""
    offs_b = tl.arange(0, M2P)
    out_cols = offs_a[:, None] * M2 + offs_b[None, :]  # (BLOCK_A, M2P)
    mask_out = (offs_a < M1)[:, None]
    if M2 < M2P:  # only a padded m2 needs this mask; without it the stores stay vectorised
        mask_out = mask_out & (offs_b < M2)[None, :]
    if HAS_BIAS:
        acc += tl.load(BIAS + out_cols, mask=mask_out, other=0.0).to(tl.float32)[None, :, :]
    offsets = offs_t.to(tl.int64)[:, None, None] * stride_yt + out_cols[None, :, :]
    store_activated(acc, offsets, (offs_t < T)[:, None, None] & mask_out[None, :, :], Y, PRE, SAVE_PRE, ACT)
