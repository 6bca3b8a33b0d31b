"""Cost model that picks the forward path of a Kronecker layer.

Costs are multiply-adds weighted by how efficiently each kind of work runs. The factored path pays for
its two skinny GEMMs and the reshuffles between them per token; the materialised path pays k·out·in to
build W (once per call) and a dense GEMM per token. Training adds the backward of each: about twice the
forward for the GEMMs, and for the materialised path the gradient of W contracted back into A and B.
The weights below were fitted to `benchmarks/layer.py` on a 2-core CPU; they only move the break-even
point, so a rough fit is enough. On tensor cores the balance is different (see `choose_path`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kronypt.math.shapes import KronShape

Path = Literal["factored_a_first", "factored_b_first", "materialised"]

# Fitted to benchmarks/layer.py on the 2-core CPU (float32, benchmarks/results/layer-cpu.json): the
# factored GEMMs run at ~85% of dense GEMM speed per multiply-add; a reshuffled element costs ~4 MACs; and
# building W is memory-bound, ~16 MACs per element of W and factor (92M-4 at 64 tokens: building W took as
# long as 64 tokens of dense matmul).
FACTORED_EFFICIENCY = 0.85
COPY_COST_PER_ELEMENT = 4.0
BUILD_COST_PER_ELEMENT = 16.0


@dataclass(frozen=True)
class PathCosts:
    factored_a_first: float
    factored_b_first: float
    materialised: float

    def best(self) -> Path:
        """The cheapest path (the first of equals). Plain comparisons, not min(key=...): under torch.compile
        with dynamic shapes the costs are symbolic, and Dynamo guards comparisons but cannot trace min's key."""
        best: Path = "factored_a_first"
        cost = self.factored_a_first
        if self.factored_b_first < cost:
            best, cost = "factored_b_first", self.factored_b_first
        if self.materialised < cost:
            best = "materialised"
        return best


def path_costs(shape: KronShape, k: int, tokens: int, training: bool) -> PathCosts:
    """Estimated cost (arbitrary units) of each path for `tokens` tokens."""
    a_macs, b_macs = shape.macs_per_token(k)
    # Elements shuffled per token: the input transpose (A first) and the intermediate permute.
    a_copy = (shape.in_features if shape.n2 > 1 else 0) + (k * shape.n2 * shape.m1 if k * shape.n2 > 1 else 0)
    b_copy = k * shape.n1 * shape.m2 + shape.out_features
    # Per call, the small factor is rearranged (scalars folded in): B for A first, A for B first.
    a_call = k * shape.m2 * shape.n2
    b_call = k * shape.m1 * shape.n1 if k > 1 else 0
    dense = shape.dense_macs_per_token()
    build = BUILD_COST_PER_ELEMENT * k * dense
    grad_scale = 3.0 if training else 1.0
    factored_a = tokens * grad_scale * (a_macs / FACTORED_EFFICIENCY + COPY_COST_PER_ELEMENT * a_copy)
    factored_b = tokens * grad_scale * (b_macs / FACTORED_EFFICIENCY + COPY_COST_PER_ELEMENT * b_copy)
    factored_a += COPY_COST_PER_ELEMENT * a_call * grad_scale
    factored_b += COPY_COST_PER_ELEMENT * b_call * grad_scale
    materialised = tokens * grad_scale * dense + build * (2.0 if training else 1.0)
    return PathCosts(factored_a, factored_b, materialised)


# On tensor cores (CUDA bf16/fp16, or TF32) the dense GEMM runs near peak while the factored path's skinny
# GEMMs and permutes are memory-bound: measured on an H100 (docs/benchmarks.md), materialising W beat the
# factored path for every scheme from 1024 tokens on. The factored path stays for decode-sized calls,
# where it reads far fewer bytes and is CUDA-graph friendly.
TENSOR_CORE_FACTORED_MAX_TOKENS = 16


def choose_path(shape: KronShape, k: int, tokens: int, training: bool, tensor_cores: bool = False) -> Path:
    """The cheapest forward path for this call (`tensor_cores`: the matmuls run on CUDA tensor cores)."""
    costs = path_costs(shape, k, tokens, training)
    if tensor_cores:
        if tokens > TENSOR_CORE_FACTORED_MAX_TOKENS:
            return "materialised"
        return "factored_a_first" if costs.factored_a_first <= costs.factored_b_first else "factored_b_first"
    return costs.best()
