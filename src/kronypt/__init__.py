"""kronypt: compress language models (GPT-2, Llama-family) with (sums of scaled) Kronecker products.

Importing kronypt registers its configs and compressed model classes with the transformers Auto classes, so a
saved kronypt folder loads with `AutoModelForCausalLM.from_pretrained`.

>>> import kronypt
>>> config = kronypt.CompressionConfig(scheme="81M")
>>> config.scheme, config.factors
('81M', 1)
"""

from kronypt.errors import KronyptError
from kronypt.models import (
    CompressionConfig,
    CompressionReport,
    KronyGPT2Config,
    KronyGPT2LMHeadModel,
    KronyLlamaConfig,
    KronyLlamaForCausalLM,
    allocate_factors,
    compress_,
    count_params,
    family_of,
    load_config,
    load_model,
    load_tokenizer,
    to_dense,
)
from kronypt.nn import KroneckerLinear

__version__ = "0.1.0"

__all__ = [
    "CompressionConfig",
    "CompressionReport",
    "KronyGPT2Config",
    "KronyGPT2LMHeadModel",
    "KronyLlamaConfig",
    "KronyLlamaForCausalLM",
    "KroneckerLinear",
    "KronyptError",
    "allocate_factors",
    "compress_",
    "count_params",
    "family_of",
    "load_config",
    "load_model",
    "load_tokenizer",
    "to_dense",
]
