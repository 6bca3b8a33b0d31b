"""Forward kernel for one factor with B a single column or row (81M's c_fc B (4, 1), c_proj B (1, 4)).

The general kernel (`general_forward`) keeps a (BLOCK_T, BLOCK_A, m2) float32 accumulator, which the
register budget limits to 64-wide tiles. Here the A-contraction runs on the tensor cores with large tiles
(128 × 128 for c_fc, 64 × 256 for c_proj) and only a (BLOCK_T, BLOCK_A) float32 accumulator; the small B
factor is applied in registers, on the way in or on the way out:

- n2 = 1 (B (m2, 1)):  acc = x · A_0ᵀ over n1; epilogue, per slice of BLOCK_A / EPI rows of A: the m2
  copies s·B[b, 0]·acc interleaved with `tl.join` (no extra accumulator), reshaped to (BLOCK_T, slice·m2)
  = contiguous output columns, + bias, gelu_new, one 16-byte store per row.
- m2 = 1 (B (1, n2)):  B is applied to x on load, R[t, c] = Σ_d s·B[0, d]·x[t, c·n2 + d] (the contiguous
  slab of x, 16-byte loads, n2 FMAs per element), and the tensor cores contract R with A_0 over n1 only.
  Contracting over (c, d) against A ⊗ B built on the fly instead would do n2× the tensor-core work
  (= dense FLOPs) and rebuild an n2× larger weight tile per step; the reduction on load costs n2 FMAs per
  x element per A-row block, hidden under the memory time, and keeps the MMA at a quarter of dense.

x and A are read from memory once (the other A-row blocks of a token tile re-read x from L2), y is written
once. A config with SPLIT = s > 1 gives each program s accumulators of BLOCK_A rows of A: each x slab is
loaded (and, for a one-row B, reduced by B) once for all s, so a token tile's x is loaded m1 / (s·BLOCK_A)
times instead of m1 / BLOCK_A, for s times the registers.

With `save` (a backward will follow) the kernel also stores what `vector_b_backward` needs: for B one
column P = x·A_0ᵀ (T·m1 values, from which the backward rebuilds the pre-activation), for B one row with an
activation the pre-activation. The same kernel computes grad_x of a one-row B (a layer with the factors
Aᵀ, Bᵀ). Fixed block sizes (`DEFAULTS`, or a file of tiles tuned on the user's card,
`kronypt.kernels.overrides`), no autotuner in the launch path, so nothing is tuned at the first call and
the kernel can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kronypt.kernels.availability import INTERPRET
from kronypt.kernels.overrides import overridden
from kronypt.kernels.tiles import load_x, mma, pick_x, store_activated
from kronypt.kernels.tuning import cdiv, dot_flags, launch, next_pow2, shared_limit


def tile_config(bt: int, ba: int, bc: int, epi: int, warps: int, stages: int, split: int = 1) -> triton.Config:
    """A config of this kernel: BLOCK_T tokens × BLOCK_A rows of A per accumulator, BLOCK_C columns of A per
    step, the epilogue in EPI slices, SPLIT accumulators per program."""
    return triton.Config({"BLOCK_T": bt, "BLOCK_A": ba, "BLOCK_C": bc, "EPI": epi, "SPLIT": split},
                         num_warps=warps, num_stages=stages)


# The fastest tiles of an H100 sweep (bf16, 81M shapes; docs/gpu-notes.md): c_fc with 16 warps, 1.81x
# dense at 65536 tokens and 1.70x at 8192 (graphed); c_proj with 64-token, 256-row tiles, 1.32x and 1.20x
# (128 x 128 tiles re-read x 6 times from L2: 0.81x). "column3", a one-column B of m2 = 3 (86M's c_fc),
# whose epilogue gathers the three copies into contiguous columns: the 16-warp tile spills 32 B there with
# GELU in training, this one (98 / 120 registers on sm_90) none. Small under the interpreter so the test
# shapes span several programs and the epilogue slicing is exercised.
if INTERPRET:
    DEFAULTS = dict.fromkeys(("column", "column3", "row"), tile_config(16, 16, 16, 2, 4, 3))
else:
    DEFAULTS = {"column": tile_config(128, 128, 64, 4, 16, 3), "column3": tile_config(64, 128, 64, 4, 8, 3),
                "row": tile_config(64, 256, 32, 1, 8, 3)}
# What runs: tiles tuned on the user's card (`kronypt.kernels.overrides`: $KRONYPT_KERNEL_CONFIGS, written
# by `benchmarks/sweep.py --write-configs`) in place of the defaults they name.
CONFIGS = overridden("vector_b_forward", DEFAULTS)

_FITTED: dict[tuple, triton.Config] = {}


def fitted(config: triton.Config, m1: int, n2p: int, itemsize: int, limit: int) -> triton.Config:
    """`config` with as few idle accumulators as its number of program groups allows (SPLIT lowered to spread
    A's row blocks evenly over them: 4 blocks with SPLIT 3 run as 2 groups of 2, not 3 + 1), fewer pipeline
    stages (float32: at most 2), then a narrower reduction block, until its staged tiles fit in `limit` bytes
    of shared memory:
    each stage holds a (BLOCK_T, BLOCK_C·n2p) slab of x and SPLIT (BLOCK_A, BLOCK_C) tiles of A (an upper
    estimate: 96 KB for the bf16 row default, whose sm_90 build uses 84 KB). A B with a long row (n2 up to
    16) widens the x slab 4x over the 81M shapes'."""
    key = (tuple(config.kwargs.items()), config.num_warps, config.num_stages, m1, n2p, itemsize, limit)
    if key not in _FITTED:
        kw, stages = dict(config.kwargs), config.num_stages if itemsize <= 2 else min(config.num_stages, 2)
        blocks = cdiv(m1, kw["BLOCK_A"])  # as few accumulators per program as give the same number of groups
        kw["SPLIT"] = cdiv(blocks, cdiv(blocks, min(kw["SPLIT"], blocks)))

        def size() -> int:
            x_slab, a_tiles = kw["BLOCK_T"] * kw["BLOCK_C"] * n2p, kw["SPLIT"] * kw["BLOCK_A"] * kw["BLOCK_C"]
            return stages * (x_slab + a_tiles) * itemsize

        while size() > limit and stages > 2:
            stages -= 1
        while size() > limit and kw["BLOCK_C"] > 16:
            kw["BLOCK_C"] //= 2
        _FITTED[key] = triton.Config(kw, num_warps=config.num_warps, num_stages=stages)
    return _FITTED[key]


@triton.jit
def _halves(acc, BLOCK_T: tl.constexpr, WIDTH: tl.constexpr):
    """Columns [0, WIDTH/2) and [WIDTH/2, WIDTH) of a (BLOCK_T, WIDTH) tile, as two tiles (registers)."""
    return tl.split(tl.permute(tl.reshape(acc, (BLOCK_T, 2, WIDTH // 2)), (0, 2, 1)))


@triton.jit
def _expanded(part, a0, B, s, BIAS, M1: tl.constexpr, M2: tl.constexpr, N2: tl.constexpr, WIDTH: tl.constexpr,
             HAS_BIAS: tl.constexpr, BLOCK_T: tl.constexpr):
    """(out, cols, valid): the pre-activation of the output columns [a0·M2, (a0 + WIDTH)·M2), bias included,
    float32, from part (BLOCK_T, WIDTH) = the A-rows [a0, a0 + WIDTH); `valid` masks the columns past the
    layer (and, for m2 = 3, the tile's last quarter, which holds no output)."""
    if N2 == 1:  # y[t, a·M2 + b] = s·B[b, 0]·part[t, a]; joins interleave b fastest
        if M2 == 1:
            out = part * (s * tl.load(B).to(tl.float32))
        elif M2 == 2:
            out = tl.join(part * (s * tl.load(B).to(tl.float32)), part * (s * tl.load(B + 1).to(tl.float32)))
        else:  # M2 == 4, or 3 with a fourth copy of zeros (`_expand_store` sends every other m2 elsewhere)
            w0 = s * tl.load(B).to(tl.float32)
            w1 = s * tl.load(B + 1).to(tl.float32)
            w2 = s * tl.load(B + 2).to(tl.float32)
            w3 = 0.0
            if M2 == 4:
                w3 = s * tl.load(B + 3).to(tl.float32)
            out = tl.join(tl.join(part * w0, part * w2), tl.join(part * w1, part * w3))
        M2J: tl.constexpr = 4 if M2 == 3 else M2
        out = tl.reshape(out, (BLOCK_T, WIDTH * M2J))
        j = tl.arange(0, WIDTH * M2J)
        if M2 == 3:  # column j of the slice is (a, b) = (j // 3, j % 3): gathered from a·4 + b, so that the
            # 3·WIDTH outputs are contiguous (16-byte stores) and the last WIDTH columns are left over
            src = tl.where(j < WIDTH * 3, (j // 3) * 4 + j % 3, 0)
            out = tl.gather(out, tl.broadcast_to(src[None, :], (BLOCK_T, WIDTH * 4)), axis=1)
    else:  # B (and s) already applied to x
        out = part
        j = tl.arange(0, WIDTH)
    cols = a0 * M2 + j
    valid = cols < M1 * M2
    if M2 == 3 and N2 == 1:
        valid = valid & (j < WIDTH * 3)
    if HAS_BIAS:
        out += tl.load(BIAS + cols, mask=valid, other=0.0).to(tl.float32)[None, :]
    return out, cols, valid


@triton.jit
def _expand_store_padded(part, a0, offs_t, T, stride_yt, B, s, BIAS, Y, PRE, M1: tl.constexpr, M2: tl.constexpr,
                         WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, SAVE_PRE: tl.constexpr, ACT: tl.constexpr):
    """`_expand_store` for a one-column B with 4 < m2 ≤ 8: the m2 copies as a (BLOCK_T, WIDTH, 8) tile, any
    padding masked at the store (joins interleave powers of two only)."""
    M2P: tl.constexpr = 8
    offs_b = tl.arange(0, M2P)
    w = s * tl.load(B + offs_b, mask=offs_b < M2, other=0.0).to(tl.float32)
    out = part[:, :, None] * w[None, None, :]
    cols = (a0 + tl.arange(0, WIDTH))[:, None] * M2 + offs_b[None, :]  # (WIDTH, M2P)
    mask_c = (cols < M1 * M2) & (offs_b < M2)[None, :]
    if HAS_BIAS:
        out += tl.load(BIAS + cols, mask=mask_c, other=0.0).to(tl.float32)[None, :, :]
    offsets = offs_t.to(tl.int64)[:, None, None] * stride_yt + cols[None, :, :]
    store_activated(out, offsets, (offs_t < T)[:, None, None] & mask_c[None, :, :], Y, PRE, SAVE_PRE, ACT)


@triton.jit
def _expand_store(part, a0, offs_t, T, stride_yt, B, s, BIAS, Y, PRE, M1: tl.constexpr, M2: tl.constexpr,
                 N2: tl.constexpr, WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr, SAVE_PRE: tl.constexpr,
                 ACT: tl.constexpr, BLOCK_T: tl.constexpr):
    """Output columns [a0·M2, (a0 + WIDTH)·M2) from part (BLOCK_T, WIDTH) = the A-rows [a0, a0 + WIDTH)."""
    if N2 == 1 and M2 > 4:
        _expand_store_padded(part, a0, offs_t, T, stride_yt, B, s, BIAS, Y, PRE, M1, M2, WIDTH, HAS_BIAS,
                             SAVE_PRE, ACT)
    else:
        out, cols, valid = _expanded(part, a0, B, s, BIAS, M1, M2, N2, WIDTH, HAS_BIAS, BLOCK_T)
        offsets = offs_t.to(tl.int64)[:, None] * stride_yt + cols[None, :]
        store_activated(out, offsets, (offs_t < T)[:, None] & valid[None, :], Y, PRE, SAVE_PRE, ACT)


@triton.jit
def _finish(acc, a0, offs_t, T, stride_yt, B, s, BIAS, Y, PRE, M1: tl.constexpr, M2: tl.constexpr,
            N2: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, SAVE_PRE: tl.constexpr,
            SAVE_P: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_A: tl.constexpr, EPI: tl.constexpr):
    """The epilogue of the accumulator of A-rows [a0, a0 + BLOCK_A): P kept when asked, then the expansion
    and stores in EPI slices."""
    if SAVE_P:
        offs_a = a0 + tl.arange(0, BLOCK_A)
        tl.store(PRE + offs_t.to(tl.int64)[:, None] * M1 + offs_a[None, :], acc.to(PRE.dtype.element_ty),
                 mask=(offs_t < T)[:, None] & (offs_a < M1)[None, :])
    if EPI == 1:
        _expand_store(acc, a0, offs_t, T, stride_yt, B, s, BIAS, Y, PRE, M1, M2, N2, BLOCK_A, HAS_BIAS,
                     SAVE_PRE, ACT, BLOCK_T)
    elif EPI == 2:
        lo, hi = _halves(acc, BLOCK_T, BLOCK_A)
        W: tl.constexpr = BLOCK_A // 2
        _expand_store(lo, a0, offs_t, T, stride_yt, B, s, BIAS, Y, PRE, M1, M2, N2, W, HAS_BIAS, SAVE_PRE,
                     ACT, BLOCK_T)
        _expand_store(hi, a0 + W, offs_t, T, stride_yt, B, s, BIAS, Y, PRE, M1, M2, N2, W, HAS_BIAS,
                     SAVE_PRE, ACT, BLOCK_T)
    else:  # EPI == 4
        lo, hi = _halves(acc, BLOCK_T, BLOCK_A)
        q0, q1 = _halves(lo, BLOCK_T, BLOCK_A // 2)
        q2, q3 = _halves(hi, BLOCK_T, BLOCK_A // 2)
        Q: tl.constexpr = BLOCK_A // 4
        _expand_store(q0, a0, offs_t, T, stride_yt, B, s, BIAS, Y, PRE, M1, M2, N2, Q, HAS_BIAS, SAVE_PRE,
                     ACT, BLOCK_T)
        _expand_store(q1, a0 + Q, offs_t, T, stride_yt, B, s, BIAS, Y, PRE, M1, M2, N2, Q, HAS_BIAS,
                     SAVE_PRE, ACT, BLOCK_T)
        _expand_store(q2, a0 + 2 * Q, offs_t, T, stride_yt, B, s, BIAS, Y, PRE, M1, M2, N2, Q, HAS_BIAS,
                     SAVE_PRE, ACT, BLOCK_T)
        _expand_store(q3, a0 + 3 * Q, offs_t, T, stride_yt, B, s, BIAS, Y, PRE, M1, M2, N2, Q, HAS_BIAS,
                     SAVE_PRE, ACT, BLOCK_T)


@triton.jit
def _a_tile(A, c0, a0, M1: tl.constexpr, N1: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_C: tl.constexpr):
    """A_0[a, c] for the rows [a0, a0 + BLOCK_A) and columns [c0, c0 + BLOCK_C), as (BLOCK_C, BLOCK_A)."""
    offs_c = c0 + tl.arange(0, BLOCK_C)
    offs_a = a0 + tl.arange(0, BLOCK_A)
    return tl.load(A + offs_c[:, None] + offs_a[None, :] * N1,
                   mask=(offs_c < N1)[:, None] & (offs_a < M1)[None, :], other=0.0)


@triton.jit
def _vector_b_forward_kernel(
    X, A, B, S, BIAS, Y, PRE, T, stride_xt, stride_yt,
    M1: tl.constexpr, N1: tl.constexpr, M2: tl.constexpr, N2: tl.constexpr, N2P: tl.constexpr,
    HAS_S: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr, SAVE_PRE: tl.constexpr,
    SAVE_P: tl.constexpr, DOT_F32: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_C: tl.constexpr, EPI: tl.constexpr, SPLIT: tl.constexpr,
):
    # One tile of BLOCK_T tokens × SPLIT·BLOCK_A rows of A: the A-contraction into SPLIT accumulators (each x
    # slab loaded, and B applied to it, once for all of them), then the expansion and stores. SAVE_P (n2 = 1,
    # training): PRE receives P = x·A_0ᵀ (T, M1) instead of the pre-activation, T·M1 values, not T·M1·M2.
    s = 1.0
    if HAS_S:
        s = tl.load(S).to(tl.float32)
    u = tl.full((N2P,), 1.0, tl.float32)
    if N2 > 1:  # row 0 of B contracts x over d on load
        offs_d = tl.arange(0, N2P)
        u = s * tl.load(B + offs_d, mask=offs_d < N2, other=0.0).to(tl.float32)
    pid, num_a = tl.program_id(0), tl.cdiv(M1, BLOCK_A * SPLIT)  # A-row groups fastest: neighbours share x
    a0 = (pid % num_a) * (BLOCK_A * SPLIT)
    offs_t = (pid // num_a) * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_t = offs_t < T
    x_rows = X + offs_t.to(tl.int64)[:, None] * stride_xt
    acc0 = tl.zeros((BLOCK_T, BLOCK_A), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_T, BLOCK_A), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_T, BLOCK_A), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_T, BLOCK_A), dtype=tl.float32)
    for c0 in range(0, N1, BLOCK_C):
        if N2 == N2P:  # the slab as (BLOCK_T, BLOCK_C·N2): 16-byte copies, then viewed as (.., .., N2)
            offs_f = c0 * N2 + tl.arange(0, BLOCK_C * N2)
            slab = tl.load(x_rows + offs_f[None, :], mask=mask_t[:, None] & (offs_f < N1 * N2)[None, :], other=0.0)
            x_tile = slab
            if N2 > 1:
                x_tile = pick_x(tl.reshape(slab, (BLOCK_T, BLOCK_C, N2)), u, N2P)
        else:
            x_tile = pick_x(load_x(x_rows, c0, mask_t, N1, N2, N2P, BLOCK_C), u, N2P)
        acc0 = mma(x_tile, _a_tile(A, c0, a0, M1, N1, BLOCK_A, BLOCK_C), acc0, DOT_F32, IEEE)
        if SPLIT > 1:
            acc1 = mma(x_tile, _a_tile(A, c0, a0 + BLOCK_A, M1, N1, BLOCK_A, BLOCK_C), acc1, DOT_F32, IEEE)
        if SPLIT > 2:
            acc2 = mma(x_tile, _a_tile(A, c0, a0 + 2 * BLOCK_A, M1, N1, BLOCK_A, BLOCK_C), acc2, DOT_F32, IEEE)
        if SPLIT > 3:
            acc3 = mma(x_tile, _a_tile(A, c0, a0 + 3 * BLOCK_A, M1, N1, BLOCK_A, BLOCK_C), acc3, DOT_F32, IEEE)
    _finish(acc0, a0, offs_t, T, stride_yt, B, s, BIAS, Y, PRE, M1, M2, N2, HAS_BIAS, ACT, SAVE_PRE, SAVE_P,
            BLOCK_T, BLOCK_A, EPI)
    if SPLIT > 1:
        _finish(acc1, a0 + BLOCK_A, offs_t, T, stride_yt, B, s, BIAS, Y, PRE, M1, M2, N2, HAS_BIAS, ACT,
                SAVE_PRE, SAVE_P, BLOCK_T, BLOCK_A, EPI)
    if SPLIT > 2:
        _finish(acc2, a0 + 2 * BLOCK_A, offs_t, T, stride_yt, B, s, BIAS, Y, PRE, M1, M2, N2, HAS_BIAS, ACT,
                SAVE_PRE, SAVE_P, BLOCK_T, BLOCK_A, EPI)
    if SPLIT > 3:
        _finish(acc3, a0 + 3 * BLOCK_A, offs_t, T, stride_yt, B, s, BIAS, Y, PRE, M1, M2, N2, HAS_BIAS, ACT,
                SAVE_PRE, SAVE_P, BLOCK_T, BLOCK_A, EPI)


def vector_b_forward(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scalars: torch.Tensor | None,
                     bias: torch.Tensor | None, act: int, save: bool,
                     config: triton.Config | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, saved) of the layer on a 2-D x (unit feature stride) for shapes `availability.vector_b_supports`
    accepts.

    With `save`, `saved` is what `vector_b_backward` takes: P = x·A_0ᵀ for a B with one column, the
    pre-activation for a B with one row and an activation; else it is empty. `config` overrides the block
    sizes (a candidate of `benchmarks/sweep.py`); float32 runs at most 2 pipeline stages.
    """
    T = x.shape[0]
    _, m1, n1 = A.shape
    _, m2, n2 = B.shape
    A, B = A.contiguous(), B.contiguous()  # no-ops for parameters; the kernel takes unit strides as given
    y = torch.empty(T, m1 * m2, device=x.device, dtype=x.dtype)
    save_p, save_pre = save and n2 == 1, save and n2 > 1 and act != 0
    saved = (y.new_empty(T, m1) if save_p else torch.empty_like(y) if save_pre else y.new_empty(0))
    args = dict(X=x, A=A, B=B, S=scalars if scalars is not None else y, BIAS=bias if bias is not None else y,
                Y=y, PRE=saved if saved.numel() else y, T=T, stride_xt=x.stride(0), stride_yt=y.stride(0),
                M1=m1, N1=n1, M2=m2, N2=n2, N2P=next_pow2(n2), HAS_S=scalars is not None,
                HAS_BIAS=bias is not None, ACT=act, SAVE_PRE=save_pre, SAVE_P=save_p, **dot_flags(x.dtype))
    if config is None:  # the defaults, fitted to the shape's B and the device
        kind = "row" if n2 > 1 else "column3" if m2 == 3 else "column"
        config = fitted(CONFIGS[kind], m1, args["N2P"], x.element_size(), shared_limit(x))
    elif x.dtype == torch.float32 and config.num_stages > 2:  # a given candidate runs as given, except that
        config = triton.Config(config.kwargs, num_warps=config.num_warps, num_stages=2)  # fp32 tiles are 2x
    k = config.kwargs
    grid = (cdiv(T, k["BLOCK_T"]) * cdiv(m1, k["BLOCK_A"] * k["SPLIT"]),)
    launch(_vector_b_forward_kernel, [], lambda meta: grid, args, config=config)
    return y, saved
