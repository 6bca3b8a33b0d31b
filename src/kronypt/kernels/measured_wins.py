"""Where the fused kernels were measured faster than the PyTorch paths: the table `path="auto"` reads.

Only measured wins go here, never predictions: a roofline estimate of the general kernels was 2-30x
optimistic on an H100 (docs/gpu-notes.md), so the automatic path switches to the fused kernels only where
`benchmarks/gpu.py` timed them ahead of both the materialised and the factored path, in bfloat16.
"""

from __future__ import annotations

from kronypt.math.shapes import KronShape

# (m1, n1, m2, n2, k, training) -> the smallest token count measured to win. NVIDIA H100 80GB HBM3, bf16,
# torch 2.11.0, triton 3.6.0 (docs/gpu-notes.md, "Measured results").
MEASURED_WINS: dict[tuple[int, int, int, int, int, bool], int] = {
    # 67M c_fc forward (large-B kernel) at 65536 tokens: 1.48x dense, materialised 0.98x (2026-11-27)
    (64, 32, 48, 24, 1, False): 65536,
    # 81M c_fc / c_proj (vector-B kernels, GELU fused into c_fc's epilogue by the model's MLP): the whole
    # GPT-2-124M model trains at 1.28x dense and prefills at 1.19x eager, 2.56x in a CUDA graph, where
    # materialising runs at 0.98x and 0.42-0.65x (2026-11-26 and 2026-11-27); the layers alone at 65536
    # tokens: c_fc forward 1.81x, forward + backward 1.46x; c_proj 1.32x and 1.14x.
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
