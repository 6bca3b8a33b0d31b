"""lm-evaluation-harness on a model object: wrap any kronypt or dense model as lm-eval's `HFLM`.

lm-eval's own loader cannot build kronypt models (they need `import kronypt` to register their classes), so
the bridge hands lm-eval the loaded model instead. lm-eval is the optional `eval` extra:

    >>> from lm_eval import simple_evaluate                                          # doctest: +SKIP
    >>> lm = lm_eval_model(load_model("gpt2-81M"), load_tokenizer("gpt2-81M"))       # doctest: +SKIP
    >>> simple_evaluate(model=lm, tasks=["wikitext", "lambada_openai"])["results"]  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from kronypt.errors import KronyptError
from kronypt.eval.runner import check_vocab, context_length


def lm_eval_model(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
                  batch_size: int = 1, max_length: int | None = None) -> Any:
    """An `lm_eval.models.huggingface.HFLM` around an already loaded causal LM (on its current device)."""
    try:
        from lm_eval.models.huggingface import HFLM
    except ModuleNotFoundError as exc:  # lm-eval itself, or its HF backend's accelerate
        raise KronyptError(f"the lm-evaluation-harness bridge needs {exc.name}: pip install 'kronypt[eval]'"
                           ) from None
    check_vocab(model, tokenizer)
    return HFLM(pretrained=model.eval(), tokenizer=tokenizer, batch_size=batch_size,
                max_length=max_length or context_length(model))
