"""Spend a parameter budget on Kronecker terms where they remove the most Van Loan error.

The paper gives every MLP matrix the same number of factors k. Matrices differ in how well few Kronecker
products describe them, so with the same total number of terms a per-matrix k can leave less error. For
one A shape every term costs the same parameters in every matrix, and the i-th term of a matrix removes
σ_i² of R(W) from its squared error (σ falling with i), so taking terms greedily by the share of ‖W‖²
they remove minimises the summed squared relative errors Σ_W ‖W − Ŵ‖²/‖W‖² exactly.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping

import torch

from kronypt.errors import KronyptError


def allocate_terms(spectra: Mapping[str, torch.Tensor], total_terms: int, min_factors: int = 1,
                   max_factors: int | None = None) -> dict[str, int]:
    """Factors per matrix (in `spectra`'s order) with at most `total_terms` terms in all.

    `spectra[name]` holds σ_i² of that matrix's R(W), largest first (`kronecker_spectrum`). Every matrix
    gets at least `min_factors`; none more than `max_factors` or than its number of independent terms.
    Terms that would remove no error are not spent, so the total can stay under the budget.
    """
    if min_factors < 1:
        raise KronyptError(f"every matrix needs at least one factor, got min_factors={min_factors}")
    if max_factors is not None and max_factors < min_factors:
        raise KronyptError(f"max_factors={max_factors} is below min_factors={min_factors}")
    caps = {name: len(values) if max_factors is None else min(len(values), max_factors)
            for name, values in spectra.items()}
    short = [name for name, cap in caps.items() if cap < min_factors]
    if short:
        raise KronyptError(f"{short[0]} admits only {caps[short[0]]} factors, fewer than min_factors={min_factors}")
    if total_terms < min_factors * len(spectra):
        raise KronyptError(f"a budget of {total_terms:,} terms cannot give {len(spectra)} matrices "
                           f"{min_factors} factor{'s' if min_factors > 1 else ''} each")
    counts = dict.fromkeys(spectra, min_factors)
    norms = {name: float(values.sum()) for name, values in spectra.items()}
    heap = []
    for order, name in enumerate(spectra):
        _push(heap, spectra[name], norms[name], counts[name], caps[name], order, name)
    left = total_terms - min_factors * len(spectra)
    while left > 0 and heap:
        _, order, name = heapq.heappop(heap)
        counts[name] += 1
        left -= 1
        _push(heap, spectra[name], norms[name], counts[name], caps[name], order, name)
    return counts


def predicted_rel_error(spectrum: torch.Tensor, factors: int) -> float:
    """‖W − Ŵ‖_F / ‖W‖_F of the nearest sum of `factors` Kronecker products, from the spectrum alone."""
    total = float(spectrum.sum())
    return (float(spectrum[factors:].sum()) / total) ** 0.5 if total > 0 else 0.0


def _push(heap: list, spectrum: torch.Tensor, norm: float, count: int, cap: int, order: int, name: str) -> None:
    """Queue the matrix's next term by the share of ‖W‖² it removes (ties: the earlier matrix)."""
    if count < cap and norm > 0:
        gain = float(spectrum[count]) / norm
        if gain > 0:
            heapq.heappush(heap, (-gain, order, name))
