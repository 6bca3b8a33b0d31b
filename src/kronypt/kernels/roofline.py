"""Roofline estimate of the fused kernels against dense cuBLAS and the materialised path on a GPU.

Each kernel costs max(bytes / bandwidth, tensor-core FLOPs / TC rate + register FMAs / FMA rate) plus a
launch; bytes count every input read once and every output written once (what the kernels are built
for). The rates default to an H100 SXM as measured in this workplace (3.0 TB/s device copy, ≈ 650
TFLOP/s sustained bf16 GEMM, 132 SMs × 128 fp32 lanes × 1.7 GHz). The estimates predict; the numbers
that count come from `benchmarks/gpu.py` and are recorded in docs/gpu-notes.md.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def predict(shape: KronShape, k: int, tokens: int, training: bool, nbytes: int = 2,
            dev: Device = H100) -> dict[str, float]:
    """Predicted seconds of one layer call (forward, or forward + backward when `training`)."""
    dense_macs = tokens * shape.in_features * shape.out_features
    io = nbytes * tokens * (shape.in_features + shape.out_features)
    weight = nbytes * shape.in_features * shape.out_features
    dense = _kernel(dev, io + weight, dense_macs, 0) * (3 if training else 1)
    # build W (read nothing, write W), and in training contract dW back into A and B (read dW k times)
    build = weight / dev.bandwidth + dev.launch + (k * weight / dev.bandwidth + 2 * dev.launch if training else 0)
    fused = _forward(dev, shape, k, tokens, nbytes)
    if training:
        small = min(shape.m2, shape.n2) * max(_pow2(shape.m2), _pow2(shape.n2))
        reduction = _kernel(dev, io, k * tokens * shape.m1 * shape.n1 * min(shape.m2, shape.n2),
                            k * tokens * max(shape.m1, shape.n1) * small)
        fused += _forward(dev, shape.transposed(), k, tokens, nbytes) + 2 * reduction
    return {"dense": dense, "materialised": dense + build, "fused": fused}


def fused_wins(shape: KronShape, k: int, tokens: int, training: bool) -> bool:
    """True when the fused kernels are predicted faster than materialising W (bf16 on an H100)."""
    p = predict(shape, k, tokens, training)
    return p["fused"] < p["materialised"]
