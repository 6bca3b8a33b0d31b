"""Pure math of Kronecker factorisation: shapes, parameter/FLOP counts, decompositions. No nn.Module here."""

from kronypt.math.decompose import Decomposition, kron_reconstruct, prune_init, random_init, van_loan
from kronypt.math.shapes import KronShape, kron_factor_shapes, kron_shape

__all__ = [
    "Decomposition",
    "KronShape",
    "kron_factor_shapes",
    "kron_reconstruct",
    "kron_shape",
    "prune_init",
    "random_init",
    "van_loan",
]
