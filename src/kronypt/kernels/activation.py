"""GPT-2's `gelu_new` (the tanh approximation of GELU) inside kernels, and its backward pass.

gelu(x) = ½·x·(1 + tanh(u)), u = √(2/π)·(x + 0.044715·x³), √(2/π) = 0.7978845608028654. The forward
is fused into the forward kernels' epilogues. In the backward, the general kernels (and the vector-B ones
with B one row) run one elementwise pass that turns the output gradient into the gradient of the
pre-activation, which the backward kernels then read like any output gradient; the vector-B backward with
B one column applies gelu' inside its `reduce` pass instead (`gelu_tanh_grad`), rebuilding the
pre-activation from the saved P. (The constants are written inline: a `tl.constexpr` global times a
tensor breaks the interpreter.)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kronypt.errors import KronyptError
from kronypt.kernels.availability import FUSED_ACTIVATIONS
from kronypt.kernels.tuning import cdiv, launch

# Names accepted for the tanh-approximated GELU (GPT-2's config calls it "gelu_new"); 0 means none.
ACTIVATIONS = dict.fromkeys(FUSED_ACTIVATIONS, 1)


def activation_code(activation: str | None) -> int:
    """The kernels' code for an activation name (0 for none)."""
    if activation is None:
        return 0
    if activation not in ACTIVATIONS:
        raise KronyptError(f"unknown activation {activation!r}; choose None or one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[activation]


@triton.jit
def _tanh(z):
    # tanh from exp(-2|z|) ∈ (0, 1]: no overflow for any z, exact limits ±1.
    e = tl.exp(-2.0 * tl.abs(z))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(z >= 0, t, -t)


@triton.jit
def gelu_tanh(x):
    """gelu_new of a float32 block."""
    return 0.5 * x * (1.0 + _tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))


@triton.jit
def gelu_tanh_grad(g, x):
    """d loss / d x from g = d loss / d gelu_new(x), float32 blocks."""
    th = _tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))
    du = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x)
    return g * (0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du)


@triton.jit
def _gelu_backward_kernel(G, PRE, OUT, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(PRE + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + offs, gelu_tanh_grad(g, x).to(OUT.dtype.element_ty), mask=mask)


def gelu_backward(grad: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """d loss / d pre-activation from d loss / d gelu(pre); both contiguous, same shape."""
    out = torch.empty_like(pre)
    n = pre.numel()
    args = {"G": grad, "PRE": pre, "OUT": out, "N": n, "BLOCK": 1024}
    launch(_gelu_backward_kernel, [], lambda meta: (cdiv(n, meta["BLOCK"]),), args)
    return out
