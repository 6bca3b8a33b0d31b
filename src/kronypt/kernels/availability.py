"""Whether the fused Triton kernels can run on a tensor, decided without importing Triton's kernels.

On a GPU the kernels need CUDA with compute capability ≥ 8.0 (bf16 tensor cores) and Triton. On a CPU
they run only under Triton's interpreter (`TRITON_INTERPRET=1`, set before `kronypt.kernels` is first
imported), which the tests use; otherwise the CPU keeps the plain PyTorch paths.
"""

from __future__ import annotations

import importlib.util
import os

import torch

# triton.jit reads this variable when a kernel is decorated, so it is read once here too: a value set
# after the kernels were imported would not change what they are.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Activations the kernels can fuse into their epilogue: GPT-2's tanh-approximated GELU under both names.
FUSED_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")

# Implementations `kron_linear_fused(..., impl=...)` accepts (`kronypt.kernels.ops` says what each runs).
FUSED_IMPLS = ("auto", "triton", "v2", "v3")


def v2_supports(m2: int, n2: int) -> bool:
    """Whether version 2 (`kronypt.kernels.gemm_path`) handles a B factor of shape (m2, n2): one column or
    one row, at most 16 long. Here, without Triton, so that the roofline model can ask too."""
    return (n2 == 1 and m2 <= 16) or (m2 == 1 and n2 <= 16)


def v3_supports(k: int, m2: int, n2: int) -> bool:
    """Whether version 3 (`kronypt.kernels.v3`) handles k factors with B (m2, n2): k = 1 and one column of
    m2 ∈ {1, 2, 3, 4, 8} (the epilogues that build without spills on sm_90; m2 = 5-7 spill kilobytes) or
    one row (n2 ≤ 16). Anything else runs version 2 or 1."""
    return k == 1 and ((n2 == 1 and m2 in (1, 2, 3, 4, 8)) or (m2 == 1 and n2 <= 16))


# Looked up once, at import: a cached function here would be traced by torch.compile (Dynamo ignores
# lru_cache wrappers) each time a compiled model asks which path to take.
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    """True when the `triton` package can be imported."""
    return _TRITON_INSTALLED


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
