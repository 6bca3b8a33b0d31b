"""Which kernels run each pass of a fused call: the vector-B kernels where they apply, the general ones elsewhere.

Forward of y = act(x·Wᵀ + b), W = Σ s_i A_i ⊗ B_i: `vector_b_forward` for one factor with B one column or
row (`availability.vector_b_supports`) and more than `DECODE_TOKENS` tokens, else `general_forward`
(`large_b_forward` for large B). Backward, with G the gradient of the pre-activation: the vector-B calls
run `vector_b_backward` (cuBLAS GEMMs plus the `reduce` pass); the general ones compute grad_x, itself a
Kronecker product G·(Σ s_i A_iᵀ ⊗ B_iᵀ), with the general forward kernel (and the bias gradient, Σ_t G,
in the same pass), dA and M (hence dB = s·M and ds = ⟨B, M⟩) with the token reductions of `factor_grads`.

What the forward keeps for the backward (`saved`): P = x·A_0ᵀ for a vector-B call with B one column (m2×
smaller than the pre-activation, and the backward needs it anyway); otherwise the pre-activation when an
activation is fused and a gradient is needed (as unfused PyTorch keeps it for its GELU).
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import Tensor

from kronypt.kernels.activation import gelu_backward
from kronypt.kernels.availability import vector_b_supports
from kronypt.kernels.factor_grads import kron_grad_a, kron_grad_m
from kronypt.kernels.general_forward import kron_forward
from kronypt.kernels.vector_b_backward import vector_b_backward
from kronypt.kernels.vector_b_forward import vector_b_forward

# Calls of at most this many tokens (decoding) run the general forward: one launch sized for a few rows,
# the faster one inside a CUDA graph (H100: 3.9 µs against 5.2 µs for dense cuBLAS at one token).
DECODE_TOKENS = 16


def uses_vector_b(x: Tensor, A: Tensor, B: Tensor, impl: str) -> bool:
    """Whether a call on the 2-D x runs the vector-B kernels (else the general ones)."""
    return impl == "auto" and x.shape[0] > DECODE_TOKENS and vector_b_supports(A.shape[0], *B.shape[1:])


def saves_p(x: Tensor, A: Tensor, B: Tensor, impl: str) -> bool:
    """Whether a call on the 2-D x keeps P = x·A_0ᵀ for its backward (vector-B, B with one column)."""
    return uses_vector_b(x, A, B, impl) and B.shape[2] == 1


def fused_forward(x: Tensor, A: Tensor, B: Tensor, scalars: Tensor | None, bias: Tensor | None, act: int,
                  save: bool, impl: str = "auto") -> tuple[Tensor, Tensor]:
    """(y, saved) for a 2-D x: the body of the forward operator (plain, so tools can call it on meta
    tensors). With `save` (a backward will follow), `saved` is P where `saves_p`, else the pre-activation
    when an activation is fused; otherwise it is empty."""
    if x.shape[0] == 0:  # nothing to launch
        return forward_like(x, A, B, act, save, impl)
    with on_device(x):
        if uses_vector_b(x, A, B, impl):
            return vector_b_forward(x, A, B, scalars, bias, act, save)
        return kron_forward(x, A, B, scalars, bias, act, save and act != 0)


def forward_like(x: Tensor, A: Tensor, B: Tensor, act: int, save: bool, impl: str) -> tuple[Tensor, Tensor]:
    """Uninitialised (y, saved) with the shapes, dtypes and devices `fused_forward` returns."""
    y = x.new_empty(x.shape[0], A.shape[1] * B.shape[1])
    if save and saves_p(x, A, B, impl):
        return y, x.new_empty(x.shape[0], A.shape[0] * A.shape[1])
    return y, (torch.empty_like(y) if save and act != 0 else y.new_empty(0))


def on_device(x: Tensor) -> contextlib.AbstractContextManager:
    """Make x's GPU the current one: Triton launches on the current device, which a model on cuda:1 (or
    any rank but the first of a job that did not call set_device) would otherwise miss."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _alert_not_deterministic() -> None:
    """What PyTorch's own non-deterministic kernels do under `torch.use_deterministic_algorithms(True)`:
    raise, or warn with warn_only=True. The fused backward sums partial results with float atomics, so two
    runs can differ in the last bits. (The layer's automatic path avoids it in that mode.)"""
    if not torch.are_deterministic_algorithms_enabled():
        return
    message = ("kronypt's fused Kronecker backward sums with atomics and is not deterministic; use the layer's "
               "factored path (path='factored', or path='auto', which avoids it in deterministic mode)")
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(message, stacklevel=2)
    else:
        raise RuntimeError(message)


