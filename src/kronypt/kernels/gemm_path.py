"""Version 2 of the fused layer for B factors with a single row or column (81M: c_fc (4, 1), c_proj (1, 4)).

H100 run 1 measured the one-kernel forward of `kronypt.kernels.forward` 2-5× off its floor and the
token-reduction kernels of `kronypt.kernels.wgrad` 10-30× slower than dense (docs/gpu-notes.md has the
likely causes). Here every large contraction
is one cuBLAS GEMM on the factored form, and everything with the small B factor is one memory-bound
Triton pass:

forward, n2 = 1:  P = x · A_catᵀ (GEMM, N = k·m1), then `expand`: y[t,a,b] = Σ_i s_i B_i[b,0] P_i[t,a] + bias
                  (+ gelu_new) - x read once, P written and read once, y once. Training keeps P (not the
                  m2× larger pre-activation): the backward needs P anyway and rebuilds pre from it.
forward, m2 = 1:  `reduce` without M: R_i[t,c] = Σ_d s_i B_i[0,d] x[t,c,d]; y = R_cat · A_perm + bias (GEMM).
backward, n2 = 1: `reduce` reads G and the saved P once (with GELU, pre = expand(P) + bias in registers):
                  H_i[t,a] = Σ_b G[t,a,b] s_i B_i[b,0], M_i[b] = Σ_{t,a} G[t,a,b] P_i[t,a], dbias = Σ_t G;
                  then dX = H · A_cat and dA = Hᵀ x (two GEMMs).
backward, m2 = 1: the transposed problem: Q = G · A_cat (GEMM); `reduce` on (x, Q) gives s·R and Mᵀ;
                  dX = `expand`(Q, s B) and dA = Gᵀ (s R) (GEMM), dbias = Σ_t G.

dB = s·M and ds = ⟨B, M⟩ as in version 1. Nothing synchronises with the host (graph-capturable); the two
Triton kernels take fixed block sizes (no autotuner in the launch path: less CPU time per call).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kronypt.kernels.activation import gelu_backward, gelu_tanh_grad
from kronypt.kernels.availability import INTERPRET, v2_supports
from kronypt.kernels.overrides import overridden
from kronypt.kernels.tiles import store_output, token_tile
from kronypt.kernels.tuning import cdiv, launch, next_pow2, sm_count
from kronypt.kernels.v3 import expand_store, v3_forward


def _cfg(bt: int, ba: int, warps: int, **flags: int) -> triton.Config:
    """Block sizes of one memory-bound pass (one stage: Triton does not pipeline these loops)."""
    return triton.Config({"BLOCK_T": bt, "BLOCK_A": ba, **flags}, num_warps=warps, num_stages=1)


def _rcfg(bt: int, ba: int, warps: int, load_2d: int = 1, sum_each: int = 0, stages: int = 1,
          per_sm: int = 2) -> triton.Config:
    """A `reduce` config: tile and warps, G read as 2-D rows (16-byte loads) or 3-D, token sums per tile
    (`SUM_EACH`), `STAGES` > 1 software-pipelines the token loop's loads, and `PER_SM` programs per
    multiprocessor (the grid; host side only)."""
    return triton.Config({"BLOCK_T": bt, "BLOCK_A": ba, "LOAD_2D": load_2d, "SUM_EACH": sum_each,
                          "STAGES": stages, "PER_SM": per_sm}, num_warps=warps, num_stages=1)


# (BLOCK_T, BLOCK_A, warps): a (BLOCK_T, BLOCK_A, m2) float32 tile per program; small under the interpreter
# so that the test shapes span several programs along both axes. The fastest of `SWEEP` on an H100 (run 4,
# 81M shape, 65536 tokens, bf16): expand 0.40 ms = 1.27 TB/s (the previous (32, 64)/8 warps: 0.84 ms),
# reduce with 16-byte 2-D loads 0.37 ms = 1.65 TB/s (previous (32, 64)/8 warps, 3-D loads: 0.52 ms).
EXPAND = _cfg(16, 16, 8) if INTERPRET else _cfg(16, 128, 4)
# A B with more than 8 rows: the (16, 128, m2) tile of 4 warps would hold 16·m2 floats per thread.
EXPAND_WIDE = _cfg(16, 16, 8) if INTERPRET else _cfg(32, 64, 8)
EXPAND_JOINED = _cfg(32, 128, 4)
REDUCE = _rcfg(16, 16, 8, load_2d=0) if INTERPRET else _rcfg(16, 64, 4)
# A B longer than 4 (m2 of a column, n2 of a row): the 4-warp tile spills more (sm_90, m2 = 16: 4.5 KB
# of stack against 2.8 KB for the previous (32, 64)/8-warp tile, which stays for those shapes).
REDUCE_WIDE = _rcfg(16, 16, 8, load_2d=0) if INTERPRET else _rcfg(32, 64, 8, load_2d=0)

# Candidates for one timed sweep on a GPU (`benchmarks/sweep.py`), the defaults first. H100 run 2
# timings imply ~0.6 TB/s for the expand pass and ~1.6 TB/s for reduce (docs/gpu-notes.md): these vary the
# tile, the warps and the width of the loads and stores.
SWEEP = {
    "expand": [EXPAND, _cfg(32, 64, 8), _cfg(64, 64, 8), _cfg(32, 128, 8), _cfg(64, 128, 8), _cfg(128, 64, 8),
               _cfg(32, 64, 4)],
    # reduce: tiles without spills (sm_90: 181-205 registers; (64, 64) and (32, 128) spill), each with G
    # read as 3-D rows of m2 (8-byte loads) or, LOAD_2D, as 2-D rows (16-byte loads) reshaped in registers
    "reduce": [REDUCE, _rcfg(32, 64, 8, load_2d=0), _rcfg(16, 64, 4, load_2d=0), _rcfg(16, 128, 8, load_2d=0),
               _rcfg(32, 64, 8), _rcfg(16, 128, 8),
               # around run 4's winner (16, 64)/4 warps/2-D, sm_90 builds without spills (120-186 registers;
               # (16, 64)/2 warps and (32, 64)/4 warps spill 168 B): smaller tiles, more blocks per SM
               _rcfg(16, 32, 4), _rcfg(16, 32, 2), _rcfg(8, 128, 4), _rcfg(32, 32, 4),
               # session 7: the default ran 2 programs per SM of 185 registers (c_fc: GELU, M, column sums),
               # so little was in flight. SUM_EACH (96 registers), more programs per SM, and STAGES (the
               # loads as pipelined asynchronous copies); sm_90 builds, c_fc / c_proj registers:
               _rcfg(16, 64, 4, sum_each=1, per_sm=4),            # 96 / 72
               _rcfg(16, 64, 4, sum_each=1, per_sm=8),            # 96 / 72
               _rcfg(16, 64, 4, stages=3),                        # 174 / 116, 26 KB shared
               _rcfg(16, 64, 4, sum_each=1, stages=3, per_sm=3),  # 149 / 77
               _rcfg(16, 64, 4, sum_each=1, stages=2, per_sm=3),  # 144 / -
               _rcfg(32, 64, 4, sum_each=1, per_sm=3),            # 141 / 127
               _rcfg(16, 128, 4, sum_each=1, per_sm=3),           # 139 / 127
               _rcfg(32, 64, 8, sum_each=1, stages=3, per_sm=2)],  # 127 / 79, 53 KB shared
    # `expand_joined` (k = 1): 2-D tiles, 16-byte stores
    "expand_joined": [EXPAND_JOINED, _cfg(64, 64, 4), _cfg(64, 128, 8), _cfg(128, 64, 8), _cfg(32, 256, 8),
                      _cfg(16, 128, 4)],
}

# Tiles tuned on the user's card (`kronypt.kernels.overrides`: $KRONYPT_KERNEL_CONFIGS, written by
# `benchmarks/sweep.py --write-configs`) replace the defaults for the shapes they were timed on (m2 ≤ 4 /
# ≤ 8); `SWEEP` keeps the built-in ones.
_TUNED = overridden("gemm_path", {"expand": EXPAND, "expand_joined": EXPAND_JOINED, "reduce": REDUCE})
EXPAND, EXPAND_JOINED, REDUCE = _TUNED["expand"], _TUNED["expand_joined"], _TUNED["reduce"]


supports = v2_supports  # the shapes this module handles


@triton.jit
def _expand_kernel(
    P, W, BIAS, Y, T, stride_pt, stride_yt,
    M1: tl.constexpr, M2: tl.constexpr, M2P: tl.constexpr, K: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_A: tl.constexpr,
):
    # y[t, a*M2 + b] = Σ_i W[i, b] · P[t, i*M1 + a] (+ bias, gelu); W float32 (k, M2)
    _, offs_t, offs_a = token_tile(tl.program_id(0), M1, BLOCK_T, BLOCK_A)
    offs_b = tl.arange(0, M2P)
    mask = (offs_t < T)[:, None] & (offs_a < M1)[None, :]
    rows = offs_t.to(tl.int64)[:, None] * stride_pt
    acc = tl.zeros((BLOCK_T, BLOCK_A, M2P), dtype=tl.float32)
    for i in range(K):
        p = tl.load(P + rows + i * M1 + offs_a[None, :], mask=mask, other=0.0).to(tl.float32)
        w = tl.load(W + i * M2 + offs_b, mask=offs_b < M2, other=0.0)
        acc += p[:, :, None] * w[None, None, :]
    store_output(acc, offs_t, offs_a, T, stride_yt, BIAS, Y, Y, M1, M2, M2P, HAS_BIAS, False, ACT)


@triton.jit
def _expand_joined_kernel(
    P, W, BIAS, Y, T, stride_pt, stride_yt,
    M1: tl.constexpr, M2: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_A: tl.constexpr,
):
    # k = 1, m2 in {1, 2, 4}: a 2-D P tile (16-byte loads) expanded by version 3's epilogue, whose
    # `tl.join`s interleave the m2 scaled copies into contiguous output columns (16-byte stores), instead
    # of `_expand_kernel`'s (BLOCK_T, BLOCK_A, m2) tile (8-byte stores, a shared-memory layout change).
    pid_a, offs_t, offs_a = token_tile(tl.program_id(0), M1, BLOCK_T, BLOCK_A)
    p = tl.load(P + offs_t.to(tl.int64)[:, None] * stride_pt + offs_a[None, :],
                mask=(offs_t < T)[:, None] & (offs_a < M1)[None, :], other=0.0).to(tl.float32)
    expand_store(p, pid_a * BLOCK_A, offs_t, T, stride_yt, W, 1.0, BIAS, Y, Y, M1, M2, 1, BLOCK_A, HAS_BIAS,
                 False, ACT, BLOCK_T)


@triton.jit
def _reduce_kernel(
    G, P, BV, BIAS, H, MOUT, COLS, T, T_SLICE, stride_gt, stride_pt,
    M1: tl.constexpr, M2: tl.constexpr, M2P: tl.constexpr, K: tl.constexpr, KP: tl.constexpr,
    COLSUM: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, WITH_M: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_A: tl.constexpr, LOAD_2D: tl.constexpr, SUM_EACH: tl.constexpr,
    STAGES: tl.constexpr,
):
    # H[t, i*M1 + a] = Σ_b G[t, a*M2 + b] BV[i, b];  MOUT[i, b] += Σ_{t,a} G[t, a*M2 + b] P[t, i*M1 + a];
    # COLS[a*M2 + b] += Σ_t G[t, a*M2 + b]. Program = (A-row block, token slice). ACT: G is the gradient
    # of gelu_new(pre) and is turned into the pre-activation gradient on the fly (never stored), with
    # pre[t, a*M2 + b] = Σ_i BV[i, b] P[t, i*M1 + a] + BIAS[a*M2 + b] recomputed from the saved P exactly
    # as `_expand_kernel` formed it: the forward keeps P (T·k·m1 values), not the m2× larger pre-activation.
    offs_a = tl.program_id(0) * BLOCK_A + tl.arange(0, BLOCK_A)
    offs_b = tl.arange(0, M2P)
    offs_k = tl.arange(0, KP)
    mask_a = offs_a < M1
    g_cols = offs_a[:, None] * M2 + offs_b[None, :]
    mask_g = mask_a[:, None] & (offs_b < M2)[None, :]
    bias = tl.zeros((BLOCK_A, M2P), dtype=tl.float32)
    if ACT == 1 and HAS_BIAS:
        bias = tl.load(BIAS + g_cols, mask=mask_g, other=0.0).to(tl.float32)
    t_start = tl.program_id(1) * T_SLICE
    t_end = tl.minimum(T, t_start + T_SLICE)
    # SUM_EACH: the column sums and K = 1's M are summed over each tile's tokens as it goes (two small
    # accumulators instead of two (BLOCK_T, BLOCK_A, M2P) ones: fewer registers, more blocks per SM)
    ACC_T: tl.constexpr = 1 if SUM_EACH else BLOCK_T
    cols = tl.zeros((ACC_T, BLOCK_A, M2P), dtype=tl.float32)
    m_one = tl.zeros((ACC_T, BLOCK_A, M2P), dtype=tl.float32)  # K = 1: reduced once, at the end
    m_all = tl.zeros((KP, M2P), dtype=tl.float32)  # K > 1: reduced per tile
    for t0 in tl.range(t_start, t_end, BLOCK_T, num_stages=STAGES):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        mask_t = offs_t < t_end
        rows = offs_t.to(tl.int64)
        if LOAD_2D and M2 == M2P:  # the G rows as one 2-D tile (16-byte loads), viewed as (.., BLOCK_A, M2)
            c2 = tl.program_id(0) * BLOCK_A * M2 + tl.arange(0, BLOCK_A * M2)
            g2 = tl.load(G + rows[:, None] * stride_gt + c2[None, :],
                         mask=mask_t[:, None] & (c2 < M1 * M2)[None, :], other=0.0)
            g3 = tl.reshape(g2, (BLOCK_T, BLOCK_A, M2P)).to(tl.float32)
        else:
            g_ptrs = rows[:, None, None] * stride_gt + g_cols[None, :, :]
            g3 = tl.load(G + g_ptrs, mask=mask_t[:, None, None] & mask_g[None, :, :], other=0.0).to(tl.float32)
        mask_p = mask_t[:, None] & mask_a[None, :]
        if ACT == 1:
            pre = tl.zeros((BLOCK_T, BLOCK_A, M2P), dtype=tl.float32)
            for i in range(K):
                bv = tl.load(BV + i * M2 + offs_b, mask=offs_b < M2, other=0.0)
                p = tl.load(P + rows[:, None] * stride_pt + i * M1 + offs_a[None, :], mask=mask_p,
                            other=0.0).to(tl.float32)
                pre += p[:, :, None] * bv[None, None, :]
            g3 = gelu_tanh_grad(g3, pre + bias[None, :, :])
        if COLSUM:
            if SUM_EACH:
                cols += tl.sum(g3, axis=0, keep_dims=True)
            else:
                cols += g3
        for i in range(K):
            bv = tl.load(BV + i * M2 + offs_b, mask=offs_b < M2, other=0.0)
            h = tl.sum(g3 * bv[None, None, :], axis=2)
            p_ptrs = rows[:, None] * stride_pt + i * M1 + offs_a[None, :]
            tl.store(H + p_ptrs, h.to(H.dtype.element_ty), mask=mask_p)
            if WITH_M:
                p = tl.load(P + p_ptrs, mask=mask_p, other=0.0).to(tl.float32)
                if K == 1:
                    if SUM_EACH:
                        m_one += tl.sum(g3 * p[:, :, None], axis=0, keep_dims=True)
                    else:
                        m_one += g3 * p[:, :, None]
                else:
                    part = tl.sum(tl.sum(g3 * p[:, :, None], axis=0), axis=0)
                    m_all += tl.where((offs_k == i)[:, None], part[None, :], 0.0)
    if WITH_M:
        if K == 1:
            m_all += tl.where((offs_k == 0)[:, None], tl.sum(tl.sum(m_one, axis=0), axis=0)[None, :], 0.0)
        tl.atomic_add(MOUT + offs_k[:, None] * M2 + offs_b[None, :], m_all,
                      mask=(offs_k < K)[:, None] & (offs_b < M2)[None, :])
    if COLSUM:
        tl.atomic_add(COLS + g_cols, tl.sum(cols, axis=0), mask=mask_g)


def expand(p: torch.Tensor, w: torch.Tensor, m1: int, bias: torch.Tensor | None = None, act: int = 0,
           config: triton.Config | None = None) -> torch.Tensor:
    """y[t, a·m2 + b] = act(Σ_i w[i, b] p[t, i·m1 + a] + bias), w float32 (k, m2). `config` overrides the
    block sizes (one of `SWEEP["expand"]`, for timing candidates); without it, k = 1 and m2 ∈ {1, 2, 4} run
    `expand_joined` (run 4, 81M shape: 2.84 TB/s against 1.27 TB/s for this kernel's best tile)."""
    T = p.shape[0]
    k, m2 = w.shape
    if config is None and k == 1 and m2 in (1, 2, 4):
        return expand_joined(p, w, m1, bias, act)
    config = config or (EXPAND if m2 <= 8 else EXPAND_WIDE)
    y = torch.empty(T, m1 * m2, device=p.device, dtype=p.dtype)
    bt, ba = config.kwargs["BLOCK_T"], config.kwargs["BLOCK_A"]
    args = dict(P=p, W=w, BIAS=bias if bias is not None else y, Y=y, T=T, stride_pt=p.stride(0),
                stride_yt=y.stride(0), M1=m1, M2=m2, M2P=next_pow2(m2), K=k,
                HAS_BIAS=bias is not None, ACT=act)
    grid = (cdiv(T, bt) * cdiv(m1, ba),)
    launch(_expand_kernel, [], lambda meta: grid, args, config=config)
    return y


def expand_joined(p: torch.Tensor, w: torch.Tensor, m1: int, bias: torch.Tensor | None = None, act: int = 0,
                  config: triton.Config | None = None) -> torch.Tensor:
    """`expand` for k = 1 and m2 in {1, 2, 4} with 16-byte stores (`_expand_joined_kernel`), which `expand`
    runs for those shapes; `config` overrides the block sizes (one of `SWEEP["expand_joined"]`)."""
    T = p.shape[0]
    k, m2 = w.shape
    if k != 1 or m2 not in (1, 2, 4):
        raise ValueError(f"expand_joined takes k = 1 and m2 in (1, 2, 4), got k = {k}, m2 = {m2}")
    config = config or EXPAND_JOINED
    y = torch.empty(T, m1 * m2, device=p.device, dtype=p.dtype)
    args = dict(P=p, W=w, BIAS=bias if bias is not None else y, Y=y, T=T, stride_pt=p.stride(0),
                stride_yt=y.stride(0), M1=m1, M2=m2, HAS_BIAS=bias is not None, ACT=act)
    grid = (cdiv(T, config.kwargs["BLOCK_T"]) * cdiv(m1, config.kwargs["BLOCK_A"]),)
    launch(_expand_joined_kernel, [], lambda meta: grid, args, config=config)
    return y


def reduce(g: torch.Tensor, p: torch.Tensor | None, bv: torch.Tensor, m1: int, colsum: bool, act: int = 0,
           bias: torch.Tensor | None = None, config: triton.Config | None = None,
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(H, M, column sums of g or None) for g (T, m1·m2), p (T, k·m1), bv float32 (k, m2); see the kernel.
    With `act`, g is the gradient of gelu_new(pre), pre = expand(p, bv, m1, bias) recomputed in registers.
    Without `p`, M is not computed (returned as zeros). `config` overrides the block sizes."""
    T = g.shape[0]
    k, m2 = bv.shape
    config = config or (REDUCE if m2 <= 4 else REDUCE_WIDE)
    per_sm, config = _kernel_config(config)
    h = torch.empty(T, k * m1, device=g.device, dtype=g.dtype)
    m = torch.zeros(k, m2, device=g.device, dtype=torch.float32)
    cols = torch.zeros(m1 * m2, device=g.device, dtype=torch.float32) if colsum else m
    bt, ba = config.kwargs["BLOCK_T"], config.kwargs["BLOCK_A"]
    a_blocks = cdiv(m1, ba)
    slices = max(1, min(cdiv(per_sm * sm_count(g.device), a_blocks), cdiv(T, bt)))
    t_slice = cdiv(cdiv(T, slices), bt) * bt
    args = dict(G=g, P=p if p is not None else h, BV=bv, BIAS=bias if bias is not None else bv, H=h, MOUT=m,
                COLS=cols, T=T, T_SLICE=t_slice, stride_gt=g.stride(0), stride_pt=h.stride(0), M1=m1, M2=m2,
                M2P=next_pow2(m2), K=k, KP=next_pow2(k), COLSUM=colsum, ACT=act,
                HAS_BIAS=bias is not None, WITH_M=p is not None)
    grid = (a_blocks, cdiv(T, t_slice))
    launch(_reduce_kernel, [], lambda meta: grid, args, config=config)
    return h, m, (cols if colsum else None)


_KERNEL_CONFIGS: dict[int, tuple[int, triton.Config, triton.Config]] = {}


def _kernel_config(config: triton.Config) -> tuple[int, triton.Config]:
    """(programs per SM, `config` without that host-side key), once per config object (host time)."""
    if id(config) not in _KERNEL_CONFIGS:
        kwargs = {"SUM_EACH": 0, "STAGES": 1, **config.kwargs}
        per_sm = kwargs.pop("PER_SM", 2)
        _KERNEL_CONFIGS[id(config)] = (per_sm, triton.Config(kwargs, num_warps=config.num_warps,
                                                             num_stages=config.num_stages), config)
    per_sm, kernel_config, _ = _KERNEL_CONFIGS[id(config)]  # the config is kept so its id stays its own
    return per_sm, kernel_config


def _scaled(v: torch.Tensor, scalars: torch.Tensor | None) -> torch.Tensor:
    """s_i · v[i] in float32 for a (k, n) slice of B: the scalars ride on B, never on a large tensor."""
    return v.float() * scalars.float()[:, None] if scalars is not None else v.float().contiguous()


def gemm_forward(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scalars: torch.Tensor | None,
                 bias: torch.Tensor | None, act: int, save: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, saved) of the layer on a 2-D x for a B with one column (n2 = 1) or one row (m2 = 1).

    With `save` (a gradient will be needed): for n2 = 1 `saved` is P = x·A_catᵀ, from which the backward
    recomputes the pre-activation (no second GEMM, and T·k·m1 values kept instead of T·m1·m2); for m2 = 1
    it is the pre-activation when `act` is on. Otherwise an empty tensor.
    """
    k, m1, n1 = A.shape
    _, m2, n2 = B.shape
    if n2 == 1:
        p = x @ A.reshape(k * m1, n1).t()
        y = expand(p, _scaled(B[:, :, 0], scalars), m1, bias, act)
        return y, (p if save else y.new_empty(0))
    r = reduce(x, None, _scaled(B[:, 0, :], scalars), n1, colsum=False)[0]  # s_i R_i[t, c] at [t, i·n1 + c]
    a_perm = A.transpose(1, 2).reshape(k * n1, m1)  # [(i, c), a] = A_i[a, c]; a view of A when k = 1
    y = torch.addmm(bias.to(r.dtype), r, a_perm) if bias is not None else r @ a_perm  # bias may be fp32
    if act == 0:
        return y, y.new_empty(0)
    out = torch.nn.functional.gelu(y, approximate="tanh")
    return out, (y if save else y.new_empty(0))


def gemm_backward(g: torch.Tensor, x: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                  scalars: torch.Tensor | None, saved: torch.Tensor, act: int, bias: torch.Tensor | None,
                  need_x: bool, need_a: bool, need_bias: bool, use_v3: bool = False,
                  ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """(dX, dA float32, M float32 (k, m2, n2), dbias float32) from the output gradient g (contiguous) and
    what `gemm_forward` saved; with `act`, g is the gradient of gelu_new(pre). The scalars ride on B in
    `reduce`, so H (resp. R) already carries s_i and dX, dA need no rescaling.

    `use_v3` (B with one row, k = 1): dX = G·(A ⊗ B) is a layer with the factors Aᵀ, Bᵀ (B one column), so
    version 3's forward kernel computes it in one pass and also writes Q = G·A (its P) for `reduce`,
    replacing the Q GEMM and the `expand` pass."""
    k, m1, n1 = A.shape
    _, m2, n2 = B.shape
    dx = da = None
    if n2 == 1:
        p = saved if saved.numel() else x @ A.reshape(k * m1, n1).t()
        h, m, dbias = reduce(g, p, _scaled(B[:, :, 0], scalars), m1, colsum=need_bias, act=act, bias=bias)
        if need_x:
            dx = h @ A.reshape(k * m1, n1)
        if need_a:
            da = (h.t() @ x).float().view(k, m1, n1)
        return dx, da, m.view(k, m2, 1), dbias
    if act:
        g = gelu_backward(g, saved)
    sb = _scaled(B[:, 0, :], scalars)
    if use_v3:
        dx, q = v3_forward(g, A.transpose(1, 2).contiguous(), B.transpose(1, 2), scalars, None, 0, True)
    else:
        q = g @ A.permute(1, 0, 2).reshape(m1, k * n1)  # Q_i[t, c] at [t, i·n1 + c]
    r, m, _ = reduce(x, q, sb, n1, colsum=False)  # s_i R_i[t, c] and M_i[0, d]
    if need_x and not use_v3:
        dx = expand(q, sb, n1)
    if need_a:
        da = (g.t() @ r).float().view(m1, k, n1).permute(1, 0, 2).contiguous()
    dbias = g.sum(0, dtype=torch.float32) if need_bias else None
    return dx, da, m.view(k, 1, n2), dbias
