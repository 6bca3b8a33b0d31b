"""The fused kernels as PyTorch operators with autograd: `kron_linear_fused`.

The forward and the backward are registered as custom operators (`torch.ops.kronypt.*`) with shape-only
fake implementations, so `torch.compile` treats them as opaque nodes instead of tracing into Triton, and
nothing in either pass synchronises with the host: a warmed-up model can be captured in a CUDA graph.

Backward of y = act(x·Wᵀ + b), W = Σ s_i A_i ⊗ B_i, with G the gradient of the pre-activation (version
1; versions 2/3 run `gemm_path.gemm_backward`: cuBLAS GEMMs plus the `reduce` pass): grad_x is itself
a Kronecker product, G·(Σ s_i A_iᵀ ⊗ B_iᵀ), so the forward kernel computes it (and the bias gradient,
Σ_t G, in the same pass); dA and M (hence dB = s·M and ds = ⟨B, M⟩) come from the
token-reduction kernels of `kronypt.kernels.wgrad`. The pre-activation is saved only when an activation
is fused and a gradient is needed (as unfused PyTorch saves it for its GELU). Versions 2 and 3 with a B of
one column save P = x·A_catᵀ instead (`saves_p`): m2× smaller than the pre-activation, and their
backward needs P anyway (it used to recompute it with a GEMM).
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import Tensor

from kronypt.errors import KronyptError
from kronypt.kernels.activation import activation_code, gelu_backward
from kronypt.kernels.availability import FUSED_IMPLS, fused_dtype, v2_supports, v3_supports
from kronypt.kernels.forward import kron_forward
from kronypt.kernels.gemm_path import gemm_backward, gemm_forward
from kronypt.kernels.v3 import v3_forward
from kronypt.kernels.wgrad import kron_grad_a, kron_grad_m

# "auto": version 3 (`kronypt.kernels.v3`: one kernel for the forward, version 2's backward with a one-row
# B's grad_x on version 3 too) where `v3.supports` the shape, else version 2 (`kronypt.kernels.gemm_path`:
# cuBLAS GEMMs + two memory-bound Triton passes) where that applies; decode-sized calls (at most
# DECODE_TOKENS tokens) run version 1's single launch, the faster one inside a CUDA graph (run 1: 3.9 µs
# against 5.2 µs dense). H100 run 5 (run 4's block sizes): version 3 beat version 2 on every 81M row
# (c_fc forward 1.81x dense against 1.47x at 65536 tokens, c_proj forward+backward 1.14x against 0.98x)
# and in the whole model (training 1.28x dense against 1.11x, graphed prefill 2.56x against 2.26x); run
# 4, with the old block sizes, had version 2 ahead on c_proj's forward. "v2" and "v3" force those
# versions where they apply (for comparison); "triton": version 1 always. The names are
# `availability.FUSED_IMPLS`.
DECODE_TOKENS = 16


def _use_gemm_path(x: Tensor, B: Tensor, impl: str) -> bool:
    return impl in ("auto", "v2", "v3") and x.shape[0] > DECODE_TOKENS and v2_supports(B.shape[1], B.shape[2])


def _use_v3(x: Tensor, A: Tensor, B: Tensor, impl: str) -> bool:
    return (impl in ("auto", "v3") and _use_gemm_path(x, B, impl)
            and v3_supports(A.shape[0], B.shape[1], B.shape[2]))


def _v3_grad_x(x: Tensor, A: Tensor, B: Tensor, impl: str) -> bool:
    """Whether the backward computes grad_x with version 3's kernel: B with one row, whose transpose (one
    column) version 3 supports."""
    k, (m2, n2) = A.shape[0], B.shape[1:]
    return _use_v3(x, A, B, impl) and m2 == 1 and n2 > 1 and v3_supports(k, n2, m2)


def saves_p(x: Tensor, B: Tensor, impl: str) -> bool:
    """Whether a call on the 2-D x keeps P = x·A_catᵀ for its backward (versions 2/3, B with one column)."""
    return _use_gemm_path(x, B, impl) and B.shape[2] == 1


def fused_forward(x: Tensor, A: Tensor, B: Tensor, scalars: Tensor | None, bias: Tensor | None, act: int,
                  save: bool, impl: str = "auto") -> tuple[Tensor, Tensor]:
    """(y, saved) for a 2-D x: the body of the forward operator (plain, so tools can call it on meta
    tensors). With `save` (a backward will follow), `saved` is P where `saves_p`, else the pre-activation
    when an activation is fused; otherwise it is empty."""
    if x.shape[0] == 0:  # nothing to launch
        return _forward_fake(x, A, B, scalars, bias, act, save, impl)
    with _on_device(x):
        if _use_v3(x, A, B, impl):
            return v3_forward(x, A, B, scalars, bias, act, save)
        if _use_gemm_path(x, B, impl):
            return gemm_forward(x, A, B, scalars, bias, act, save)
        return kron_forward(x, A, B, scalars, bias, act, save and act != 0)


def _on_device(x: Tensor) -> contextlib.AbstractContextManager:
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


_forward_op = torch.library.custom_op("kronypt::kron_linear_forward", fused_forward, mutates_args=())


@_forward_op.register_fake
def _forward_fake(x, A, B, scalars, bias, act, save, impl="auto"):
    y = x.new_empty(x.shape[0], A.shape[1] * B.shape[1])
    if save and saves_p(x, B, impl):
        return y, x.new_empty(x.shape[0], A.shape[0] * A.shape[1])
    return y, (torch.empty_like(y) if save and act != 0 else y.new_empty(0))


def fused_backward(grad: Tensor, x: Tensor, A: Tensor, B: Tensor, scalars: Tensor | None, saved: Tensor,
                   bias: Tensor | None, act: int, need_x: bool, need_a: bool, need_b: bool, need_s: bool,
                   need_bias: bool, impl: str = "auto") -> list[Tensor]:
    """[grad_x, dA, dB, ds, dbias]; an unneeded one is an empty tensor. Factor gradients are float32.
    `saved` is the forward's second output; `bias` is needed only to rebuild a pre-activation from P."""
    outputs = _backward_fake(grad, x, A, B, scalars, saved, bias, act, need_x, need_a, need_b, need_s,
                             need_bias)
    if x.shape[0] == 0:
        return [t.zero_() for t in outputs]
    _alert_not_deterministic()
    with _on_device(x):
        return _backward_body(outputs, grad, x, A, B, scalars, saved, bias, act, need_x, need_a, need_b, need_s,
                              need_bias, impl)


