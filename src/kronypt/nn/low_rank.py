"""LowRankLinear: a drop-in for nn.Linear whose weight is the product U·V of two thin factors.

The baseline Kronecker factors are measured against: W (out, in) ≈ U (out, r) · V (r, in), r·(out + in)
parameters, two GEMMs per call (x·Vᵀ, then ·Uᵀ). Initialised from a dense weight by truncated SVD (the best
rank-r approximation in Frobenius norm), or by a whitened SVD that minimises the error on calibration inputs
instead (`kronypt.math.whiten`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kronypt.errors import KronyptError
from kronypt.math.shapes import integer_count


class LowRankLinear(nn.Module):
    """y = x · (U·V)ᵀ + b, in nn.Linear's (out, in) orientation: `U` (out, rank), `V` (rank, in), `bias` (out,)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        rank = integer_count(rank, "the rank")
        if not 1 <= rank <= min(in_features, out_features):
            raise KronyptError(f"the rank of a ({out_features}, {in_features}) matrix must be between 1 and "
                               f"{min(in_features, out_features)}, got {rank}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        kw = {"device": device, "dtype": dtype}
        self.U = nn.Parameter(torch.empty(out_features, rank, **kw))
        self.V = nn.Parameter(torch.empty(rank, in_features, **kw))
        self.bias = nn.Parameter(torch.zeros(out_features, **kw)) if bias else None
        self.reset_parameters()

    @staticmethod
    def params(out_features: int, in_features: int, rank: int) -> int:
        """Parameters of the two factors (the bias, as dense layers have it, is not counted)."""
        return rank * (out_features + in_features)

    def reset_parameters(self, initializer_range: float = 0.02) -> None:
        """Random factors whose product's entries have standard deviation `initializer_range`."""
        std = math.sqrt(initializer_range / math.sqrt(self.rank))
        with torch.no_grad():
            nn.init.normal_(self.U, std=std)
            nn.init.normal_(self.V, std=std)
            if self.bias is not None:
                self.bias.zero_()

    @classmethod
    def from_factors(cls, U: torch.Tensor, V: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype,
                     device: torch.device | str | None = None) -> LowRankLinear:
        """A layer holding given factors, in `dtype` on `device` (those of the weight it replaces)."""
        layer = cls(V.shape[1], U.shape[0], U.shape[1], bias is not None, device=device, dtype=dtype)
        with torch.no_grad():
            layer.U.copy_(U)
            layer.V.copy_(V)
            if bias is not None:
                layer.bias.copy_(bias)
        return layer

    def dense_weight(self) -> torch.Tensor:
        """The (out, in) weight this layer represents, computed in float64 and rounded once."""
        return (self.U.to(torch.float64) @ self.V.to(torch.float64)).to(self.U.dtype)

    def forward(self, x: torch.Tensor, activation: str | None = None) -> torch.Tensor:
        if activation is not None:
            raise KronyptError("LowRankLinear applies no activation; apply it after the layer")
        return F.linear(F.linear(x, self.V), self.U, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"bias={self.bias is not None}")


def truncated_svd(W: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, V) with U·V the best rank-`rank` approximation of W in Frobenius norm, in float64; the singular
    values split evenly between the factors."""
    U, S, Vh = torch.linalg.svd(W.detach().to(torch.float64), full_matrices=False)
    root = S[:rank].sqrt()
    return U[:, :rank] * root, root[:, None] * Vh[:rank]
