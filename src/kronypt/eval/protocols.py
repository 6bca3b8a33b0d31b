"""The named evaluation protocols: how texts become scored spans, and how span scores become metrics.

Published perplexities differ mostly by protocol, so every number kronypt reports carries one of these names:

- `krony-pt`: the Krony-PT paper's numbers. Non-raw WikiText rows / LAMBADA passages joined with "\\n\\n",
  non-overlapping 1024-token windows, the first token of each window unpredicted,
  perplexity = exp(mean over windows of the window's mean NLL) (the HF guide's loop, stride = context).
- `hf-strided`: the Hugging Face perplexity guide on raw WikiText: 1024-token windows every `stride`
  tokens (default half the window, 512), each token scored once, NLL weighted by the exact number of
  tokens each window scores.
- `lambada-openai`: lm-eval's `lambada_openai`: context = text up to the last space, target = " " + last word;
  accuracy = every target token is the greedy argmax; perplexity = exp(-mean target log-likelihood).
- `word`: lm-eval's `wikitext`: rolling log-likelihood of each detokenised raw article; word and byte
  perplexity and bits per byte, with words and bytes counted on the original article.

The first two define their window (`Protocol.window`, GPT-2's 1024, whatever the model's context): a model
with a shorter context scores shorter windows, and the records and the table say so. The other two use
the model's whole context, as lm-eval does.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import torch
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from kronypt.errors import KronyptError
from kronypt.eval.detokenize import wikitext_detokenize
from kronypt.eval.scoring import Request, SpanScore
from kronypt.eval.windows import Span, disjoint_windows, rolling_windows, strided_windows

T = TypeVar("T")
Summary = Callable[[list[SpanScore]], dict[str, float]]


@dataclass
class Plan:
    """Everything needed to score one (task, protocol): token sequences, spans, and how to summarise."""

    sequences: list[torch.Tensor]
    requests: list[Request]
    summarize: Summary
    examples: int
    stride: int | None = None
    greedy: bool = False  # whether the summary needs greedy-match flags

    @property
    def scored_tokens(self) -> int:
        return sum(r.span.n_scored for r in self.requests)


class Protocol(ABC):
    """A named protocol: which corpus form each task reads, and how it is windowed and summarised."""

    name: str
    forms: dict[str, str]  # task -> corpus form (see kronypt.eval.corpora)
    window: int | None = None  # the window length the protocol is defined with; None: the model's context

    def context_for(self, longest: int) -> int:
        """The window length on a model whose context is `longest` tokens: the protocol's own where it has
        one (never more than the model takes), else the model's."""
        return longest if self.window is None else min(self.window, longest)

    @abstractmethod
    def plan(self, texts: list[str], tokenizer: PreTrainedTokenizerBase, context: int,
             stride: int | None, max_tokens: int | None) -> Plan:
        """Tokenise `texts` and lay out the spans to score (`max_tokens` truncates, for quick runs)."""


class KronyPT(Protocol):
    name = "krony-pt"
    forms = {"wikitext2": "tokens", "wikitext103": "tokens", "lambada": "passages"}
    window = 1024

    def plan(self, texts, tokenizer, context, stride, max_tokens):
        ids = _stream(texts, tokenizer, max_tokens)
        spans = disjoint_windows(len(ids), context)
        return Plan([ids], [Request(0, s) for s in spans], _mean_of_window_means, len(spans), context)


class HFStrided(Protocol):
    name = "hf-strided"
    forms = {"wikitext2": "raw", "wikitext103": "raw"}
    window = 1024

    def plan(self, texts, tokenizer, context, stride, max_tokens):
        ids = _stream(texts, tokenizer, max_tokens)
        stride = stride if stride is not None else context // 2  # the guide's 512 for GPT-2's 1024
        spans = strided_windows(len(ids), context, stride)
        return Plan([ids], [Request(0, s) for s in spans], _token_weighted, len(spans), stride)


class LambadaOpenAI(Protocol):
    name = "lambada-openai"
    forms = {"lambada": "openai"}

    def plan(self, texts, tokenizer, context, stride, max_tokens):
        pairs = _take_until((encode_pair(tokenizer, *split_last_word(text)) for text in texts),
                            lambda pair: len(pair[0]) + len(pair[1]), max_tokens)
        if any(len(t) > context for _, t in pairs):
            raise KronyptError(f"a LAMBADA target is longer than the context length {context}")
        sequences = [torch.tensor(c + t, dtype=torch.long) for c, t in pairs]
        requests = [Request(i, Span(max(0, len(seq) - context - 1), len(seq), len(t)))
                    for i, (seq, (_, t)) in enumerate(zip(sequences, pairs, strict=True))]
        return Plan(sequences, requests, _lambada_summary, len(pairs), greedy=True)


