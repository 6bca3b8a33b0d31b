"""Kronecker factor shapes of an (out, in) matrix and what each costs.

W ≈ Σ_i s_i · (A_i ⊗ B_i) with A_i: (m1, n1), B_i: (m2, n2), out = m1·m2, in = n1·n2.

>>> s = kron_shape(3072, 768, (768, 768))
>>> s.b_shape, s.params(k=1)
((4, 1), 589828)
>>> s.macs_per_token(k=1)
(592896, 2362368)
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

from kronypt.errors import KronyptError


def divisors(n: int) -> list[int]:
    """All positive divisors of n, ascending."""
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


@dataclass(frozen=True)
class KronShape:
    """One factorisation of an (out, in) matrix: A is (m1, n1), B is (m2, n2)."""

    m1: int
    n1: int
    m2: int
    n2: int

    @property
    def out_features(self) -> int:
        return self.m1 * self.m2

    @property
    def in_features(self) -> int:
        return self.n1 * self.n2

    @property
    def a_shape(self) -> tuple[int, int]:
        return (self.m1, self.n1)

    @property
    def b_shape(self) -> tuple[int, int]:
        return (self.m2, self.n2)

    def transposed(self) -> KronShape:
        """The shape of the factors of Wᵀ: (A ⊗ B)ᵀ = Aᵀ ⊗ Bᵀ."""
        return KronShape(self.n1, self.m1, self.n2, self.m2)

    def params(self, k: int = 1, scalars: bool = False) -> int:
        """Parameters of k factors (plus k scalars when learnable)."""
        return k * (self.m1 * self.n1 + self.m2 * self.n2) + (k if scalars else 0)

    def terms(self) -> int:
        """Independent Kronecker terms of this shape: k beyond it adds nothing (min(m1·n1, m2·n2))."""
        return min(self.m1 * self.n1, self.m2 * self.n2)

    def max_rank(self, k: int = 1) -> int:
        """Upper bound on rank(Σ_{i≤k} A_i ⊗ B_i)."""
        one = min(self.m1, self.n1) * min(self.m2, self.n2)
        return min(k * one, self.out_features, self.in_features)

    def macs_per_token(self, k: int = 1) -> tuple[int, int]:
        """Multiply-adds per token of the factored product, (A first, B first)."""
        a_first = self.m1 * self.n1 * self.n2 + self.m1 * self.n2 * self.m2
        b_first = self.n1 * self.n2 * self.m2 + self.m1 * self.n1 * self.m2
        return k * a_first, k * b_first

    def dense_macs_per_token(self) -> int:
        return self.out_features * self.in_features

    def compresses(self, k: int = 1) -> bool:
        """False when k terms can represent any matrix of this size, i.e. the scheme saves nothing."""
        full_rank = k >= self.m2 * self.n2 or k >= self.m1 * self.n1
        return not full_rank and self.params(k) < self.out_features * self.in_features


def kron_shape(out_features: int, in_features: int, a_shape: tuple[int, int]) -> KronShape:
    """The factorisation of an (out, in) matrix with A of shape `a_shape`; refuses shapes that do not divide."""
    m1, n1 = shape_pair(a_shape)
    if m1 <= 0 or n1 <= 0:
        raise KronyptError(f"A shape must be positive, got {m1}x{n1}")
    if out_features % m1 or in_features % n1:
        raise KronyptError(
            f"A shape {m1}x{n1} does not divide the ({out_features}, {in_features}) matrix: m1 must divide "
            f"{out_features} (divisors: {_short(divisors(out_features))}) and n1 must divide {in_features} "
            f"(divisors: {_short(divisors(in_features))})"
        )
    return KronShape(m1, n1, out_features // m1, in_features // n1)


def integer_count(value: object, what: str) -> int:
    """`value` as an int when it is an integer (Python or NumPy, not a bool or a float), else a one-line error."""
    if isinstance(value, bool):
        raise KronyptError(f"{what} must be an integer, got {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise KronyptError(f"{what} must be an integer, got {value!r}") from None


def shape_pair(a_shape: object) -> tuple[int, int]:
    """(m1, n1) from a pair of integers (Python or NumPy), refusing anything else in one line."""
    try:
        m1, n1 = (operator.index(v) for v in a_shape)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise KronyptError(f"A shape must be a pair of integers (m1, n1), got {a_shape!r}") from None
    return m1, n1


def kron_factor_shapes(out_features: int, in_features: int) -> list[KronShape]:
    """Every factorisation of an (out, in) matrix, ordered by A shape."""
    return [
        KronShape(m1, n1, out_features // m1, in_features // n1)
        for m1 in divisors(out_features)
        for n1 in divisors(in_features)
    ]


def parse_shape(text: str) -> tuple[int, int]:
    """Parse 'MxN' (or 'M,N') into a pair of ints, with a clear error."""
    parts = text.lower().replace(",", "x").replace("(", "").replace(")", "").split("x")
    try:
        m, n = (int(p) for p in parts)
    except ValueError:
        raise KronyptError(f"cannot read shape {text!r}: expected MxN, e.g. 768x768") from None
    return m, n


def _short(values: list[int]) -> str:
    return ", ".join(map(str, values))
