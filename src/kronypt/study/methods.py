"""The compression methods a study compares, each a `CompressionConfig` at a budget (the fraction of the MLP
parameters kept); low-rank factors and dropped blocks are matched to the same parameter count as nearly as they
can be."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kronypt.errors import KronyptError

if TYPE_CHECKING:
    from kronypt.models import CompressionConfig

DENSE = "dense"
# name: (description, the CompressionConfig settings besides the budget's ratio)
METHODS: dict[str, tuple[str, dict[str, str]]] = {
    "kronecker": ("Kronecker, Van Loan (nearest in weights)", {}),
    "kronecker-aware": ("Kronecker, activation-aware fit", {"fit": "activations"}),
    "kronecker-sensitivity": ("Kronecker, activation-aware, sizes by measured sensitivity",
                              {"fit": "activations", "allocation": "sensitivity"}),
    "low-rank": ("low-rank, truncated SVD", {"method": "low-rank"}),
    "low-rank-whitened": ("low-rank, whitened SVD (SVD-LLM)", {"method": "low-rank", "fit": "activations"}),
    "drop-blocks": ("dropped blocks, least influence (ShortGPT)", {"method": "drop-blocks"}),
    "drop-every-other": ("dropped blocks, spread evenly (DistilGPT2)",
                         {"method": "drop-blocks", "drop": "every-other"}),
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
    from kronypt.models import CompressionConfig  # here: `kronypt study --help` lists METHODS without torch

    return CompressionConfig(ratio=budget, **METHODS[method][1])


def describe(method: str) -> str:
    return "dense (no compression)" if method == DENSE else METHODS[method][0]
