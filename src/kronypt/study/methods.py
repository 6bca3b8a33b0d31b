"""The compression methods a study compares, each a `CompressionConfig` at a budget (the fraction of the MLP
parameters kept); low-rank factors and dropped blocks are matched to the same parameter count as nearly as they
can be."""

from __future__ import annotations

from collections.abc import Callable

from kronypt.errors import KronyptError
from kronypt.models import CompressionConfig

DENSE = "dense"
METHODS: dict[str, tuple[str, Callable[[float], CompressionConfig]]] = {
    "kronecker": ("Kronecker, Van Loan (nearest in weights)", lambda r: CompressionConfig(ratio=r)),
    "kronecker-aware": ("Kronecker, activation-aware fit", lambda r: CompressionConfig(ratio=r, fit="activations")),
    "kronecker-sensitivity": ("Kronecker, activation-aware, sizes by measured sensitivity",
                              lambda r: CompressionConfig(ratio=r, fit="activations", allocation="sensitivity")),
    "low-rank": ("low-rank, truncated SVD", lambda r: CompressionConfig(method="low-rank", ratio=r)),
    "low-rank-whitened": ("low-rank, whitened SVD (SVD-LLM)",
                          lambda r: CompressionConfig(method="low-rank", ratio=r, fit="activations")),
    "drop-blocks": ("dropped blocks, least influence (ShortGPT)",
                    lambda r: CompressionConfig(method="drop-blocks", ratio=r)),
    "drop-every-other": ("dropped blocks, spread evenly (DistilGPT2)",
                         lambda r: CompressionConfig(method="drop-blocks", ratio=r, drop="every-other")),
}
DEFAULT_METHODS = (DENSE, "kronecker", "kronecker-aware", "kronecker-sensitivity", "low-rank", "low-rank-whitened",
                   "drop-blocks")


def check_methods(names: list[str]) -> list[str]:
    """The study's methods, each known and named once."""
    unknown = [n for n in names if n != DENSE and n not in METHODS]
    if unknown or not names:
        raise KronyptError(f"unknown study methods {unknown or '(none)'}; choose from {', '.join([DENSE, *METHODS])}")
    return list(dict.fromkeys(names))


def compression_config(method: str, budget: float) -> CompressionConfig:
    return METHODS[method][1](budget)


def describe(method: str) -> str:
    return "dense (no compression)" if method == DENSE else METHODS[method][0]
