"""Configs of compressed models: the base architecture's config plus the map of compressed MLP matrices.

Every kronypt folder's config.json says `"model_type": "kronypt"`, names the architecture it was made from in
`base_model_type` ("gpt2", "llama", ...) and lists its compressed matrices in `compression`:

    {"modules": {"model.layers.0.mlp.gate_proj": {"method": "kronecker", "a_shape": [768, 576],
                                                   "factors": 1, "scalars": false, "init": "van-loan"}, ...}}

Paths are relative to the causal LM and shapes are in the layer's (out, in) orientation. `KronyptConfig`
(registered with `AutoConfig` under "kronypt") turns such a file into an instance of the base config's
compressed subclass (`KronyLlamaConfig`, `KronyGPT2Config`, ...), made once per base class, so everything
else in the config behaves exactly as the base architecture's.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from kronypt.errors import KronyptError
from kronypt.nn.compressed import check_spec

MODEL_TYPE = "kronypt"


class CompressedConfigMixin:
    """What every compressed config adds to its base architecture's: `compression` and `base_model_type`."""

    @property
    def compressed_modules(self) -> dict[str, dict[str, Any]]:
        """{module path: layer spec} of the compressed matrices (empty for none)."""
        return (self.compression or {}).get("modules", {})

    def dense_config(self) -> PretrainedConfig:
        """The plain config of the base architecture, with the same attention implementation."""
        base = base_config_class(self.base_model_type)
        values = self.to_dict()
        for key in ("model_type", "architectures", "transformers_version", "compression", "base_model_type"):
            values.pop(key, None)
        config = base(architectures=[MODEL_FOR_CAUSAL_LM_MAPPING[base].__name__], **values)
        config._attn_implementation = self._attn_implementation
        return config


class KronyptConfig(PretrainedConfig):
    """The `model_type` of kronypt folders; reading one gives the compressed config of its base architecture."""

    model_type = MODEL_TYPE

    def __new__(cls, *args: Any, **kwargs: Any) -> PretrainedConfig:  # AutoConfig.for_model builds it directly
        check_compression(kwargs.get("compression"))
        return compressed_config_class(base_config_class(kwargs.get("base_model_type")))(*args, **kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> PretrainedConfig:
        base = base_config_class(config_dict.get("base_model_type"))
        check_compression(config_dict.get("compression"))
        return compressed_config_class(base).from_dict(config_dict, **kwargs)


def base_config_class(model_type: object) -> type[PretrainedConfig]:
    """The transformers config class of a base architecture, refused in one line when unknown."""
    if not isinstance(model_type, str) or model_type == MODEL_TYPE or model_type not in CONFIG_MAPPING:
        raise KronyptError(f"a kronypt config.json must name its base architecture in base_model_type (e.g. "
                           f"gpt2, llama); got {model_type!r}")
    return CONFIG_MAPPING[model_type]


@functools.cache
def compressed_config_class(base: type[PretrainedConfig]) -> type[PretrainedConfig]:
    """`Krony<Base>Config`: `base` plus the compression map, saved with model_type "kronypt"."""
    namespace = {
        "__module__": __name__,
        "__doc__": f"{base.__name__} plus the compressed MLP matrices (`compression`).",
        "__annotations__": {"compression": "dict | None", "base_model_type": "str | None"},
        "model_type": MODEL_TYPE,
        "compression": None,
        "base_model_type": base.model_type,
    }
    return type(f"Krony{base.__name__}", (CompressedConfigMixin, base), namespace)


def base_config_of(config: PretrainedConfig) -> type[PretrainedConfig]:
    """The base architecture's config class of a plain or compressed config."""
    return type(config).__bases__[1] if is_compressed(config) else type(config)


def is_compressed(config: PretrainedConfig) -> bool:
    """Whether a config is a kronypt config (with or without compressed matrices yet)."""
    return isinstance(config, CompressedConfigMixin)


def extend(config: PretrainedConfig, modules: dict[str, dict[str, Any]], architecture: str) -> PretrainedConfig:
    """A compressed copy of a (plain or compressed) config with the module map `modules`.

    A copy, not a rebuild from `to_dict()`: the runtime state a config carries besides its saved fields (the
    attention implementation, which the mask builder reads; output flags) must stay the user's.
    """
    check_compression({"modules": modules})
    extended = copy.deepcopy(config)
    if not is_compressed(extended):
        base = type(extended)
        extended.__class__ = compressed_config_class(base)
        extended.base_model_type = base.model_type
    extended.architectures = [architecture]
    extended.compression = {"modules": modules}
    return extended


def check_compression(compression: object) -> None:
    """Refuse a malformed `compression` section in one line (a hand-edited or damaged config.json)."""
    if compression is None:
        return
    modules = compression.get("modules") if isinstance(compression, dict) else None
    if not isinstance(modules, dict):
        raise KronyptError(f"config.json's compression must be an object with a 'modules' object, got "
                           f"{_short(compression)}")
    for path, spec in modules.items():
        check_spec(path, spec)


CONTEXT_KEYS = ("n_positions", "max_position_embeddings", "n_ctx")  # where configs keep their context length


def config_context_length(config: PretrainedConfig) -> int | None:
    """The longest input a model config states (GPT-2's n_positions, Llama's max_position_embeddings), if any."""
    for name in CONTEXT_KEYS:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 1:
            return value
    return None


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


AutoConfig.register(MODEL_TYPE, KronyptConfig, exist_ok=True)
