"""Model families, compression and Hugging Face integration (configs, model classes, loading, export)."""

from kronypt.models.allocation import allocate_factors
from kronypt.models.calibration import Calibration, calibration_window, load_calibration
from kronypt.models.compression import CompressionConfig, resolve
from kronypt.models.configuration import KronyptConfig
from kronypt.models.families import FAMILIES, Family, family_of, mlp_layout
from kronypt.models.loading import load_config, load_model
from kronypt.models.modeling import (
    KronyGPT2Config,
    KronyGPT2LMHeadModel,
    KronyGPT2Model,
    KronyLlamaConfig,
    KronyLlamaForCausalLM,
)
from kronypt.models.report import CompressionReport, MatrixReport
from kronypt.models.surgery import compress_, count_params, to_dense
from kronypt.models.tokenizers import has_tokenizer, load_tokenizer, save_tokenizer

__all__ = [
    "FAMILIES",
    "Calibration",
    "CompressionConfig",
    "CompressionReport",
    "Family",
    "KronyGPT2Config",
    "KronyGPT2LMHeadModel",
    "KronyGPT2Model",
    "KronyLlamaConfig",
    "KronyLlamaForCausalLM",
    "KronyptConfig",
    "MatrixReport",
    "allocate_factors",
    "calibration_window",
    "compress_",
    "count_params",
    "family_of",
    "has_tokenizer",
    "load_calibration",
    "load_config",
    "load_model",
    "load_tokenizer",
    "mlp_layout",
    "resolve",
    "save_tokenizer",
    "to_dense",
]