def _backward_body(outputs: list[Tensor], grad: Tensor, x: Tensor, A: Tensor, B: Tensor, scalars: Tensor | None,
                   saved: Tensor, bias: Tensor | None, act: int, need_x: bool, need_a: bool, need_b: bool,
                   need_s: bool, need_bias: bool, impl: str) -> list[Tensor]:
    m2, n2 = B.shape[1:]
    g = grad.contiguous()
    if _use_gemm_path(x, B, impl):
        dx, da, M, dbias = gemm_backward(g, x, A, B, scalars, saved, act, bias, need_x, need_a, need_bias,
                                         use_v3=_v3_grad_x(x, A, B, impl))
        outputs[0] = dx if need_x else outputs[0]
        outputs[1] = da if need_a else outputs[1]
        outputs[4] = dbias if need_bias else outputs[4]
        _factor_grads(outputs, M, B, scalars, need_b, need_s)
        return outputs
    if act:
        g = gelu_backward(g, saved)
    if need_x:
        colsum = outputs[4].zero_() if need_bias else None
        outputs[0] = kron_forward(g, A.transpose(1, 2), B.transpose(1, 2), scalars, None, colsum=colsum)[0]
    elif need_bias:
        outputs[4] = g.sum(0, dtype=torch.float32)
    if need_a:
        outputs[1] = kron_grad_a(x, g, A, B, scalars)
    if need_b or need_s:
        _factor_grads(outputs, kron_grad_m(x, g, A, m2, n2), B, scalars, need_b, need_s)
    return outputs


def _factor_grads(outputs: list[Tensor], M: Tensor, B: Tensor, scalars: Tensor | None, need_b: bool,
                  need_s: bool) -> None:
    """dB = s·M and ds = ⟨B, M⟩ into `outputs` (M float32 (k, m2, n2))."""
    if need_b:
        outputs[2] = M * scalars.float().view(-1, 1, 1) if scalars is not None else M
    if need_s:
        outputs[3] = (M * B.float()).sum((1, 2))


_backward_op = torch.library.custom_op("kronypt::kron_linear_backward", fused_backward, mutates_args=())


@_backward_op.register_fake
def _backward_fake(grad, x, A, B, scalars, saved, bias, act, need_x, need_a, need_b, need_s, need_bias,
                   impl="auto"):
    k, m1, n1 = A.shape
    _, m2, n2 = B.shape

    def f32(needed: bool, *shape: int) -> Tensor:
        return x.new_empty(shape if needed else (0,), dtype=torch.float32)

    return [x.new_empty(x.shape if need_x else (0,)), f32(need_a, k, m1, n1), f32(need_b, k, m2, n2),
            f32(need_s, k), f32(need_bias, m1 * m2)]


def _setup_context(ctx, inputs, output) -> None:
    x, A, B, scalars, bias, act, _, impl = inputs
    # The second output (what the backward keeps) never receives a gradient: without this, autograd fills
    # a zero tensor of its size (T x 768 in bf16 for 81M c_fc, run 4's profile) on every backward.
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
    dispatcher's round trip into Python (host time per training call on this project's 2-core CPU, kernel
    launches recorded instead of run: 44 µs through the operators, 22 µs here; H100 run 4 measured eager
    fused calls at ~0.2 ms of host time)."""

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
    accumulate in float32. Differentiable in x, A, B, scalars and bias. `impl`: "auto" (more than 16
    tokens: the one-kernel forward of `kronypt.kernels.v3` for k = 1 and a B with one row or column,
    else version 2 of `kronypt.kernels.gemm_path` for a B with one row or column; version 1 otherwise),
    "v2" or "v3" (that version where it applies, else what "auto" runs; for comparisons) or "triton"
    (the version-1 kernels always).
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
    save = needs_grad and (act != 0 or saves_p(x2, B, impl))
    if torch.compiler.is_compiling() or type(x2) is not Tensor:  # traced (Dynamo, make_fx, fake tensors):
        y, _ = torch.ops.kronypt.kron_linear_forward(x2, A, B, scalars, bias, act, save, impl)  # the operator
    elif needs_grad:  # eager: the same bodies without the dispatcher's round trip
        y = _EagerFused.apply(x2, A, B, scalars, bias, act, save, impl)
    else:
        y, _ = fused_forward(x2, A, B, scalars, bias, act, False, impl)
    return y.view(*lead, y.shape[-1])
