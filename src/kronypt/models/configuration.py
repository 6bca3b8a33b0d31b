"""KronyGPT2Config: a GPT2Config that also records which MLP matrices are Kronecker layers."""

from __future__ import annotations

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
    def from_gpt2(cls, config: GPT2Config, kronecker: dict[str, Any]) -> KronyGPT2Config:
        """Extend a dense GPT-2 config with a Kronecker module map."""
        values = config.to_dict()
        for key in ("model_type", "architectures", "transformers_version"):
            values.pop(key, None)
        return cls(kronecker=kronecker, architectures=["KronyGPT2LMHeadModel"], **values)

    def to_gpt2(self) -> GPT2Config:
        """The plain GPT2Config of the same architecture."""
        values = self.to_dict()
        for key in ("model_type", "architectures", "transformers_version", "kronecker"):
            values.pop(key, None)
        return GPT2Config(architectures=["GPT2LMHeadModel"], **values)
