"""Fused GPU kernels (Triton) for the Kronecker layer y = act(x · (Σ_i s_i A_i ⊗ B_i)ᵀ + b).

`fused_available(x)` says whether they can run on x's device; `kron_linear_fused(...)` runs them (forward
and backward); `fused_wins(...)` says where they were measured faster than the materialised and factored
paths (`roofline.MEASURED_WINS`); `predict(...)` is the roofline estimate. Importing this package does
not import Triton: the kernels load on the first fused call.
"""

from __future__ import annotations

import torch

from kronypt.kernels.availability import FUSED_ACTIVATIONS, FUSED_IMPLS, fused_available, triton_available
from kronypt.kernels.roofline import fused_wins, predict


def kron_linear_fused(
    x: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    scalars: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """act(x · (Σ_i s_i A_i ⊗ B_i)ᵀ + bias) on the fused kernels; see `kronypt.kernels.ops`."""
    from kronypt.kernels.ops import kron_linear_fused as fused

    return fused(x, A, B, scalars, bias, activation, impl)


__all__ = ["FUSED_ACTIVATIONS", "FUSED_IMPLS", "fused_available", "fused_wins", "kron_linear_fused", "predict",
           "triton_available"]
