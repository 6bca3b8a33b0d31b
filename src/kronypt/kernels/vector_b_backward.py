"""Backward of the vector-B kernels' calls (one factor, B one column or row): cuBLAS GEMMs + one Triton pass.

With G the gradient of the pre-activation, every large contraction is one cuBLAS GEMM on the factored form
and everything with the small B factor is `reduce`, one memory-bound Triton pass:

B one column (n2 = 1):  `reduce` reads G and the P = x·A_0ᵀ the forward kept, once (with GELU,
                        pre = Σ_b s·B[b]·P + bias rebuilt in registers, so the output gradient becomes G on
                        the fly): H[t, a] = Σ_b G[t,a,b] s·B[b, 0], M[b] = Σ_{t,a} G[t,a,b] P[t,a],
                        dbias = Σ_t G; then dX = H · A_0 and dA = Hᵀ x (two GEMMs).
B one row (m2 = 1):     dX = G · (A ⊗ B) is a layer with the factors Aᵀ, Bᵀ (B one column), so
                        `vector_b_forward` computes it in one pass and also keeps Q = G · A_0 (its P);
                        `reduce` on (x, Q) gives s·R and Mᵀ; dA = Gᵀ (s R) (GEMM), dbias = Σ_t G.

dB = s·M and ds = ⟨B, M⟩ (`kronypt.kernels.dispatch`). The scalars ride on B (tiny), never on a large
tensor. Nothing synchronises with the host (graph-capturable); `reduce` takes fixed block sizes (no
autotuner in the launch path: less host time per call).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kronypt.kernels.activation import gelu_backward, gelu_tanh_grad
from kronypt.kernels.availability import INTERPRET
from kronypt.kernels.overrides import overridden
from kronypt.kernels.tuning import cdiv, launch, next_pow2, sm_count
from kronypt.kernels.vector_b_forward import vector_b_forward


def reduce_config(bt: int, ba: int, warps: int, load_2d: int = 1, sum_each: int = 0, stages: int = 1,
                  per_sm: int = 2) -> triton.Config:
    """A `reduce` config: tile and warps, G read as 2-D rows (16-byte loads) or 3-D, token sums per tile
    (`SUM_EACH`), `STAGES` > 1 software-pipelines the token loop's loads, and `PER_SM` programs per
    multiprocessor (the grid; host side only)."""
    return triton.Config({"BLOCK_T": bt, "BLOCK_A": ba, "LOAD_2D": load_2d, "SUM_EACH": sum_each,
                          "STAGES": stages, "PER_SM": per_sm}, num_warps=warps, num_stages=1)


# (BLOCK_T, BLOCK_A, warps): a (BLOCK_T, BLOCK_A, m2) float32 tile per program; small under the interpreter
# so that the test shapes span several programs along both axes. The fastest of an H100 sweep (81M shape,
# 65536 tokens, bf16): G read with 16-byte 2-D loads, 0.37 ms = 1.65 TB/s ((32, 64)/8 warps with 3-D
# loads: 0.52 ms). A B longer than 4 (m2 of a column, n2 of a row) keeps that tile: the 4-warp one spills
# more there (sm_90, m2 = 8).
REDUCE_DEFAULT = reduce_config(16, 16, 8, load_2d=0) if INTERPRET else reduce_config(16, 64, 4)
REDUCE_WIDE = reduce_config(16, 16, 8, load_2d=0) if INTERPRET else reduce_config(32, 64, 8, load_2d=0)
# What runs: a tile tuned on the user's card (`kronypt.kernels.overrides`: $KRONYPT_KERNEL_CONFIGS, written
# by `benchmarks/sweep.py --write-configs`) in place of the default, for the shapes it was timed on (m2 ≤ 4).
REDUCE = overridden("vector_b_backward", {"reduce": REDUCE_DEFAULT})["reduce"]


@triton.jit
def _reduce_kernel(
    G, P, BV, BIAS, H, MOUT, COLS, T, T_SLICE, stride_gt, stride_pt,
    M1: tl.constexpr, M2: tl.constexpr, M2P: tl.constexpr, K: tl.constexpr, KP: tl.constexpr,
    COLSUM: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_A: tl.constexpr, LOAD_2D: tl.constexpr, SUM_EACH: tl.constexpr,
    STAGES: tl.constexpr,
):
    # H[t, i*M1 + a] = Σ_b G[t, a*M2 + b] BV[i, b];  MOUT[i, b] += Σ_{t,a} G[t, a*M2 + b] P[t, i*M1 + a];
    # COLS[a*M2 + b] += Σ_t G[t, a*M2 + b]. Program = (A-row block, token slice). ACT: G is the gradient
    # of gelu_new(pre) and is turned into the pre-activation gradient on the fly (never stored), with
    # pre[t, a*M2 + b] = Σ_i BV[i, b] P[t, i*M1 + a] + BIAS[a*M2 + b] recomputed from the saved P exactly
    # as the forward formed it: the forward keeps P (T·k·m1 values), not the m2× larger pre-activation.
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
            p = tl.load(P + p_ptrs, mask=mask_p, other=0.0).to(tl.float32)
            if K == 1:
                if SUM_EACH:
                    m_one += tl.sum(g3 * p[:, :, None], axis=0, keep_dims=True)
                else:
                    m_one += g3 * p[:, :, None]
            else:
                part = tl.sum(tl.sum(g3 * p[:, :, None], axis=0), axis=0)
                m_all += tl.where((offs_k == i)[:, None], part[None, :], 0.0)
    if K == 1:
        m_all += tl.where((offs_k == 0)[:, None], tl.sum(tl.sum(m_one, axis=0), axis=0)[None, :], 0.0)
    tl.atomic_add(MOUT + offs_k[:, None] * M2 + offs_b[None, :], m_all,
                  mask=(offs_k < K)[:, None] & (offs_b < M2)[None, :])
    if COLSUM:
        tl.atomic_add(COLS + g_cols, tl.sum(cols, axis=0), mask=mask_g)


def reduce(g: torch.Tensor, p: torch.Tensor, bv: torch.Tensor, m1: int, colsum: bool, act: int = 0,
           bias: torch.Tensor | None = None, config: triton.Config | None = None,
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(H, M, column sums of g or None) for g (T, m1·m2), p (T, k·m1), bv float32 (k, m2); see the kernel.
    With `act`, g is the gradient of gelu_new(pre), pre[t, a·m2 + b] = Σ_i bv[i, b] p[t, i·m1 + a] + bias[a·m2 + b]
    recomputed in registers. `config` overrides the block sizes (a candidate of `benchmarks/sweep.py`)."""
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
    args = dict(G=g, P=p, BV=bv, BIAS=bias if bias is not None else bv, H=h, MOUT=m,
                COLS=cols, T=T, T_SLICE=t_slice, stride_gt=g.stride(0), stride_pt=h.stride(0), M1=m1, M2=m2,
                M2P=next_pow2(m2), K=k, KP=next_pow2(k), COLSUM=colsum, ACT=act,
                HAS_BIAS=bias is not None)
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


def vector_b_backward(g: torch.Tensor, x: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                      scalars: torch.Tensor | None, saved: torch.Tensor, act: int, bias: torch.Tensor | None,
                      need_x: bool, need_a: bool, need_bias: bool,
                      ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """(dX, dA float32, M float32 (1, m2, n2), dbias float32) from the output gradient g (contiguous) and
    what `vector_b_forward` saved; with `act`, g is the gradient of gelu_new(pre). The scalars ride on B in
    `reduce`, so H (resp. R) already carries s and dX, dA need no rescaling."""
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
    dx, q = vector_b_forward(g, A.transpose(1, 2).contiguous(), B.transpose(1, 2), scalars, None, 0, True)
    r, m, _ = reduce(x, q, _scaled(B[:, 0, :], scalars), n1, colsum=False)  # s·R[t, c] and M[0, d]
    if need_a:
        da = (g.t() @ r).float().view(m1, k, n1).permute(1, 0, 2).contiguous()
    dbias = g.sum(0, dtype=torch.float32) if need_bias else None
    return dx, da, m.view(k, 1, n2), dbias
