"""KronyGPT2Config: a GPT2Config that also records which MLP matrices are Kronecker layers."""

from __future__ import annotations

import copy
from typing import Any

from transformers import GPT2Config


class KronyGPT2Config(GPT2Config):
    """GPT-2 config plus `kronecker`: {"modules": {path: {"a_shape", "factors", "scalars"}}, ...}.

    `path` is relative to the LM model, e.g. "transformer.h.0.mlp.c_fc"; `a_shape` is in that layer's
    (out, in) orientation. Everything else is GPT-2's, so `to_dense` can rebuild a plain GPT2Config.
    """

    model_type = "kronygpt2"

    def __init__(self, kronecker: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.kronecker = kronecker or {"modules": {}}
        super().__init__(**kwargs)

    @property
    def kron_modules(self) -> dict[str, dict[str, Any]]:
        return self.kronecker.get("modules", {})

    @classmethod
    def extend(cls, config: GPT2Config, kronecker: dict[str, Any]) -> KronyGPT2Config:
        """A KronyGPT2Config copy of a GPT-2 config with a Kronecker module map.

        A copy, not a rebuild from `to_dict()`: the runtime state a config carries besides its saved fields
        (the attention implementation, which the mask builder reads; output flags) must stay the user's.
        """
        extended = copy.deepcopy(config)
        if not isinstance(extended, cls):
            extended.__class__ = cls
            extended.architectures = ["KronyGPT2LMHeadModel"]
        extended.kronecker = kronecker
        return extended

    def to_gpt2(self) -> GPT2Config:
        """The plain GPT2Config of the same architecture, with the same attention implementation."""
        values = self.to_dict()
        for key in ("model_type", "architectures", "transformers_version", "kronecker"):
            values.pop(key, None)
        config = GPT2Config(architectures=["GPT2LMHeadModel"], **values)
        config._attn_implementation = self._attn_implementation
        return config
