"""Where each protocol puts its windows over a token sequence: pure index arithmetic, no model.

Every protocol reduces to a list of `Span`s over a token sequence `ids`: the model reads
`ids[begin:end-1]` and the last `n_scored` of its next-token predictions are scored against
`ids[end-n_scored:end]`. (The token at `end-1` is only ever a target, so it is never fed: feeding it, as the
Hugging Face guide does, changes no scored logit of a causal model.) The three planners differ only in
where windows start and which predictions count.

>>> disjoint_windows(10, 4)
[Span(begin=0, end=4, n_scored=3), Span(begin=4, end=8, n_scored=3), Span(begin=8, end=10, n_scored=1)]
>>> strided_windows(10, 4, 2)
[Span(begin=0, end=4, n_scored=3), Span(begin=2, end=6, n_scored=2), Span(begin=4, end=8, n_scored=2), \
Span(begin=6, end=10, n_scored=2)]
>>> rolling_windows(10, 4)
[Span(begin=0, end=5, n_scored=4), Span(begin=4, end=9, n_scored=4), Span(begin=5, end=10, n_scored=1)]
"""

from __future__ import annotations

from typing import NamedTuple

from kronypt.errors import KronyptError


class Span(NamedTuple):
    """Model input `ids[begin:end-1]`; its last `n_scored` predictions are scored."""

    begin: int
    end: int
    n_scored: int

    @property
    def input_len(self) -> int:
        return self.end - 1 - self.begin


def disjoint_windows(n_tokens: int, context: int) -> list[Span]:
    """The `krony-pt` windows: non-overlapping blocks of `context` tokens, the last one possibly shorter.

    The first token of every block is not predicted (it has no context inside its block). A last block of
    a single token has nothing to score and is left out (the reference loop would average in a NaN).
    """
    _check_context(context)
    spans = []
    for begin in range(0, n_tokens, context):
        end = min(begin + context, n_tokens)
        if end - begin >= 2:
            spans.append(Span(begin, end, end - begin - 1))
    return spans


def strided_windows(n_tokens: int, context: int, stride: int) -> list[Span]:
    """The Hugging Face perplexity-guide windows: windows of `context` tokens starting every `stride` tokens.

    Each window scores only the tokens past the previous window's end (so every token from the second on
    is scored exactly once, with at least `context - stride` tokens of context after the first window).
    """
    _check_context(context)
    if not 1 <= stride <= context:
        raise KronyptError(f"stride {stride} must be between 1 and the context length {context}")
    spans = []
    prev_end = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + context, n_tokens)
        first_scored = max(prev_end, begin + 1)
        if end > first_scored:
            spans.append(Span(begin, end, end - first_scored))
        prev_end = end
        if end == n_tokens:
            break
    return spans


def rolling_windows(n_tokens: int, context: int) -> list[Span]:
    """lm-evaluation-harness rolling windows over `ids` = [prefix token] + document tokens.

    Every document token (positions 1..n_tokens-1) is scored exactly once: the first window reads up to
    `context` tokens from the prefix on; each later window scores the next `context` tokens (fewer at the
    end) and reads the `context` tokens just before each of them, i.e. the same windows as lm-eval's
    `get_rolling_token_windows(context_len=1)` followed by `make_disjoint_window`.
    """
    _check_context(context)
    n_doc = n_tokens - 1
    if n_doc < 1:
        return []
    first = min(context, n_doc)
    spans = [Span(0, first + 1, first)]
    predicted = first
    while predicted < n_doc:
        n_scored = min(n_doc - predicted, context)
        end = predicted + n_scored + 1
        spans.append(Span(end - 1 - context, end, n_scored))
        predicted += n_scored
    return spans


def _check_context(context: int) -> None:
    if context < 2:
        raise KronyptError(f"context length must be at least 2 tokens, got {context}")
