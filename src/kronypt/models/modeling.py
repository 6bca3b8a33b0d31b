"""Compressed models native to Hugging Face: the base architecture's classes with compressed MLP matrices.

For a base config class (GPT2Config, LlamaConfig, ...) `compressed_classes` makes, once, `Krony<Class>`
subclasses of its causal LM, bare model and sequence classifier, and registers them with
AutoModelForCausalLM, AutoModel and AutoModelForSequenceClassification. Each builds the base model and then
replaces the matrices its config's `compression` map lists by compressed layers (whose weights a checkpoint
then loads), so a kronypt folder loads with the Auto classes once `kronypt` is imported.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING,
    MODEL_MAPPING,
)
from transformers.models.gpt2.modeling_gpt2 import GPT2MLP

from kronypt.errors import KronyptError
from kronypt.kernels import FUSED_ACTIVATIONS
from kronypt.models.configuration import base_config_of, compressed_config_class, is_compressed
from kronypt.models.families import find_family
from kronypt.nn import KroneckerLinear
from kronypt.nn.compressed import is_compressed_layer, layer_from_spec
from kronypt.nn.functional import gated_vector_b

# The Auto classes a compressed architecture is registered with, and where transformers keeps the base ones.
AUTO_CLASSES = {"causal_lm": (AutoModelForCausalLM, MODEL_FOR_CAUSAL_LM_MAPPING),
                "base": (AutoModel, MODEL_MAPPING),
                "sequence_classification": (AutoModelForSequenceClassification,
                                            MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING)}


class CompressedModelMixin:
    """Builds the base model, then installs the compressed layers its config lists."""

    def __init__(self, config: PretrainedConfig, *args, **kwargs) -> None:
        super().__init__(config, *args, **kwargs)
        install_compressed_layers(self, config)
        _adopt_body(self)

    def _init_weights(self, module: nn.Module) -> None:
        """Initialise compressed layers the checkpoint lacks; leave a module holding one to its children
        (GPT-2's scaled c_proj init, for one, reaches for a dense `.weight`)."""
        if is_compressed_layer(module):  # factors whose product has the model's init range; unit scalars
            terms = module.factors if isinstance(module, KroneckerLinear) else module.rank
            std = math.sqrt(getattr(self.config, "initializer_range", 0.02) / math.sqrt(terms))
            for name, parameter in module.named_parameters(recurse=False):
                {"bias": init.zeros_, "scalars": init.ones_}.get(name, lambda p: init.normal_(p, std=std))(parameter)
            return
        if any(is_compressed_layer(child) for child in module.children()):
            return
        super()._init_weights(module)


class KroneckerGPT2MLP(GPT2MLP):
    """GPT-2's MLP whose Kronecker c_fc applies the activation itself: inside the fused CUDA kernel where
    that layer runs on it (one full read and write of the (tokens, n_inner) activations saved, forward and
    backward), after its product elsewhere (torch's tanh GELU: GPT-2's function, equal to its own
    implementation up to float rounding). Other activations and dense layers run exactly as GPT2MLP."""

    fused_activation: str | None = None  # set from the model config when the MLP is adopted

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.fused_activation is not None and isinstance(self.c_fc, KroneckerLinear):
            hidden_states = self.c_fc(hidden_states, activation=self.fused_activation)
        else:
            hidden_states = self.act(self.c_fc(hidden_states))
        return self.dropout(self.c_proj(hidden_states))


@functools.cache
def compressed_classes(base_config: type[PretrainedConfig]) -> dict[str, type[PreTrainedModel]]:
    """{"causal_lm", "base", "sequence_classification"}: the compressed subclasses of the base architecture's
    model classes (those it has), registered with the Auto classes."""
    config_class = compressed_config_class(base_config)
    if base_config not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise KronyptError(f"{base_config.model_type} has no causal LM class in transformers")
    classes = {}
    for role, (auto, mapping) in AUTO_CLASSES.items():
        if base_config in mapping:
            base = mapping[base_config]
            classes[role] = type(f"Krony{base.__name__}", (CompressedModelMixin, base),
                                 {"config_class": config_class, "__module__": __name__,
                                  "__doc__": f"{base.__name__} with compressed MLP matrices (kronypt)."})
            auto.register(config_class, classes[role], exist_ok=True)
    return classes


def meta_model(config: PretrainedConfig) -> PreTrainedModel:
    """The causal LM a config describes, built on the meta device: its modules and shapes, no memory."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def causal_lm_class(config: PretrainedConfig) -> type[PreTrainedModel]:
    """The compressed causal LM class for a (plain or compressed) config's architecture."""
    return compressed_classes(base_config_of(config))["causal_lm"]


def install_compressed_layers(model: nn.Module, config: PretrainedConfig) -> None:
    """Replace the dense matrices the config lists by compressed layers with fresh parameters (a checkpoint's
    are loaded over them). Paths are the causal LM's; a bare body (`AutoModel`) lacks its prefix."""
    modules = getattr(config, "compressed_modules", {})
    if not modules:
        return
    prefix = f"{model.base_model_prefix}." if model.base_model is model else ""
    family = find_family(model, strip=prefix)
    allowed = set()
    if family is not None:
        blocks = len(model.get_submodule(family.blocks.removeprefix(prefix)))
        allowed = {family.path(i, name) for i in range(blocks) for name in family.matrices}
    for path, spec in modules.items():
        if path not in allowed:
            raise KronyptError(f"config.json's compression lists {path!r}, which is not an MLP matrix of this "
                               f"{type(model).__name__.removeprefix('Krony')}")
        local = path.removeprefix(prefix)
        old = model.get_submodule(local)
        out_features, in_features = _dense_out_in(old, family)
        new = layer_from_spec(spec, in_features, out_features, bias=getattr(old, "bias", None) is not None,
                              device=old.weight.device, dtype=old.weight.dtype)
        new.reset_parameters(getattr(config, "initializer_range", 0.02))
        model.set_submodule(local, new)
    _use_fused_mlps(model, config)


def _dense_out_in(module: nn.Module, family) -> tuple[int, int]:
    out_features, in_features = family.dense_weight(module).shape
    return out_features, in_features


def adopt(model: PreTrainedModel, config: PretrainedConfig) -> None:
    """Turn a causal LM into the compressed class of its architecture in place (no rebuild), with `config`.

    Every submodule that held the old config (the blocks' attention reads its implementation from there) gets
    the new one. Hugging Face keys per-class state on the class: which outputs a model can record, and the
    loss type it derives from the class name; both are carried over.
    """
    old = model.config
    for module in model.modules():
        if getattr(module, "config", None) is old:
            module.config = config
    model.__class__ = causal_lm_class(config)
    model.loss_type = "ForCausalLM"
    _record_outputs(model)
    _adopt_body(model)
    _use_fused_mlps(model, config)


def _adopt_body(model: PreTrainedModel) -> None:
    """The inner base model of a compressed LM or classifier becomes the compressed body class too:
    transformers initialises a nested PreTrainedModel with that model's own `_init_weights`."""
    body = model.base_model
    if body is model or not is_compressed(model.config):
        return
    body_class = compressed_classes(base_config_of(model.config)).get("base")
    if body_class is not None and type(body) is not body_class:
        body.__class__ = body_class
        _record_outputs(body)


class GatedVectorBMixin:
    """A gated MLP (gate/up/down, act_fn) whose three matrices are single Kronecker terms with vector B runs as one
    `gated_vector_b` on the CPU (the hidden activations never laid out); anything else runs the MLP's own
    forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factors = vector_b_factors(self.gate_proj, self.up_proj, self.down_proj)
        if factors is None or x.device.type != "cpu":  # measured on CPUs; GPUs keep the layers' own paths
            return super().forward(x)
        return gated_vector_b(x, *factors, self.act_fn)


def vector_b_factors(gate: nn.Module, up: nn.Module, down: nn.Module) -> tuple | None:
    """((A, b) of gate, up, down) where all three are one-term Kronecker layers on the automatic path, without
    bias, with B a column of p entries (gate, up) and a row of p (down); else None. Scalars fold into b."""
    layers = (gate, up, down)
    if not all(isinstance(m, KroneckerLinear) and m.factors == 1 and m.bias is None and m.path == "auto"
               for m in layers):
        return None
    p = gate.shape.m2
    if not (gate.shape.n2 == up.shape.n2 == 1 and up.shape.m2 == p and (down.shape.m2, down.shape.n2) == (1, p)
            and gate.shape.a_shape == up.shape.a_shape == down.shape.a_shape[::-1]):
        return None
    return tuple((m.A[0], m.B.reshape(-1) if m.scalars is None else m.B.reshape(-1) * m.scalars) for m in layers)


@functools.cache
def _gated_class(cls: type) -> type:
    return type(f"KroneckerGated{cls.__name__}", (GatedVectorBMixin, cls), {"__module__": __name__})


def _use_fused_mlps(model: nn.Module, config: PretrainedConfig) -> None:
    """GPT-2 MLPs whose c_fc is a Kronecker layer fuse GELU into its kernel (CUDA, fused path); gated MLPs
    (Llama-style) take `gated_vector_b` where their matrices allow."""
    if not isinstance(config, GPT2Config):
        gated = ("gate_proj", "up_proj", "down_proj")
        for module in model.modules():
            if (all(isinstance(getattr(module, n, None), KroneckerLinear) for n in gated)
                    and hasattr(module, "act_fn") and not isinstance(module, GatedVectorBMixin)):
                module.__class__ = _gated_class(type(module))
        return
    activation = config.activation_function
    for module in model.modules():
        if isinstance(module, GPT2MLP) and isinstance(module.c_fc, KroneckerLinear):
            module.__class__ = KroneckerGPT2MLP
            module.fused_activation = activation if activation in FUSED_ACTIVATIONS else None


def _record_outputs(module: nn.Module) -> None:
    """Tell transformers which outputs a module whose class changed after construction can record."""
    try:
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
    except ImportError:  # older transformers record outputs without a registry
        return
    _CAN_RECORD_REGISTRY[module] = module._can_record_outputs


# The families' exemplars, made at import so their classes have stable names (`kronypt.KronyGPT2LMHeadModel`).
KronyGPT2Config = compressed_config_class(GPT2Config)
KronyGPT2LMHeadModel = compressed_classes(GPT2Config)["causal_lm"]
KronyGPT2Model = compressed_classes(GPT2Config)["base"]
KronyLlamaConfig = compressed_config_class(LlamaConfig)
KronyLlamaForCausalLM = compressed_classes(LlamaConfig)["causal_lm"]
