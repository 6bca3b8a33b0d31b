"""One dense MLP matrix to one compressed layer: Kronecker or low-rank factors fitted to the weights, or to the
outputs on calibration inputs (`kronypt.math.whiten`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kronypt.math.decompose import Decomposition
from kronypt.math.whiten import output_error, ridged, whitened_kronecker, whitened_low_rank
from kronypt.models.compression import CompressionConfig
from kronypt.models.families import Family
from kronypt.nn import KroneckerLinear
from kronypt.nn.low_rank import LowRankLinear, truncated_svd


@dataclass(frozen=True)
class Fit:
    """A fitted layer and its errors: relative to the weight, and (with calibration inputs) to the outputs."""

    layer: nn.Module
    weight_error: float
    output_error: float | None


def fit_layer(module: nn.Module, family: Family, spec: dict, config: CompressionConfig,
              moment: torch.Tensor | None = None, init_std: float = 0.02) -> Fit:
    """The compressed layer `spec` describes, fitted to the dense `module`: to its weight, or, with
    `config.fit == "activations"`, to its outputs on inputs of second moment `moment` (E[x xᵀ])."""
    weight = family.dense_weight(module).detach()
    bias = None if getattr(module, "bias", None) is None else module.bias.detach()
    aware = config.fit == "activations"
    if spec["method"] == "low-rank":
        if aware:
            result = whitened_low_rank(weight, moment, spec["rank"])
            U, V = result.factors
        else:
            U, V = truncated_svd(weight, spec["rank"])
        layer = LowRankLinear.from_factors(U, V, bias)
    elif aware:
        result = whitened_kronecker(weight, moment, tuple(spec["a_shape"]), spec["factors"])
        A, B = result.factors
        layer = KroneckerLinear(weight.shape[1], weight.shape[0], tuple(spec["a_shape"]), spec["factors"],
                                scalars=spec["scalars"], bias=bias is not None, dtype=weight.dtype)
        layer.load_factors(Decomposition(A, B, torch.ones(spec["factors"], dtype=A.dtype), result.weight_error))
        if bias is not None:
            with torch.no_grad():
                layer.bias.copy_(bias)
    else:
        layer, _ = KroneckerLinear.from_dense(weight, bias, tuple(spec["a_shape"]), spec["factors"],
                                              scalars=spec["scalars"], init=config.init, rescale=config.rescale,
                                              prune_fill=config.prune_fill, init_std=init_std)
    layer.requires_grad_(module.weight.requires_grad)
    with torch.no_grad():
        fitted = layer.dense_weight().to(torch.float64)
    W = weight.to(torch.float64)
    weight_error = float((W - fitted).norm() / W.norm()) if W.norm() > 0 else 0.0
    out = output_error(W, fitted, ridged(moment)) if moment is not None else None
    return Fit(layer, weight_error, out)
