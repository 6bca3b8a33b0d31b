"""GPT-2 model surgery and Hugging Face integration (config, model classes, loading, export)."""

from kronypt.models.configuration import KronyGPT2Config
from kronypt.models.loading import copy_tokenizer_files, has_tokenizer, load_config, load_model, load_tokenizer
from kronypt.models.modeling import KronyGPT2LMHeadModel
from kronypt.models.surgery import (
    CompressionConfig,
    CompressionReport,
    allocate_factors,
    compress,
    count_params,
    to_dense,
)

__all__ = [
    "CompressionConfig",
    "CompressionReport",
    "KronyGPT2Config",
    "KronyGPT2LMHeadModel",
    "allocate_factors",
    "compress",
    "copy_tokenizer_files",
    "has_tokenizer",
    "count_params",
    "load_config",
    "load_model",
    "load_tokenizer",
    "to_dense",
]