def fused_backward(grad: Tensor, x: Tensor, A: Tensor, B: Tensor, scalars: Tensor | None, saved: Tensor,
                   bias: Tensor | None, act: int, need_x: bool, need_a: bool, need_b: bool, need_s: bool,
                   need_bias: bool, impl: str = "auto") -> list[Tensor]:
    """[grad_x, dA, dB, ds, dbias]; an unneeded one is an empty tensor. Factor gradients are float32.
    `saved` is the forward's second output; `bias` is needed only to rebuild a pre-activation from P."""
    outputs = backward_like(x, A, B, need_x, need_a, need_b, need_s, need_bias)
    if x.shape[0] == 0:
        return [t.zero_() for t in outputs]
    _alert_not_deterministic()
    g = grad.contiguous()
    with on_device(x):
        if uses_vector_b(x, A, B, impl):
            dx, da, M, dbias = vector_b_backward(g, x, A, B, scalars, saved, act, bias, need_x, need_a, need_bias)
            outputs[0] = dx if need_x else outputs[0]
            outputs[1] = da if need_a else outputs[1]
            outputs[4] = dbias if need_bias else outputs[4]
        else:
            M = _general_backward(outputs, g, x, A, B, scalars, saved, act, need_x, need_a, need_b or need_s,
                                  need_bias)
        _factor_grads(outputs, M, B, scalars, need_b, need_s)
    return outputs


def _general_backward(outputs: list[Tensor], g: Tensor, x: Tensor, A: Tensor, B: Tensor, scalars: Tensor | None,
                      saved: Tensor, act: int, need_x: bool, need_a: bool, need_m: bool,
                      need_bias: bool) -> Tensor | None:
    """grad_x, dA and dbias into `outputs` on the general kernels; returns M (or None when not needed)."""
    m2, n2 = B.shape[1:]
    if act:
        g = gelu_backward(g, saved)
    if need_x:
        colsum = outputs[4].zero_() if need_bias else None
        outputs[0] = kron_forward(g, A.transpose(1, 2), B.transpose(1, 2), scalars, None, colsum=colsum)[0]
    elif need_bias:
        outputs[4] = g.sum(0, dtype=torch.float32)
    if need_a:
        outputs[1] = kron_grad_a(x, g, A, B, scalars)
    return kron_grad_m(x, g, A, m2, n2) if need_m else None


def _factor_grads(outputs: list[Tensor], M: Tensor | None, B: Tensor, scalars: Tensor | None, need_b: bool,
                  need_s: bool) -> None:
    """dB = s·M and ds = ⟨B, M⟩ into `outputs` (M float32 (k, m2, n2))."""
    if need_b:
        outputs[2] = M * scalars.float().view(-1, 1, 1) if scalars is not None else M
    if need_s:
        outputs[3] = (M * B.float()).sum((1, 2))


def backward_like(x: Tensor, A: Tensor, B: Tensor, need_x: bool, need_a: bool, need_b: bool, need_s: bool,
                  need_bias: bool) -> list[Tensor]:
    """Uninitialised [grad_x, dA, dB, ds, dbias] with the shapes `fused_backward` returns (empty when not
    needed; factor gradients float32)."""
    k, m1, n1 = A.shape
    _, m2, n2 = B.shape

    def f32(needed: bool, *shape: int) -> Tensor:
        return x.new_empty(shape if needed else (0,), dtype=torch.float32)

    return [x.new_empty(x.shape if need_x else (0,)), f32(need_a, k, m1, n1), f32(need_b, k, m2, n2),
            f32(need_s, k), f32(need_bias, m1 * m2)]
