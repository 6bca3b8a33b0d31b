"""Cross-check against lm-evaluation-harness itself (the optional `eval` extra); skipped without lm-eval.

The `word` and `lambada-openai` protocols must give lm-eval's numbers: per-document rolling log-likelihoods
from `HFLM.loglikelihood_rolling`, per-example (log-likelihood, greedy) from `HFLM.loglikelihood`, and the
same detokenised text, all on the same tiny model through `kronypt.eval.lm_eval_model`.
"""

from __future__ import annotations

import math

import pytest
from conftest import SHARED_DATA, TOKENIZER_DIR, requires_shared, tiny_model

from kronypt.eval import get_protocol, lm_eval_model, load_texts, run_plan
from kronypt.eval.detokenize import wikitext_detokenize
from kronypt.models.tokenizers import load_tokenizer

pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.metrics import bits_per_byte, weighted_perplexity  # noqa: E402
from lm_eval.tasks.wikitext.preprocess_wikitext import process_results, wikitext_detokenizer  # noqa: E402

pytestmark = requires_shared
CONTEXT = 128


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(TOKENIZER_DIR))


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=5, initializer_range=0.2)


def _per_sequence_nll(plan, scores):
    totals = [0.0] * len(plan.sequences)
    for request, score in zip(plan.requests, scores, strict=True):
        totals[request.sequence] += float(score.nll.sum())
    return totals


def test_detokenizer_is_lm_evals_on_every_test_article():
    for page in load_texts("wikitext2", "test", "pages", SHARED_DATA):
        assert wikitext_detokenize(page) == wikitext_detokenizer({"page": page})


def test_word_protocol_matches_hflm_loglikelihood_rolling(model, tokenizer):
    pages = [load_texts("wikitext2", "test", "pages", SHARED_DATA)[i] for i in (0, 4)]
    plan = get_protocol("word").plan(pages, tokenizer, CONTEXT, None, None)
    metrics, run = run_plan(model, plan, batch_size=3, progress=False)
    ours = [-nll for nll in _per_sequence_nll(plan, run.scores)]

    lm = lm_eval_model(model, tokenizer, batch_size=3)
    requests = [Instance("loglikelihood_rolling", {"page": p}, (wikitext_detokenizer({"page": p}),), i)
                for i, p in enumerate(pages)]
    theirs = lm.loglikelihood_rolling(requests, disable_tqdm=True)
    assert ours == pytest.approx(theirs, rel=1e-5)

    items = [process_results({"page": p}, [ll]) for p, ll in zip(pages, theirs, strict=True)]  # (loglikelihood, count)
    for metric in ("word_perplexity", "byte_perplexity"):
        assert metrics[metric] == pytest.approx(weighted_perplexity([i[metric] for i in items]), rel=1e-4)
    assert metrics["bits_per_byte"] == pytest.approx(bits_per_byte([i["bits_per_byte"] for i in items]), rel=1e-4)


def test_lambada_openai_matches_hflm_loglikelihood(tokenizer):
    short = tiny_model(seed=6, initializer_range=0.2, n_positions=64)  # left truncation on long passages
    texts = load_texts("lambada", "test", "openai", SHARED_DATA)[:24]
    plan = get_protocol("lambada-openai").plan(texts, tokenizer, 64, None, None)
    metrics, run = run_plan(short, plan, batch_size=5, progress=False)

    lm = lm_eval_model(short, tokenizer, batch_size=5)
    requests = [Instance("loglikelihood", {"text": t}, (" ".join(t.split(" ")[:-1]), " " + t.split(" ")[-1]), i)
                for i, t in enumerate(texts)]
    theirs = lm.loglikelihood(requests, disable_tqdm=True)
    assert [-float(s.nll.sum()) for s in run.scores] == pytest.approx([ll for ll, _ in theirs], rel=1e-5)
    assert [s.greedy for s in run.scores] == [greedy for _, greedy in theirs]
    assert metrics["perplexity"] == pytest.approx(math.exp(-sum(ll for ll, _ in theirs) / len(texts)), rel=1e-4)
