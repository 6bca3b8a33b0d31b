"""kronypt: compress GPT-2-family language models with (sums of scaled) Kronecker products.

Importing kronypt registers `KronyGPT2Config` / `KronyGPT2LMHeadModel` with the transformers Auto classes.

>>> import kronypt
>>> cfg = kronypt.CompressionConfig.from_scheme("81M")
>>> cfg.a_shape, cfg.factors
((768, 768), 1)
"""

from kronypt.errors import KronyptError
from kronypt.models import (
    CompressionConfig,
    CompressionReport,
    KronyGPT2Config,
    KronyGPT2LMHeadModel,
    allocate_factors,
    compress,
    count_params,
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
    "KroneckerLinear",
    "KronyptError",
    "allocate_factors",
    "compress",
    "count_params",
    "load_config",
    "load_model",
    "load_tokenizer",
    "to_dense",
]
