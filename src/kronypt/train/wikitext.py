"""Optional WikiText-2 validation perplexity during training, through `kronypt.eval`.

Uses the `krony-pt` protocol (non-overlapping windows of the training `seq_len`, the paper's metric) on the
WikiText-2 *validation* split, tokenised once with the tokenizer recorded in the data folder's meta.json.
It is logged as `wikitext2_val_ppl` for information; the best checkpoint is still chosen on val.bin loss.
"""

from __future__ import annotations

import torch

from kronypt.errors import KronyptError
from kronypt.models import load_tokenizer


class WikiTextValidation:
    """Callable: model -> WikiText-2 validation perplexity (krony-pt protocol)."""

    def __init__(self, source: str, meta: dict, seq_len: int, batch_size: int, max_tokens: int | None) -> None:
        """`source`: a folder laid out like ../shared/data (wikitext-2/wiki.valid.tokens) or 'hub'."""
        from kronypt.eval import plan_eval

        self.batch_size = batch_size
        tokenizer = load_tokenizer(_tokenizer_source(meta))
        self.plan = plan_eval(tokenizer, "wikitext2", "krony-pt", seq_len, split="validation",
                              data_dir=None if source == "hub" else source, max_tokens=max_tokens)

    def __call__(self, model: torch.nn.Module) -> float:
        from kronypt.eval import run_plan

        metrics, _ = run_plan(model, self.plan, self.batch_size, progress=False)
        return metrics["perplexity"]


def _tokenizer_source(meta: dict) -> str:
    """The tokenizer folder or tiktoken/hub name that made the token folder."""
    described = meta.get("tokenizer")
    if isinstance(described, dict) and described.get("folder"):
        return described["folder"]
    if isinstance(described, dict) and described.get("tiktoken"):
        return described["tiktoken"]
    raise KronyptError("eval_wikitext needs the data folder's tokenizer, but its meta.json names none")
