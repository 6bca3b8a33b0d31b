"""Optional WikiText-2 validation perplexity during training, through `kronypt.eval`.

Uses the `krony-pt` protocol (non-overlapping windows of the training `seq_len`, the paper's metric) on the
WikiText-2 *validation* split, tokenised once with the tokenizer recorded in the data folder's meta.json.
It is logged as `wikitext2_val_ppl` for information; the best checkpoint is still chosen on val.bin loss.
Under `torchrun` only rank 0 reads and tokenises the text (a hub download happens once, and no other rank
needs the tokenizer) and sends the token ids and windows to the others; the windows are shared out over the
ranks (every rank runs the same number of forward passes, which a sharded model needs) and the per-token
scores are gathered, so the number is the one a single process computes.
"""

from __future__ import annotations

import torch

from kronypt.errors import KronyptError
from kronypt.eval.protocols import Plan
from kronypt.eval.scoring import score_requests
from kronypt.models.tokenizers import load_tokenizer
from kronypt.train import distributed


class WikiTextValidation:
    """Callable: model -> WikiText-2 validation perplexity (krony-pt protocol)."""

    def __init__(self, source: str, tokenizer: str | None, seq_len: int, batch_size: int,
                 max_tokens: int | None) -> None:
        """`source`: a folder laid out like ../shared/data (wikitext-2/wiki.valid.tokens) or 'hub'; `tokenizer`:
        the one that made the training data (`kronypt.data.tokens.tokenizer_source`).

        Under a process group every rank must construct it: rank 0 builds the plan, the others receive it."""
        self.batch_size = batch_size
        self.plan = distributed.from_main_rank(lambda: wikitext_plan(source, tokenizer, seq_len, max_tokens))

    def __call__(self, model: torch.nn.Module, rank: int = 0, world_size: int = 1) -> float:
        """The perplexity, computed together by all `world_size` ranks (each must call this)."""
        requests = self.plan.requests
        mine = list(range(rank, len(requests), world_size))
        rounds = -(-len(requests) // world_size)
        padded = mine + mine[-1:] * (rounds - len(mine)) if mine else [0] * rounds  # same work on every rank
        was_training = model.training
        model.eval()
        try:
            run = score_requests(model, self.plan.sequences, [requests[i] for i in padded], self.batch_size,
                                 progress=False)
        finally:
            model.train(was_training)
        scores = [None] * len(requests)
        for part in distributed.gather_objects(list(zip(mine, run.scores[:len(mine)], strict=True))):
            for index, score in part:
                scores[index] = score
        return self.plan.summarize(scores)["perplexity"]


def wikitext_plan(source: str, tokenizer: str | None, seq_len: int, max_tokens: int | None) -> Plan:
    """Read WikiText-2 validation (from `source`, a data folder or 'hub') and tokenise it with the data's
    tokenizer into krony-pt windows of `seq_len` tokens."""
    from kronypt.eval import plan_eval

    if tokenizer is None:
        raise KronyptError("eval_wikitext needs the data folder's tokenizer, but its meta.json names none")
    tokenizer = load_tokenizer(tokenizer)
    return plan_eval(tokenizer, "wikitext2", "krony-pt", seq_len, split="validation",
                     data_dir=None if source == "hub" else source, max_tokens=max_tokens)