class WordPerplexity(Protocol):
    name = "word"
    forms = {"wikitext2": "pages", "wikitext103": "pages"}

    def plan(self, texts, tokenizer, context, stride, max_tokens):
        prefix = prefix_token_id(tokenizer)
        docs = _take_until((_encode(tokenizer, wikitext_detokenize(page)) for page in texts), len, max_tokens)
        n_docs = len(docs)
        sequences = [torch.tensor([prefix] + d, dtype=torch.long) for d in docs]
        requests = [Request(i, span) for i, seq in enumerate(sequences) for span in rolling_windows(len(seq), context)]
        words = [len(re.split(r"\s+", page)) for page in texts[:n_docs]]
        n_bytes = [len(page.encode("utf-8")) for page in texts[:n_docs]]

        def summarize(scores: list[SpanScore]) -> dict[str, float]:
            nll = sum(float(s.nll.sum()) for s in scores)
            return {"word_perplexity": math.exp(nll / sum(words)), "byte_perplexity": math.exp(nll / sum(n_bytes)),
                    "bits_per_byte": nll / sum(n_bytes) / math.log(2)}

        return Plan(sequences, requests, summarize, n_docs)


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (KronyPT(), HFStrided(), LambadaOpenAI(), WordPerplexity())}


def get_protocol(name: str) -> Protocol:
    """The protocol called `name`, or a KronyptError listing the valid names."""
    if name not in PROTOCOLS:
        raise KronyptError(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def split_last_word(text: str) -> tuple[str, str]:
    """LAMBADA's (context, target): the text up to its last space, and " " + the last word."""
    words = text.split(" ")
    return " ".join(words[:-1]), " " + words[-1]


def encode_pair(tokenizer: PreTrainedTokenizerBase, context: str, target: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, target) as lm-eval splits them for a causal LM.

    Trailing spaces of the context move to the target; the target's ids are those of context + target past
    the context's ids (so a merge across the boundary is scored as lm-eval scores it). An empty context
    becomes the prefix token.
    """
    if not context:
        target_ids = tokenizer(target, add_special_tokens=False, verbose=False)["input_ids"]
        prefix = prefix_token_id(tokenizer)
        return ([prefix], target_ids) if target_ids[0] != prefix else (target_ids[:1], target_ids[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, target = context[:-n_spaces], context[-n_spaces:] + target
    whole = _encode(tokenizer, context + target)
    context_ids = _encode(tokenizer, context)
    return context_ids, whole[len(context_ids):]


def prefix_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token lm-eval puts before a document: BOS if the tokenizer has one, else EOS."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise KronyptError("the tokenizer has neither a BOS nor an EOS token to start documents with")
    return token


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, verbose=False)["input_ids"]


def _stream(texts: list[str], tokenizer: PreTrainedTokenizerBase, max_tokens: int | None) -> torch.Tensor:
    ids = _encode(tokenizer, "\n\n".join(texts))
    return torch.tensor(ids[:max_tokens] if max_tokens is not None else ids, dtype=torch.long)


def _take_until(items: Iterable[T], size: Callable[[T], int], max_tokens: int | None) -> list[T]:
    """Whole items in order until their sizes reach `max_tokens` (all of them for None); stops consuming
    the iterable there, so a quick run only tokenises what it scores."""
    kept: list[T] = []
    total = 0
    for item in items:
        kept.append(item)
        total += size(item)
        if max_tokens is not None and total >= max_tokens:
            break
    return kept


def _mean_of_window_means(scores: list[SpanScore]) -> dict[str, float]:
    return {"perplexity": math.exp(sum(float(s.nll.mean()) for s in scores) / len(scores))}


def _token_weighted(scores: list[SpanScore]) -> dict[str, float]:
    total = sum(float(s.nll.sum()) for s in scores)
    return {"perplexity": math.exp(total / sum(s.nll.numel() for s in scores))}


def _lambada_summary(scores: list[SpanScore]) -> dict[str, float]:
    log_likelihoods = [-float(s.nll.sum()) for s in scores]
    return {"perplexity": math.exp(-sum(log_likelihoods) / len(scores)),
            "accuracy": sum(s.greedy for s in scores) / len(scores)}
