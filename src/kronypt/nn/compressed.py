"""Compressed linear layers by method, and the config entries ("specs") that describe them.

A spec is what a model's config.json records of one compressed matrix, e.g. {"method": "kronecker",
"a_shape": [768, 576], "factors": 1, "scalars": false, "init": "van-loan"} or {"method": "low-rank",
"rank": 192}: enough to rebuild the layer before its weights load. Every compressed layer is an `nn.Linear`
stand-in in (out, in) orientation with a `dense_weight()` (the matrix it represents) and
`reset_parameters(initializer_range)`.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import nn

from kronypt.errors import KronyptError
from kronypt.nn.kronecker_linear import KroneckerLinear
from kronypt.nn.low_rank import LowRankLinear

METHODS = ("kronecker", "low-rank")
COMPRESSED_LAYERS: tuple[type[nn.Module], ...] = (KroneckerLinear, LowRankLinear)
REQUIRED = {"kronecker": ("a_shape", "factors", "scalars"), "low-rank": ("rank",)}


def is_compressed_layer(module: nn.Module) -> bool:
    return isinstance(module, COMPRESSED_LAYERS)


def layer_spec(layer: nn.Module) -> dict[str, Any]:
    """The spec of a compressed layer (without the init it came from)."""
    if isinstance(layer, KroneckerLinear):
        return {"method": "kronecker", "a_shape": list(layer.shape.a_shape), "factors": layer.factors,
                "scalars": layer.scalars is not None}
    if isinstance(layer, LowRankLinear):
        return {"method": "low-rank", "rank": layer.rank}
    raise KronyptError(f"{type(layer).__name__} is not a compressed layer")


def layer_params(layer: nn.Module) -> int:
    """Parameters of a compressed layer's factors (its bias, which the dense layer has too, not counted)."""
    return sum(p.numel() for name, p in layer.named_parameters() if name != "bias")


def layer_from_spec(spec: dict[str, Any], in_features: int, out_features: int, bias: bool,
                    device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> nn.Module:
    """A compressed layer with fresh parameters for a (checked) spec."""
    if spec.get("method", "kronecker") == "low-rank":
        return LowRankLinear(in_features, out_features, spec["rank"], bias=bias, device=device, dtype=dtype)
    return KroneckerLinear(in_features, out_features, tuple(spec["a_shape"]), spec["factors"],
                           scalars=spec["scalars"], bias=bias, device=device, dtype=dtype)


def check_spec(path: object, spec: object) -> None:
    """Refuse a malformed entry of a config's compression map in one line naming it."""
    where = f"config.json's compression entry {path!r}"
    if not isinstance(path, str) or not isinstance(spec, dict):
        raise KronyptError(f"{where} must map a module path to an object, got {type(spec).__name__}")
    method = spec.get("method", "kronecker")
    if method not in METHODS:
        raise KronyptError(f"{where} has method {method!r}; known: {', '.join(METHODS)}")
    missing = [key for key in REQUIRED[method] if key not in spec]
    if missing:
        raise KronyptError(f"{where} lacks {', '.join(missing)}")
    if method == "low-rank":
        if not _positive(spec["rank"]):
            raise KronyptError(f"{where} has rank {spec['rank']!r}; expected a positive integer")
        return
    a_shape = spec["a_shape"]
    if not (isinstance(a_shape, list | tuple) and len(a_shape) == 2 and all(_positive(v) for v in a_shape)):
        raise KronyptError(f"{where} has a_shape {a_shape!r}; expected two positive integers [m1, n1]")
    if not _positive(spec["factors"]):
        raise KronyptError(f"{where} has factors {spec['factors']!r}; expected a positive integer")
    if not isinstance(spec["scalars"], bool):
        raise KronyptError(f"{where} has scalars {spec['scalars']!r}; expected true or false")


def _positive(value: object) -> bool:
    if isinstance(value, bool):
        return False
    try:
        return operator.index(value) > 0  # type: ignore[arg-type]
    except TypeError:
        return False
