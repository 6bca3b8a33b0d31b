"""The Kronecker linear layer and its forward paths."""

from kronypt.nn.kronecker_linear import KroneckerLinear

__all__ = ["KroneckerLinear"]
