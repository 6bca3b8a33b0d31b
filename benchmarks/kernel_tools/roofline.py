"""Roofline estimate of the fused kernels against dense cuBLAS and the materialised path on a GPU.

Each kernel costs max(bytes / bandwidth, tensor-core FLOPs / TC rate + register FMAs / FMA rate) plus a
launch; bytes count every input read once and every output written once (what the kernels are built
for). The rates default to an H100 SXM (3.0 TB/s device copy, ≈ 650 TFLOP/s sustained bf16 GEMM, 132 SMs
× 128 fp32 lanes × 1.7 GHz). The estimates predict; the numbers that count come from `benchmarks/gpu.py`
(docs/gpu-notes.md), and only those decide the layer's automatic path (`kronypt.kernels.measured_wins`).
"""

from __future__ import annotations

from dataclasses import dataclass

from kronypt.kernels.availability import uses_large_b_kernel, vector_b_supports
from kronypt.math.shapes import KronShape


@dataclass(frozen=True)
class Device:
    bandwidth: float = 3.0e12  # bytes/s
    tensor_flops: float = 650e12  # FLOP/s, bf16 with fp32 accumulation
    fma_rate: float = 132 * 128 * 1.7e9  # fp32 FMA/s on the CUDA cores
    launch: float = 4e-6  # s per kernel


H100 = Device()


def _pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def _kernel(dev: Device, bytes_: float, tc_macs: float, fmas: float) -> float:
    return max(bytes_ / dev.bandwidth, 2 * tc_macs / dev.tensor_flops + fmas / dev.fma_rate) + dev.launch


def _forward(dev: Device, s: KronShape, k: int, tokens: int, nbytes: int) -> float:
    """A one-kernel forward on one shape (also grad_x on the transposed shape): the general forward, and
    the vector-B forward, whose ideal is the same (x and A read once, y written once)."""
    io = nbytes * (tokens * (s.in_features + s.out_features) + s.params(k))
    m2p, n2p = _pow2(s.m2), _pow2(s.n2)
    if uses_large_b_kernel(s.m2, s.n2):  # both contractions on the tensor cores, padded
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
    """One memory-bound pass (`reduce`, a column sum) moving `elements` values."""
    return _kernel(dev, nbytes * elements, 0, 0)


def predict_general(shape: KronShape, k: int, tokens: int, training: bool, nbytes: int = 2,
                    dev: Device = H100) -> float:
    """Seconds of the general kernels: the forward; in training also grad_x (the forward kernel on the
    transposed shape) and the two token reductions (dA, M)."""
    t = _forward(dev, shape, k, tokens, nbytes)
    if not training:
        return t
    io = nbytes * tokens * (shape.in_features + shape.out_features)
    small = min(shape.m2, shape.n2) * max(_pow2(shape.m2), _pow2(shape.n2))
    reduction = _kernel(dev, io, k * tokens * shape.m1 * shape.n1 * min(shape.m2, shape.n2),
                        k * tokens * max(shape.m1, shape.n1) * small)
    return t + _forward(dev, shape.transposed(), k, tokens, nbytes) + 2 * reduction


def predict_vector_b(shape: KronShape, tokens: int, training: bool, nbytes: int = 2, dev: Device = H100) -> float:
    """Seconds of the vector-B kernels (one factor, B one column or row): the forward reads x and A once
    and writes y once with the A-contraction (a quarter of dense for 81M) overlapped; the backward is
    `reduce` plus cuBLAS GEMMs."""
    s, T = shape, tokens
    t = _forward(dev, s, 1, T, nbytes)
    if not training:
        return t
    if s.n2 == 1:  # P kept (T·m1 values); reduce (G, P → H, M, Σ_t G); the dX and dA GEMMs
        t += nbytes * T * s.m1 / dev.bandwidth + _stream(dev, T * (s.out_features + 2 * s.m1), nbytes)
        return t + _gemm(dev, T, s.n1, s.m1, nbytes) + _gemm(dev, s.m1, s.n1, T, nbytes)
    # B one row: grad_x and Q = G·A in one forward pass on (Aᵀ, Bᵀ); reduce (x, Q → R, M); dA GEMM; Σ_t G
    t += _forward(dev, s.transposed(), 1, T, nbytes) + nbytes * T * s.n1 / dev.bandwidth
    t += _stream(dev, T * (s.in_features + 2 * s.n1), nbytes)
    return t + _gemm(dev, s.m1, s.n1, T, nbytes) + _stream(dev, T * s.out_features, nbytes)


def vector_b_traffic(shape: KronShape, tokens: int, block_t: int, block_a: int, nbytes: int = 2,
                     split: int = 1) -> dict[str, float]:
    """Bytes one vector-B forward moves with (block_t, block_a) tiles and `split` accumulators per program:
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
    materialised, `fused_general` (the general kernels) and `fused` (what `kron_linear_fused` runs: the
    vector-B kernels where they apply and more than 16 tokens, else the general ones)."""
    dense_macs = tokens * shape.in_features * shape.out_features
    io = nbytes * tokens * (shape.in_features + shape.out_features)
    weight = nbytes * shape.in_features * shape.out_features
    dense = _kernel(dev, io + weight, dense_macs, 0) * (3 if training else 1)
    # build W (read nothing, write W), and in training contract dW back into A and B (read dW k times)
    build = weight / dev.bandwidth + dev.launch + (k * weight / dev.bandwidth + 2 * dev.launch if training else 0)
    general = predict_general(shape, k, tokens, training, nbytes, dev)
    vector_b = tokens > 16 and vector_b_supports(k, shape.m2, shape.n2)
    fused = predict_vector_b(shape, tokens, training, nbytes, dev) if vector_b else general
    return {"dense": dense, "materialised": dense + build, "fused_general": general, "fused": fused}
