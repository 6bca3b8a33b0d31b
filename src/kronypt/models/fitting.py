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
    `config.fit == "activations"`, to its outputs on inputs of second moment `moment` (E[x xᵀ]). The fit runs on
    the CPU in float64; the layer takes the weight's dtype and device."""
    original = family.dense_weight(module).detach()
    dtype = original.dtype if original.dtype.is_floating_point else torch.float32
    weight = original.to("cpu", torch.float64)
    bias = None if getattr(module, "bias", None) is None else module.bias.detach().to("cpu", torch.float64)
    moment = None if moment is None else moment.to("cpu", torch.float64)
    if spec["method"] == "low-rank":
        U, V = (whitened_low_rank(weight, moment, spec["rank"]).factors if config.fit == "activations"
                else truncated_svd(weight, spec["rank"]))
        layer = LowRankLinear.from_factors(U, V, bias, dtype=torch.float64)
    elif config.fit == "activations":
        A, B = whitened_kronecker(weight, moment, tuple(spec["a_shape"]), spec["factors"]).factors
        layer = KroneckerLinear(weight.shape[1], weight.shape[0], tuple(spec["a_shape"]), spec["factors"],
                                scalars=spec["scalars"], bias=bias is not None, dtype=torch.float64)
        layer.load_factors(Decomposition(A, B, torch.ones(spec["factors"], dtype=A.dtype), 0.0))
        if bias is not None:
            with torch.no_grad():
                layer.bias.copy_(bias)
    else:
        layer, _ = KroneckerLinear.from_dense(weight, bias, tuple(spec["a_shape"]), spec["factors"],
                                              scalars=spec["scalars"], init=config.init, rescale=config.rescale,
                                              prune_fill=config.prune_fill, init_std=init_std)
    with torch.no_grad():
        fitted = layer.to(dtype).dense_weight().to(torch.float64)  # the error of what is stored
    weight_error = float((weight - fitted).norm() / weight.norm()) if weight.norm() > 0 else 0.0
    out = output_error(weight, fitted, ridged(moment)) if moment is not None else None
    layer = layer.to(original.device)
    layer.requires_grad_(module.weight.requires_grad)
    return Fit(layer, weight_error, out)
