"""Roofline estimate of the fused kernels against dense cuBLAS and the materialised path on a GPU.

Each kernel costs max(bytes / bandwidth, tensor-core FLOPs / TC rate + register FMAs / FMA rate) plus a
launch; bytes count every input read once and every output written once (what the kernels are built
for). The rates default to an H100 SXM as measured in this workplace (3.0 TB/s device copy, ≈ 650
TFLOP/s sustained bf16 GEMM, 132 SMs × 128 fp32 lanes × 1.7 GHz). The estimates predict; the numbers
that count come from `benchmarks/gpu.py` and are recorded in docs/gpu-notes.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from kronypt.kernels.availability import v2_supports, v3_supports
from kronypt.math.shapes import KronShape


@dataclass(frozen=True)
class Device:
    bandwidth: float = 3.0e12  # bytes/s
    tensor_flops: float = 650e12  # FLOP/s, bf16 with fp32 accumulation
    fma_rate: float = 132 * 128 * 1.7e9  # fp32 FMA/s on the CUDA cores
    launch: float = 4e-6  # s per kernel


H100 = Device()
# From this size of both m2 and n2 on, B is applied on the tensor cores (`kronypt.kernels.two_stage`).
TWO_STAGE_MIN = 9


def uses_two_stage(m2: int, n2: int) -> bool:
    """Whether a B factor of shape (m2, n2) goes to the two-stage kernel."""
    return min(m2, n2) >= TWO_STAGE_MIN


def _pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def _kernel(dev: Device, bytes_: float, tc_macs: float, fmas: float) -> float:
    return max(bytes_ / dev.bandwidth, 2 * tc_macs / dev.tensor_flops + fmas / dev.fma_rate) + dev.launch


def _forward(dev: Device, s: KronShape, k: int, tokens: int, nbytes: int) -> float:
    """The forward kernel on one shape (also grad_x on the transposed shape)."""
    io = nbytes * (tokens * (s.in_features + s.out_features) + s.params(k))
    m2p, n2p = _pow2(s.m2), _pow2(s.n2)
    if uses_two_stage(s.m2, s.n2):  # both contractions on the tensor cores, padded
        return _kernel(dev, io, k * tokens * s.m1 * n2p * (s.n1 + m2p), 0)
    if s.n2 <= s.m2:  # A first: pick a column of x, spread the GEMM result over b
        fmas = k * s.n2 * (s.n1 * n2p * (n2p > 1) + s.m1 * m2p)
    else:  # B first: contract x with a row of B, then insert into column b
        fmas = k * s.m2 * (s.n1 * n2p + s.m1 * m2p)
    return _kernel(dev, io, k * tokens * s.m1 * s.n1 * min(s.m2, s.n2), tokens * fmas)


def _gemm(dev: Device, m: int, n: int, k: int, nbytes: int) -> float:
    """One cuBLAS GEMM (m, k) @ (k, n): its operands read once, its output written once."""
    return _kernel(dev, nbytes * (m * k + k * n + m * n), m * n * k, 0)


def _stream(dev: Device, elements: float, nbytes: int) -> float:
    """One memory-bound pass (a GEMV, `expand`, `reduce`, a column sum) moving `elements` values."""
    return _kernel(dev, nbytes * elements, 0, 0)


def predict_v2(shape: KronShape, k: int, tokens: int, training: bool, nbytes: int = 2,
               dev: Device = H100) -> float:
    """Seconds of version 2 (`kronypt.kernels.gemm_path`, B with one column or one row)."""
    s, T = shape, tokens
    if s.n2 == 1:  # P = x·A_catᵀ (kept for the backward), expand; backward: reduce (G, P → H), dX, dA
        t = _gemm(dev, T, k * s.m1, s.n1, nbytes) + _stream(dev, T * (k * s.m1 + s.out_features), nbytes)
        if training:
            t += _stream(dev, T * (s.out_features + 2 * k * s.m1), nbytes)
            t += _gemm(dev, T, s.n1, k * s.m1, nbytes) + _gemm(dev, k * s.m1, s.n1, T, nbytes)
        return t
    # m2 = 1: R (GEMV over d), one GEMM; backward: Q GEMM, reduce (x, Q → R), expand (dX), dA GEMM, Σ_t G
    t = _stream(dev, T * (s.in_features + k * s.n1), nbytes) + _gemm(dev, T, s.m1, k * s.n1, nbytes)
    if training:
        t += _gemm(dev, T, k * s.n1, s.m1, nbytes)
        t += _stream(dev, T * (s.in_features + 2 * k * s.n1), nbytes)
        t += _stream(dev, T * (k * s.n1 + s.in_features), nbytes)
        t += _gemm(dev, s.m1, k * s.n1, T, nbytes) + _stream(dev, T * s.out_features, nbytes)
    return t


def predict_v3(shape: KronShape, tokens: int, training: bool, nbytes: int = 2, dev: Device = H100) -> float:
    """Seconds of version 3 (`kronypt.kernels.v3`: k = 1, B with one column or row, > 16 tokens). Its one
    forward kernel reads x and A once and writes y once with the A-contraction (a quarter of dense for
    81M) overlapped, i.e. version 1's ideal forward; the backward is version 2's, with grad_x of a B with
    one row on the version-3 kernel."""
    t = _forward(dev, shape, 1, tokens, nbytes)
    if not training:
        return t
    s, T = shape, tokens
    if s.n2 == 1:  # + P kept for the backward; version 2's backward (reduce, dX and dA GEMMs)
        t += nbytes * T * s.m1 / dev.bandwidth
        return t + predict_v2(s, 1, T, True, nbytes, dev) - predict_v2(s, 1, T, False, nbytes, dev)
    # B one row: grad_x and Q = G·A in one version-3 pass on (Aᵀ, Bᵀ); reduce (x, Q → R, M); dA GEMM; Σ_t G
    t += _forward(dev, s.transposed(), 1, T, nbytes) + nbytes * T * s.n1 / dev.bandwidth
    t += _stream(dev, T * (s.in_features + 2 * s.n1), nbytes)
    return t + _gemm(dev, s.m1, s.n1, T, nbytes) + _stream(dev, T * s.out_features, nbytes)


def v3_traffic(shape: KronShape, tokens: int, block_t: int, block_a: int, nbytes: int = 2,
               split: int = 1) -> dict[str, float]:
    """Bytes one version-3 forward moves with (block_t, block_a) tiles and `split` accumulators per program:
    `hbm` (x and A read once, y written once) and `l2` (what the programs load from L2 plus what they store:
    every group of split·block_a A rows of a token tile loads its x tile, every token tile loads the whole
    of A). With 128 × 128 tiles at 65536 tokens the L2 traffic is 3.2× the HBM bytes on 81M c_fc and 6.2×
    on c_proj (x 4× wider than y): why the sweep tries wider tiles and several accumulators."""
    x = nbytes * tokens * shape.in_features
    y = nbytes * tokens * shape.out_features
    a = nbytes * shape.m1 * shape.n1
    a_groups, t_blocks = -(-shape.m1 // (block_a * split)), -(-tokens // block_t)
    return {"hbm": x + y + a, "l2": x * a_groups + a * t_blocks + y}


def predict(shape: KronShape, k: int, tokens: int, training: bool, nbytes: int = 2,
            dev: Device = H100) -> dict[str, float]:
    """Predicted seconds of one layer call (forward, or forward + backward when `training`): dense,
    materialised, `fused_v1` (the one-kernel design), `fused_v2` and `fused` (what `kron_linear_fused`
    runs: for more than 16 tokens version 3 where `v3.supports` the shape, else version 2 where
    `gemm_path.supports` it; version 1 otherwise)."""
    dense_macs = tokens * shape.in_features * shape.out_features
    io = nbytes * tokens * (shape.in_features + shape.out_features)
    weight = nbytes * shape.in_features * shape.out_features
    dense = _kernel(dev, io + weight, dense_macs, 0) * (3 if training else 1)
    # build W (read nothing, write W), and in training contract dW back into A and B (read dW k times)
    build = weight / dev.bandwidth + dev.launch + (k * weight / dev.bandwidth + 2 * dev.launch if training else 0)
    v1 = _forward(dev, shape, k, tokens, nbytes)
    if training:
        small = min(shape.m2, shape.n2) * max(_pow2(shape.m2), _pow2(shape.n2))
        reduction = _kernel(dev, io, k * tokens * shape.m1 * shape.n1 * min(shape.m2, shape.n2),
                            k * tokens * max(shape.m1, shape.n1) * small)
        v1 += _forward(dev, shape.transposed(), k, tokens, nbytes) + 2 * reduction
    fused = tokens > 16  # decode-sized calls run version 1
    v2 = predict_v2(shape, k, tokens, training, nbytes, dev) if fused and v2_supports(shape.m2, shape.n2) else v1
    v3 = predict_v3(shape, tokens, training, nbytes, dev) if fused and v3_supports(k, shape.m2, shape.n2) else v2
    return {"dense": dense, "materialised": dense + build, "fused_v1": v1, "fused_v2": v2, "fused": v3}


# Where `kron_linear_fused` beat BOTH the materialised and the factored path on an H100 (bf16, eager,
# benchmarks/gpu.py), as (m1, n1, m2, n2, k, training) -> the smallest token count measured to win.
# Only measured wins go here: the roofline above was 2-30x optimistic for version 1 (H100 run 1,
# docs/gpu-notes.md), so predictions alone never switch the automatic path to the fused kernels.
MEASURED_WINS: dict[tuple[int, int, int, int, int, bool], int] = {
    (64, 32, 48, 24, 1, False): 65536,  # 67M c_fc forward, run 1: 0.30 ms vs materialised 0.53 ms
    # 81M c_fc / c_proj (version 2), from the whole GPT-2-124M model on an H100 with each MLP run as
    # fused c_fc + GELU in the kernel, then fused c_proj (gpu.py's `kron_fused`, the same computation as
    # `KroneckerGPT2MLP` on this path): training 176.8k / 156.2k tokens/s (runs 2 / 3) vs 124.8k / 124.0k
    # materialised and 126.3k / 126.8k dense; prefill 771k / 533k vs 658k / 427k materialised. (Without
    # the GELU fusion, run 3 trained at 0.98x dense: the MLP-level fusion is what pays.)
    (768, 768, 4, 1, 1, True): 1024,
    (768, 768, 4, 1, 1, False): 1024,
    (768, 768, 1, 4, 1, True): 1024,
    (768, 768, 1, 4, 1, False): 1024,
}


def fused_wins(shape: KronShape, k: int, tokens: int, training: bool) -> bool:
    """True only where the fused kernels were measured faster than the materialised and factored paths
    on an H100 (`MEASURED_WINS`), for at least as many tokens as measured."""
    least = MEASURED_WINS.get((shape.m1, shape.n1, shape.m2, shape.n2, k, training))
    return least is not None and tokens >= least
