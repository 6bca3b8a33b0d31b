"""Whether the fused kernels can run on a tensor, and which kernel takes which shape, without importing Triton.

On a GPU the kernels need CUDA with compute capability ≥ 8.0 (bf16 tensor cores) and Triton. On a CPU
they run only under Triton's interpreter (`TRITON_INTERPRET=1`, set before `kronypt.kernels` is first
imported), which the tests use; otherwise the CPU keeps the plain PyTorch paths.
"""

from __future__ import annotations

import os

import torch

# triton.jit reads this variable when a kernel is decorated, so it is read once here too: a value set
# after the kernels were imported would not change what they are.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Activations the kernels can fuse into their epilogue: GPT-2's tanh-approximated GELU under both names.
FUSED_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")

# What `kron_linear_fused(..., impl=...)` accepts: "auto" runs the vector-B kernels where
# `vector_b_supports` the call, the general kernels elsewhere; "general" runs the general kernels always.
FUSED_IMPLS = ("auto", "general")

# From this size of both m2 and n2 on, the general forward applies B on the tensor cores too
# (`kronypt.kernels.large_b_forward`) instead of in registers.
LARGE_B_MIN = 9


def uses_large_b_kernel(m2: int, n2: int) -> bool:
    """Whether the general forward of a B factor of shape (m2, n2) runs the large-B kernel."""
    return min(m2, n2) >= LARGE_B_MIN


def vector_b_supports(k: int, m2: int, n2: int) -> bool:
    """Whether the vector-B kernels (`vector_b_forward`, `vector_b_backward`) take k factors with B (m2, n2):
    one factor and B one column or one row of 1, 2, 3, 4 or 8 entries, so that both B and its transpose
    (grad_x runs the forward kernel on Aᵀ, Bᵀ) have an epilogue that builds without spills on sm_90."""
    return k == 1 and min(m2, n2) == 1 and max(m2, n2) in (1, 2, 3, 4, 8)


def _import_triton() -> bool:
    """Whether `import triton` succeeds: an installed but broken package (a wheel for another CUDA or
    Python, a half-finished install) counts as absent, so the automatic path never picks kernels that
    cannot load. torch's compiler, which kronypt imports anyway, imports triton too where it can, so
    trying costs nothing extra."""
    try:
        import triton  # noqa: F401
    except Exception:  # ImportError, or whatever a broken package raises while importing
        return False
    return True


# Decided once, at import: a cached function here would be traced by torch.compile (Dynamo ignores
# lru_cache wrappers) each time a compiled model asks which path to take.
_TRITON_INSTALLED = _import_triton()

# The dtypes the kernels compute in (accumulating in float32 either way).
FUSED_DTYPES = (torch.float32, torch.bfloat16)


def triton_available() -> bool:
    """True when the `triton` package imports."""
    return _TRITON_INSTALLED


def fused_dtype(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.dtype | None:
    """The dtype `kron_linear_fused` computes a call in, or None where it cannot run it.

    Under autocast that is the autocast dtype (a float64 x is left alone, as autocast leaves it);
    otherwise x, A and B must share a dtype. Only `FUSED_DTYPES` qualify: float16 and float64 run the
    PyTorch paths."""
    if torch.is_autocast_enabled(x.device.type) and x.dtype != torch.float64:
        dtype = torch.get_autocast_dtype(x.device.type)
    elif x.dtype == A.dtype == B.dtype:
        dtype = x.dtype
    else:
        return None
    return dtype if dtype in FUSED_DTYPES else None


_CAPABLE: dict[int, bool] = {}


@torch.compiler.assume_constant_result
def _cuda_capable(index: int) -> bool:
    """Compute capability ≥ 8.0, asked once per device (eager calls come once per layer call)."""
    if index not in _CAPABLE:
        _CAPABLE[index] = torch.cuda.get_device_capability(index) >= (8, 0)
    return _CAPABLE[index]


def fused_available(x: torch.Tensor) -> bool:
    """True when `kron_linear_fused` can run on tensors on `x`'s device."""
    if not triton_available():
        return False
    if INTERPRET:
        return x.device.type == "cpu"
    return x.is_cuda and _cuda_capable(x.device.index if x.device.index is not None else 0)
