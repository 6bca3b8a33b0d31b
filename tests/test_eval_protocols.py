"""Each protocol against a plain reference loop on a tiny GPT-2 over the real WikiText-2 and LAMBADA files.

The tiny model is random but "peaky" (initializer_range 0.2): its per-token losses vary by nats and depend
on context, so a wrong window boundary, a lost token or a different weighting moves the result far more
than the 1e-4 tolerance.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED_DATA, TOKENIZER_DIR, requires_shared, tiny_config, tiny_model
from transformers.modeling_outputs import CausalLMOutput

from kronypt.eval import evaluate, load_texts
from kronypt.eval.detokenize import wikitext_detokenize
from kronypt.models.tokenizers import load_tokenizer

pytestmark = requires_shared
RTOL = 1e-4
CONTEXT = 128  # the tiny model's n_positions


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(TOKENIZER_DIR))


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=1, initializer_range=0.2)


def _metric(records, protocol, metric):
    (value,) = [r.value for r in records if r.protocol == protocol and r.metric == metric]
    return value


def _stream(tokenizer, texts, n_tokens):
    """The first n_tokens of the joined texts (tokenising a generous prefix of the text, for speed)."""
    ids = tokenizer("\n\n".join(texts)[:20 * n_tokens], verbose=False)["input_ids"]
    assert len(ids) > n_tokens + 100
    return torch.tensor(ids[:n_tokens])


@torch.no_grad()
def _guide_loop(model, ids, stride, token_weighted):
    """The Hugging Face perplexity guide, written as in the guide (labels=-100 masking, model's own loss)."""
    seq_len, nlls, counts, prev_end = len(ids), [], [], 0
    for begin in range(0, seq_len, stride):
        end = min(begin + CONTEXT, seq_len)
        trg_len = end - prev_end
        input_ids = ids[begin:end][None]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        nlls.append(model(input_ids, labels=target_ids).loss.double())
        counts.append(int((target_ids[:, 1:] != -100).sum()))
        prev_end = end
        if end == seq_len:
            break
    if token_weighted:
        return math.exp(sum(n * c for n, c in zip(nlls, counts, strict=True)) / sum(counts))
    return math.exp(torch.stack(nlls).mean())


def test_krony_pt_matches_the_papers_loop_with_a_short_last_window(model, tokenizer):
    n_tokens = 5 * CONTEXT + 37  # five full windows and a short one
    texts = load_texts("wikitext2", "test", "tokens", SHARED_DATA)
    records = evaluate(model, tokenizer, ["wikitext2"], ["krony-pt"], data_dir=SHARED_DATA, max_tokens=n_tokens,
                       progress=False)
    reference = _guide_loop(model, _stream(tokenizer, texts, n_tokens), stride=CONTEXT, token_weighted=False)
    assert _metric(records, "krony-pt", "perplexity") == pytest.approx(reference, rel=RTOL)
    assert records[0].tokens == n_tokens - 6  # the first token of each of the 6 windows is not predicted
    assert records[0].examples == 6


def test_krony_pt_lambada_joins_passages(model, tokenizer):
    n_tokens = 3 * CONTEXT + 5
    records = evaluate(model, tokenizer, ["lambada"], ["krony-pt"], data_dir=SHARED_DATA, max_tokens=n_tokens,
                       progress=False)
    passages = (SHARED_DATA / "lambada" / "lambada_test_plain_text.txt").read_text(encoding="utf-8").splitlines()
    reference = _guide_loop(model, _stream(tokenizer, passages, n_tokens), stride=CONTEXT, token_weighted=False)
    assert _metric(records, "krony-pt", "perplexity") == pytest.approx(reference, rel=RTOL)


def test_hf_strided_matches_the_guide_loop_token_weighted(model, tokenizer):
    n_tokens, stride = 4 * CONTEXT + 21, 48
    texts = load_texts("wikitext2", "test", "raw", SHARED_DATA)
    records = evaluate(model, tokenizer, ["wikitext2"], ["hf-strided"], data_dir=SHARED_DATA, stride=stride,
                       max_tokens=n_tokens, batch_size=3, progress=False)
    ids = _stream(tokenizer, texts, n_tokens)
    reference = _guide_loop(model, ids, stride=stride, token_weighted=True)
    assert _metric(records, "hf-strided", "perplexity") == pytest.approx(reference, rel=RTOL)
    assert records[0].tokens == n_tokens - 1  # every token after the first is scored exactly once
    assert records[0].examples == math.ceil((n_tokens - CONTEXT) / stride) + 1


@torch.no_grad()
def _lambada_reference(model, tokenizer, texts, context):
    """lm-eval's lambada_openai, one example at a time: sum of target log-probs and greedy match."""
    log_likelihoods, hits = [], []
    for text in texts:
        prompt, last = text.rsplit(" ", 1)
        context_ids = tokenizer(prompt)["input_ids"]
        whole = tokenizer(prompt + " " + last)["input_ids"]
        n_target = len(whole) - len(context_ids)
        inputs = torch.tensor(whole[-(context + 1):][:-1])[None]  # left-truncated like lm-eval
        logp = F.log_softmax(model(inputs).logits[0, -n_target:].double(), dim=-1)
        targets = torch.tensor(whole[-n_target:])
        log_likelihoods.append(float(logp.gather(1, targets[:, None]).sum()))
        hits.append(bool((logp.argmax(-1) == targets).all()))
    return math.exp(-sum(log_likelihoods) / len(texts)), sum(hits) / len(hits)


class BigramLM(torch.nn.Module):
    """A count-based bigram model of some texts (any causal LM with `.logits` goes through the same code):
    its greedy guesses are often right, so accuracy is neither 0 nor 1."""

    def __init__(self, token_lists, vocab_size):
        super().__init__()
        self.config = tiny_config(vocab_size=vocab_size)
        self.successors: dict[int, Counter] = {}
        for ids in token_lists:
            for a, b in pairwise(ids):
                self.successors.setdefault(a, Counter())[b] += 1

    def forward(self, input_ids):
        logits = torch.zeros(*input_ids.shape, self.config.vocab_size)
        for row, col in torch.nonzero(torch.ones_like(input_ids)).tolist():
            for token, count in self.successors.get(int(input_ids[row, col]), {}).items():
                logits[row, col, token] = math.log1p(count)
        return CausalLMOutput(logits=logits)


def test_lambada_openai_matches_lm_evals_definition(tokenizer):
    short = tiny_model(seed=2, initializer_range=0.2, n_positions=64)  # many passages exceed 65 tokens
    texts = load_texts("lambada", "test", "openai", SHARED_DATA)
    max_tokens = 2000
    records = evaluate(short, tokenizer, ["lambada"], ["lambada-openai"], data_dir=SHARED_DATA,
                       max_tokens=max_tokens, batch_size=5, progress=False)
    n_examples = records[0].examples
    lengths = [len(tokenizer(t)["input_ids"]) for t in texts[:n_examples]]
    assert sum(lengths[:-1]) < max_tokens <= sum(lengths)  # whole examples until the budget is reached
    assert max(lengths) > 64 + 1  # the left truncation is exercised
    ppl, accuracy = _lambada_reference(short, tokenizer, texts[:n_examples], context=64)
    assert _metric(records, "lambada-openai", "perplexity") == pytest.approx(ppl, rel=RTOL)
    assert _metric(records, "lambada-openai", "accuracy") == accuracy


def test_lambada_openai_greedy_accuracy(tokenizer):
    texts = load_texts("lambada", "test", "openai", SHARED_DATA)[:40]
    bigram = BigramLM([tokenizer(t)["input_ids"] for t in texts], len(tokenizer))
    records = evaluate(bigram, tokenizer, ["lambada"], ["lambada-openai"], data_dir=SHARED_DATA,
                       max_tokens=sum(len(tokenizer(t)["input_ids"]) for t in texts), batch_size=8, progress=False)
    ppl, accuracy = _lambada_reference(bigram, tokenizer, texts, context=CONTEXT)
    assert 0 < accuracy < 1
    assert _metric(records, "lambada-openai", "accuracy") == pytest.approx(accuracy, abs=1e-12)
    assert _metric(records, "lambada-openai", "perplexity") == pytest.approx(ppl, rel=RTOL)


@torch.no_grad()
def _rolling_reference(model, tokenizer, page):
    """Total log-likelihood of a page: targets in chunks of CONTEXT, each read with the CONTEXT tokens
    before the chunk's last target (the first chunk from the EOS prefix on)."""
    ids = [tokenizer.eos_token_id] + tokenizer(wikitext_detokenize(page))["input_ids"]
    total = 0.0
    for first in range(1, len(ids), CONTEXT):
        last = min(first + CONTEXT, len(ids))
        inputs = torch.tensor(ids[max(0, last - 1 - CONTEXT):last - 1])[None]
        logp = F.log_softmax(model(inputs).logits[0, -(last - first):].double(), dim=-1)
        total += float(logp.gather(1, torch.tensor(ids[first:last])[:, None]).sum())
    return total


def test_word_perplexity_matches_rolling_reference(model, tokenizer):
    pages = load_texts("wikitext2", "test", "pages", SHARED_DATA)
    records = evaluate(model, tokenizer, ["wikitext2"], ["word"], data_dir=SHARED_DATA, max_tokens=2,
                       progress=False)
    assert records[0].examples == 1  # max_tokens keeps whole articles, at least one
    page = pages[0]
    log_likelihood = _rolling_reference(model, tokenizer, page)
    words, n_bytes = len(re.split(r"\s+", page)), len(page.encode("utf-8"))
    assert _metric(records, "word", "word_perplexity") == pytest.approx(math.exp(-log_likelihood / words), rel=RTOL)
    assert _metric(records, "word", "byte_perplexity") == pytest.approx(math.exp(-log_likelihood / n_bytes),
                                                                        rel=RTOL)
    assert _metric(records, "word", "bits_per_byte") == pytest.approx(-log_likelihood / n_bytes / math.log(2),
                                                                      rel=RTOL)
    assert records[0].tokens == len(tokenizer(wikitext_detokenize(page))["input_ids"])
