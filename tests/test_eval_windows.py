"""Window planners: every protocol's coverage rules, checked exhaustively on small sizes (no model)."""

from __future__ import annotations

import doctest

import pytest

import kronypt.eval.windows as windows
from kronypt.errors import KronyptError
from kronypt.eval.windows import disjoint_windows, rolling_windows, strided_windows

SIZES = [(n, context) for context in (2, 3, 4, 7, 16) for n in range(1, 3 * context + 3)]


def _scored(spans):
    return [t for s in spans for t in range(s.end - s.n_scored, s.end)]


def test_doc_examples():
    assert doctest.testmod(windows).failed == 0


@pytest.mark.parametrize(("n", "context"), SIZES)
def test_disjoint_scores_all_but_the_first_token_of_each_block(n, context):
    spans = disjoint_windows(n, context)
    starts = set(range(0, n, context))
    assert _scored(spans) == [t for t in range(n) if t not in starts]
    for s in spans:
        assert s.begin in starts and s.end - s.begin <= context and s.n_scored == s.end - s.begin - 1


@pytest.mark.parametrize(("n", "context"), SIZES)
@pytest.mark.parametrize("stride_frac", [0.25, 0.5, 1.0])
def test_strided_scores_each_token_once_with_the_guides_context(n, context, stride_frac):
    stride = max(1, int(context * stride_frac))
    spans = strided_windows(n, context, stride)
    # stride = context is the krony-pt layout: a window's first token has no context and is not scored
    assert _scored(spans) == [t for t in range(1, n) if stride < context or t % context]
    for k, s in enumerate(spans):
        assert s.begin == k * stride and s.end == min(s.begin + context, n)


@pytest.mark.parametrize(("n", "context"), SIZES)
def test_rolling_scores_every_document_token_with_full_context(n, context):
    spans = rolling_windows(n, context)
    assert _scored(spans) == list(range(1, n))
    for k, s in enumerate(spans):
        assert s.begin >= 0 and s.input_len <= context
        if k > 0:  # after the first window, every input is a full window ending just before the last target
            assert s.input_len == context
    # lm-eval predicts the first `context` tokens in one window, then chunks of `context`
    assert [s.n_scored for s in spans[:-1]] == [context] * (len(spans) - 1)


def test_bad_strides_and_contexts_are_refused():
    with pytest.raises(KronyptError, match="stride"):
        strided_windows(100, 16, 17)
    with pytest.raises(KronyptError, match="stride"):
        strided_windows(100, 16, 0)
    with pytest.raises(KronyptError, match="context"):
        disjoint_windows(100, 1)
