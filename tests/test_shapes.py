import pytest
from hypothesis import given
from hypothesis import strategies as st

from kronypt.errors import KronyptError
from kronypt.math.shapes import divisors, kron_factor_shapes, kron_shape, parse_shape


def brute_divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


@given(st.integers(1, 5000))
def test_divisors_match_brute_force(n):
    assert divisors(n) == brute_divisors(n)


def test_enumeration_covers_every_divisor_pair():
    shapes = kron_factor_shapes(3072, 768)
    assert len(shapes) == len(divisors(3072)) * len(divisors(768)) == 22 * 18
    for s in shapes:
        assert s.out_features == 3072 and s.in_features == 768


def test_counts_of_the_81M_shape():
    s = kron_shape(3072, 768, (768, 768))
    assert s.b_shape == (4, 1)
    assert s.params(1) == 768 * 768 + 4 == 589_828
    assert s.params(4, scalars=True) == 4 * 589_828 + 4
    assert s.max_rank(1) == 768 * 1
    a_first, b_first = s.macs_per_token(1)
    assert a_first == 768 * 768 * 1 + 768 * 1 * 4
    assert b_first == 768 * 1 * 4 + 768 * 768 * 4
    assert s.transposed().a_shape == (768, 768) and s.transposed().b_shape == (1, 4)


@given(st.sampled_from(divisors(48)), st.sampled_from(divisors(36)), st.integers(1, 6))
def test_macs_equal_an_explicit_count(m1, n1, k):
    s = kron_shape(48, 36, (m1, n1))
    m2, n2 = s.b_shape
    # A first: Z = A·X (m1×n1 by n1×n2), then Z·Bᵀ (m1×n2 by n2×m2); B first: X·Bᵀ then A·(X·Bᵀ).
    assert s.macs_per_token(k) == (k * (m1 * n1 * n2 + m1 * n2 * m2), k * (n1 * n2 * m2 + m1 * n1 * m2))


def test_full_rank_schemes_are_flagged():
    s = kron_shape(3072, 768, (768, 768))  # B is 4x1: four terms represent anything
    assert s.compresses(1) and s.compresses(3)
    assert not s.compresses(4)
    assert not kron_shape(3072, 768, (3072, 768)).compresses(1)  # B is 1x1


def test_shapes_that_do_not_divide_are_refused_with_the_divisors():
    with pytest.raises(KronyptError, match="does not divide.*divisors: 1, 2, 3, 4"):
        kron_shape(3072, 768, (100, 768))
    with pytest.raises(KronyptError, match="positive"):
        kron_shape(3072, 768, (0, 768))


def test_parse_shape():
    assert parse_shape("768x768") == (768, 768)
    assert parse_shape("(64, 32)") == (64, 32)
    with pytest.raises(KronyptError, match="MxN"):
        parse_shape("64")
