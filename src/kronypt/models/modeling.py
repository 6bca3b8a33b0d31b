"""KronyGPT2LMHeadModel: GPT-2 with Kronecker MLP layers, native to Hugging Face.

Importing this module registers the config and models with AutoConfig, AutoModelForCausalLM, AutoModel and
AutoModelForSequenceClassification, so a saved kronypt folder loads with their `from_pretrained` once
`kronypt` is imported.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    GPT2Model,
)
from transformers import initialization as init
from transformers.models.gpt2.modeling_gpt2 import GPT2MLP

from kronypt.kernels import FUSED_ACTIVATIONS
from kronypt.models.configuration import KronyGPT2Config
from kronypt.nn import KroneckerLinear


class KroneckerInitMixin:
    """`_init_weights` that also initialises KroneckerLinear parameters the checkpoint lacks.

    Hugging Face initialises a nested PreTrainedModel (the `transformer`) with its own `_init_weights`,
    so both the LM and its inner GPT2Model need this override.
    """

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, KroneckerLinear):
            std = math.sqrt(self.config.initializer_range / math.sqrt(module.factors))
            init.normal_(module.A, std=std)
            init.normal_(module.B, std=std)
            if module.scalars is not None:
                init.ones_(module.scalars)
            if module.bias is not None:
                init.zeros_(module.bias)
            return
        if isinstance(module, GPT2MLP) and isinstance(module.c_proj, KroneckerLinear):
            return  # GPT-2's scaled c_proj init is for dense weights; the Kronecker layer is handled above
        super()._init_weights(module)


class KroneckerGPT2MLP(GPT2MLP):
    """GPT-2's MLP whose Kronecker c_fc applies the activation itself: inside the fused CUDA kernel where
    that layer runs on it (one full read and write of the (tokens, n_inner) activations saved, forward and
    backward), after its product elsewhere. Other activations and dense layers run exactly as GPT2MLP."""

    fused_activation: str | None = None  # set by `adopt_class` from the model config

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.fused_activation is not None and isinstance(self.c_fc, KroneckerLinear):
            hidden_states = self.c_fc(hidden_states, activation=self.fused_activation)
        else:
            hidden_states = self.act(self.c_fc(hidden_states))
        return self.dropout(self.c_proj(hidden_states))


class KronyGPT2Model(KroneckerInitMixin, GPT2Model):
    """The inner GPT2Model of a kronypt LM; also what `AutoModel` loads from a kronypt folder (hidden states
    without the LM head)."""

    config_class = KronyGPT2Config

    def __init__(self, config: KronyGPT2Config) -> None:
        super().__init__(config)
        install_kronecker_layers(self, config, prefix="transformer.")
        _use_kronecker_mlps(self, config)


class KronyGPT2LMHeadModel(KroneckerInitMixin, GPT2LMHeadModel):
    """GPT2LMHeadModel whose listed MLP matrices (config.kronecker["modules"]) are KroneckerLinear."""

    config_class = KronyGPT2Config

    def __init__(self, config: KronyGPT2Config) -> None:
        super().__init__(config)
        adopt_class(self, KronyGPT2LMHeadModel)
        install_kronecker_layers(self, config)


class KronyGPT2ForSequenceClassification(KroneckerInitMixin, GPT2ForSequenceClassification):
    """GPT-2's sequence classifier on a kronypt body: `AutoModelForSequenceClassification` on a kronypt
    folder loads the compressed transformer and a new (randomly initialised) score head."""

    config_class = KronyGPT2Config

    def __init__(self, config: KronyGPT2Config) -> None:
        super().__init__(config)
        _adopt_transformer(self.transformer, config)
        install_kronecker_layers(self, config)


def install_kronecker_layers(model: nn.Module, config: KronyGPT2Config, prefix: str = "") -> None:
    """Replace the dense matrices the config lists by KroneckerLinear layers with fresh factors (a checkpoint's
    are loaded over them). The config's paths are the LM's ("transformer.h.0.mlp.c_fc"); `prefix` is the part
    `model` lacks ("transformer." for a bare GPT2Model)."""
    for path, spec in config.kron_modules.items():
        path = path.removeprefix(prefix)
        old = model.get_submodule(path)
        in_features, out_features = old.weight.shape  # Conv1D stores (in, out)
        new = KroneckerLinear(in_features, out_features, tuple(spec["a_shape"]), spec["factors"],
                              scalars=spec["scalars"], bias=old.bias is not None,
                              device=old.weight.device, dtype=old.weight.dtype)
        new.reset_parameters(config.initializer_range)  # the model's init range, as its dense weights
        parent, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent), name, new)


def adopt_class(model: GPT2LMHeadModel, cls: type[GPT2LMHeadModel]) -> None:
    """Turn a GPT-2 LM (and its inner GPT2Model) into the kronypt classes without rebuilding it.

    Hugging Face keys per-class state on the class: which outputs (hidden states, attentions) a model can
    record, and the loss type it derives from the class name. Both are carried over here. The MLPs become
    `KroneckerGPT2MLP`, which fuses GELU into c_fc when that layer runs on the fused kernels.
    """
    model.__class__ = cls
    model.loss_type = "ForCausalLM"
    _adopt_transformer(model.transformer, model.config)
    _record_outputs(model)


def _adopt_transformer(transformer: GPT2Model, config: KronyGPT2Config) -> None:
    """A built GPT2Model becomes the kronypt body in place (its class's weight init, fused-GELU MLPs)."""
    transformer.__class__ = KronyGPT2Model
    _use_kronecker_mlps(transformer, config)
    _record_outputs(transformer)


def _use_kronecker_mlps(transformer: GPT2Model, config: KronyGPT2Config) -> None:
    activation = config.activation_function
    for block in transformer.h:
        block.mlp.__class__ = KroneckerGPT2MLP
        block.mlp.fused_activation = activation if activation in FUSED_ACTIVATIONS else None


def _record_outputs(module: nn.Module) -> None:
    """Tell transformers which outputs a module whose class changed after construction can record."""
    try:
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
    except ImportError:  # older transformers record outputs without a registry
        return
    _CAN_RECORD_REGISTRY[module] = module._can_record_outputs


AutoConfig.register(KronyGPT2Config.model_type, KronyGPT2Config, exist_ok=True)
AutoModel.register(KronyGPT2Config, KronyGPT2Model, exist_ok=True)
AutoModelForCausalLM.register(KronyGPT2Config, KronyGPT2LMHeadModel, exist_ok=True)
AutoModelForSequenceClassification.register(KronyGPT2Config, KronyGPT2ForSequenceClassification, exist_ok=True)
