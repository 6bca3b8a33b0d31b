"""kronypt: compress language models (GPT-2, Llama-family) with (sums of scaled) Kronecker products.

Importing kronypt registers its configs and compressed model classes with the transformers Auto classes, so a
saved kronypt folder loads with `AutoModelForCausalLM.from_pretrained` (`kronypt.auto_register`). The names
below are imported when first used: `import kronypt` alone loads neither torch nor transformers.

>>> import kronypt
>>> config = kronypt.CompressionConfig(scheme="81M")
>>> config.scheme, config.factors
('81M', 1)
"""

from kronypt.auto_register import register_when_transformers_loads
from kronypt.lazy import lazy_exports

__version__ = "0.1.0"

EXPORTS = {
    "kronypt.errors": ("KronyptError",),
    "kronypt.models": ("CompressionConfig", "CompressionReport", "KronyGPT2Config", "KronyGPT2LMHeadModel",
                       "KronyLlamaConfig", "KronyLlamaForCausalLM", "allocate_factors", "compress_", "count_params",
                       "family_of", "load_config", "load_model", "load_tokenizer", "to_dense"),
    "kronypt.nn": ("KroneckerLinear",),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, EXPORTS)

register_when_transformers_loads()
