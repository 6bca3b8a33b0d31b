"""`kron_linear_fused`: the fused kernels as PyTorch operators with autograd.

The forward and the backward (`kronypt.kernels.dispatch`: which kernels run each pass) are registered as
custom operators (`torch.ops.kronypt.*`) with shape-only fake implementations, so `torch.compile` treats
them as opaque nodes instead of tracing into Triton, and nothing in either pass synchronises with the host:
a warmed-up model can be captured in a CUDA graph. Eager calls that need a gradient run the same bodies
through a `torch.autograd.Function` instead (`_EagerFused`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from kronypt.errors import KronyptError
from kronypt.kernels.activation import activation_code
from kronypt.kernels.availability import FUSED_IMPLS, fused_dtype
from kronypt.kernels.dispatch import backward_like, forward_like, fused_backward, fused_forward, saves_p

_forward_op = torch.library.custom_op("kronypt::kron_linear_forward", fused_forward, mutates_args=())


@_forward_op.register_fake
def _forward_fake(x, A, B, scalars, bias, act, save, impl="auto"):
    return forward_like(x, A, B, act, save, impl)


_backward_op = torch.library.custom_op("kronypt::kron_linear_backward", fused_backward, mutates_args=())


@_backward_op.register_fake
def _backward_fake(grad, x, A, B, scalars, saved, bias, act, need_x, need_a, need_b, need_s, need_bias,
                   impl="auto"):
    return backward_like(x, A, B, need_x, need_a, need_b, need_s, need_bias)


def _setup_context(ctx, inputs, output) -> None:
    x, A, B, scalars, bias, act, _, impl = inputs
    # The second output (what the backward keeps) never receives a gradient: without this, autograd fills
    # a zero tensor of its size (T x 768 in bf16 for 81M c_fc) on every backward.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, A, B, scalars, output[1], bias)
    ctx.act, ctx.impl = act, impl
    ctx.dtypes = [t.dtype if t is not None else None for t in (x, A, B, scalars, bias)]


def _backward(ctx, grad_y: Tensor | None, _grad_pre: Tensor | None) -> tuple:
    x, A, B, scalars, saved, bias = ctx.saved_tensors
    needs = ctx.needs_input_grad[:5]
    if grad_y is None:  # y unused: nothing to propagate (the kept tensor is never differentiated through)
        return (None,) * 8
    grads = torch.ops.kronypt.kron_linear_backward(grad_y, x, A, B, scalars, saved, bias, ctx.act, *needs,
                                                   ctx.impl)
    return _input_grads(ctx, grads, needs)


def _input_grads(ctx, grads: list[Tensor], needs: tuple[bool, ...]) -> tuple:
    """The gradients of (x, A, B, scalars, bias, act, save, impl), each in its input's dtype."""
    cast = (g.to(dtype) if need else None for g, dtype, need in zip(grads, ctx.dtypes, needs, strict=True))
    return (*cast, None, None, None)


_forward_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerFused(torch.autograd.Function):
    """The operators' forward and backward bodies called directly, for eager calls that need a gradient:
    the custom operators are what `torch.compile` sees, but each eager call through them also pays the
    dispatcher's round trip into Python (host time per training call on a 2-core x86 CPU, kernel launches
    recorded instead of run: 44 µs through the operators, 22 µs here)."""

    @staticmethod
    def forward(ctx, x, A, B, scalars, bias, act, save, impl):
        y, saved = fused_forward(x, A, B, scalars, bias, act, save, impl)
        _setup_context(ctx, (x, A, B, scalars, bias, act, save, impl), (y, saved))
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable  # the kernels have no derivative of their own
    def backward(ctx, grad_y):
        x, A, B, scalars, saved, bias = ctx.saved_tensors
        needs = ctx.needs_input_grad[:5]
        # traced (fake tensors, e.g. compiled autograd): through the operator, which tracers understand
        body = fused_backward if type(grad_y) is Tensor else torch.ops.kronypt.kron_linear_backward
        grads = body(grad_y, x, A, B, scalars, saved, bias, ctx.act, *needs, ctx.impl)
        return _input_grads(ctx, grads, needs)


def kron_linear_fused(
    x: Tensor,
    A: Tensor,
    B: Tensor,
    scalars: Tensor | None = None,
    bias: Tensor | None = None,
    activation: str | None = None,
    impl: str = "auto",
) -> Tensor:
    """act(x · (Σ_i s_i A_i ⊗ B_i)ᵀ + bias) with the fused Triton kernels (see `fused_available`).

    x (..., n1·n2); A (k, m1, n1); B (k, m2, n2); scalars (k,) or None; bias (m1·m2,) or None;
    activation None or "gelu_new" (GPT-2's tanh GELU, also accepted as "gelu_pytorch_tanh"). x, A and B
    share a dtype (float32 or bfloat16; under autocast they are cast to the autocast dtype); the kernels
    accumulate in float32. Differentiable in x, A, B, scalars and bias. `impl`: "auto" (the vector-B
    kernels for one factor with B one column or row of 1, 2, 3, 4 or 8 entries and more than 16 tokens,
    the general kernels otherwise) or "general" (the general kernels always, for comparisons); see
    `kronypt.kernels.dispatch`.
    """
    act = activation_code(activation)
    if impl not in FUSED_IMPLS:
        raise KronyptError(f"unknown impl {impl!r}; choose one of {', '.join(FUSED_IMPLS)}")
    k, m1, n1 = A.shape
    if B.dim() != 3 or B.shape[0] != k or x.shape[-1] != n1 * B.shape[2]:
        raise KronyptError(f"shapes do not form a Kronecker layer: x {tuple(x.shape)}, A {tuple(A.shape)}, "
                           f"B {tuple(B.shape)}; need A (k, m1, n1), B (k, m2, n2), x (..., n1·n2)")
    dtype = fused_dtype(x, A, B)
    if dtype is None:
        raise KronyptError(f"x, A and B must share a dtype, float32 or bfloat16 (or run under autocast to one); "
                           f"got {x.dtype}, {A.dtype}, {B.dtype}")
    if not (x.dtype == A.dtype == B.dtype == dtype):  # autocast: the kernels take one dtype
        x, A, B = x.to(dtype), A.to(dtype), B.to(dtype)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    scalars = scalars.contiguous() if scalars is not None else None
    bias = bias.contiguous() if bias is not None else None
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or A.requires_grad or B.requires_grad
                                              or (scalars is not None and scalars.requires_grad)
                                              or (bias is not None and bias.requires_grad))
    save = needs_grad and (act != 0 or saves_p(x2, A, B, impl))
    if torch.compiler.is_compiling() or type(x2) is not Tensor:  # traced (Dynamo, make_fx, fake tensors):
        y, _ = torch.ops.kronypt.kron_linear_forward(x2, A, B, scalars, bias, act, save, impl)  # the operator
    elif needs_grad:  # eager: the same bodies without the dispatcher's round trip
        y = _EagerFused.apply(x2, A, B, scalars, bias, act, save, impl)
    else:
        y, _ = fused_forward(x2, A, B, scalars, bias, act, False, impl)
    return y.view(*lead, y.shape[-1])
