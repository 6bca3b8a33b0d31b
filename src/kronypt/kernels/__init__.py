"""Fused GPU kernels (Triton) for the Kronecker layer y = act(x · (Σ_i s_i A_i ⊗ B_i)ᵀ + b).

`fused_available(x)` says whether they can run on x's device, `fused_dtype(x, A, B)` in which dtype;
`kron_linear_fused(...)` runs them (forward and backward); `fused_wins(...)` says where they were measured
faster than the materialised and factored paths (`measured_wins.MEASURED_WINS`). `KroneckerLinear` is
what calls them (`path="fused"`, or "auto" where they win). Importing this package does not build or load
any kernel: they load on the first fused call.

Which kernel computes what: `dispatch` (per pass), `general_forward` + `large_b_forward` + `factor_grads`
(any shape), `vector_b_forward` + `vector_b_backward` (one factor, B one column or row).
"""

from __future__ import annotations

import torch

from kronypt.errors import KronyptError
from kronypt.kernels.availability import (
    FUSED_ACTIVATIONS,
    FUSED_DTYPES,
    FUSED_IMPLS,
    fused_available,
    fused_dtype,
    triton_available,
)
from kronypt.kernels.measured_wins import fused_wins


def kron_linear_fused(
    x: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    scalars: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """act(x · (Σ_i s_i A_i ⊗ B_i)ᵀ + bias) on the fused kernels; see `kronypt.kernels.ops`.

    Refused in one line where they cannot run: no GPU (or interpreter) for x, no importable triton, or
    operands on another device than x."""
    if not fused_available(x):
        raise KronyptError(f"the fused path needs a CUDA GPU (compute capability >= 8.0) and triton; x is on "
                           f"{x.device}" + ("" if triton_available() else ", and triton does not import"))
    strays = [name for name, t in (("A", A), ("B", B), ("scalars", scalars), ("bias", bias))
              if t is not None and t.device != x.device]
    if strays:
        raise KronyptError(f"{', '.join(strays)} not on x's device ({x.device}) for the fused path")
    from kronypt.kernels.ops import kron_linear_fused as fused

    return fused(x, A, B, scalars, bias, activation, impl)


__all__ = ["FUSED_ACTIVATIONS", "FUSED_DTYPES", "FUSED_IMPLS", "fused_available", "fused_dtype", "fused_wins",
           "kron_linear_fused", "triton_available"]
