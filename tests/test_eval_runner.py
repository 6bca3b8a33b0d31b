"""The evaluation entry points: constant-logit models, dense vs kronypt models, records, refusals."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import pytest
import torch
from conftest import SHARED_DATA, TOKENIZER_DIR, requires_shared, tiny_config, tiny_model
from transformers.modeling_outputs import CausalLMOutput

import kronypt
from kronypt.errors import KronyptError
from kronypt.eval import (
    comparison_table,
    evaluate,
    evaluate_models,
    load_texts,
    plan_eval,
    run_plan,
    select_pairs,
)
from kronypt.eval.detokenize import wikitext_detokenize
from kronypt.models.tokenizers import load_tokenizer

pytestmark = requires_shared
VOCAB = 50257


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(TOKENIZER_DIR))


class ConstantLM(torch.nn.Module):
    """Every position gets the same logits: each token has probability 1/vocab."""

    def __init__(self, vocab_size=VOCAB):
        super().__init__()
        self.config = tiny_config(vocab_size=vocab_size)
        self.bias = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids):
        return CausalLMOutput(logits=self.bias.expand(*input_ids.shape, self.config.vocab_size))


def test_constant_logits_give_the_vocabulary_size_under_every_protocol(tokenizer):
    records = evaluate(ConstantLM(), tokenizer, ["wikitext2", "lambada"],
                       ["krony-pt", "hf-strided", "lambada-openai", "word"], data_dir=SHARED_DATA, stride=50,
                       max_tokens=700, batch_size=3, progress=False)
    values = {(r.task, r.protocol, r.metric): r for r in records}
    assert len(values) == 8
    for key in [("wikitext2", "krony-pt", "perplexity"), ("lambada", "krony-pt", "perplexity"),
                ("wikitext2", "hf-strided", "perplexity")]:
        assert values[key].value == pytest.approx(VOCAB, rel=1e-6)
    # Per-example and per-word metrics are the vocabulary size to the power tokens per example / word.
    lam = values["lambada", "lambada-openai", "perplexity"]
    assert lam.value == pytest.approx(VOCAB ** (lam.tokens / lam.examples), rel=1e-6)
    assert values["lambada", "lambada-openai", "accuracy"].value == 0.0  # argmax is token 0 ("!")
    page = load_texts("wikitext2", "test", "pages", SHARED_DATA)[0]
    n_tokens = len(tokenizer(wikitext_detokenize(page))["input_ids"])
    words, n_bytes = len(re.split(r"\s+", page)), len(page.encode())
    assert values["wikitext2", "word", "word_perplexity"].value == pytest.approx(VOCAB ** (n_tokens / words),
                                                                                 rel=1e-6)
    assert values["wikitext2", "word", "bits_per_byte"].value == pytest.approx(n_tokens * math.log2(VOCAB)
                                                                               / n_bytes, rel=1e-6)


def test_records_carry_the_protocol_and_counts(tokenizer):
    records = evaluate(ConstantLM(), tokenizer, ["wikitext2"], ["hf-strided"], data_dir=SHARED_DATA,
                       max_tokens=300, model_name="const", progress=False)
    (record,) = records
    fields = record.to_dict()
    for key in ("model", "params", "task", "split", "protocol", "metric", "value", "tokens"):
        assert key in fields
    assert (record.model, record.params, record.protocol, record.split) == ("const", 1, "hf-strided", "test")
    assert record.stride == 64 and record.context_length == 128  # default: half the context (GPT-2: 512)
    assert record.tokens == 299 and record.tokens_per_s > 0
    table = comparison_table(records)
    assert [c.header for c in table.columns][:4] == ["model", "params", "protocol", "wikitext2 ppl"]


def test_shorter_context_than_the_model(tokenizer):
    (record,) = evaluate(ConstantLM(), tokenizer, ["wikitext2"], ["krony-pt"], data_dir=SHARED_DATA, context=64,
                         max_tokens=300, progress=False)
    assert (record.context_length, record.examples, record.tokens) == (64, 5, 295)
    assert record.value == pytest.approx(VOCAB, rel=1e-6)
    with pytest.raises(KronyptError, match="context 256 must be between 2 and the context length of ConstantLM, 128"):
        evaluate(ConstantLM(), tokenizer, data_dir=SHARED_DATA, context=256, progress=False)


def test_validation_plan_is_reusable_for_periodic_evaluation(tokenizer):
    """The training loop plans once on the validation split and scores as often as it likes."""
    plan = plan_eval(tokenizer, "wikitext2", "krony-pt", context=128, split="validation",
                     data_dir=SHARED_DATA, max_tokens=400)
    model = tiny_model(seed=3).train()
    first, _ = run_plan(model, plan, progress=False)
    with torch.no_grad():
        model.transformer.wte.weight.mul_(2)
    second, _ = run_plan(model, plan, progress=False)
    assert model.training  # restored after scoring
    assert first["perplexity"] != pytest.approx(second["perplexity"], rel=1e-3)


def test_tokenizer_vocabulary_mismatch_is_refused(tokenizer):
    with pytest.raises(KronyptError, match="tokenizer has 50,257 tokens but the model's vocabulary has 1,000"):
        evaluate(ConstantLM(vocab_size=1000), tokenizer, data_dir=SHARED_DATA, progress=False)


@pytest.mark.parametrize(("tasks", "protocols", "split", "message"), [
    (["wikitext2"], ["ppl"], "test", "unknown protocol 'ppl'; choose from krony-pt, hf-strided, lambada-openai, word"),
    (["ptb"], ["krony-pt"], "test", "unknown task 'ptb'"),
    (["lambada"], ["hf-strided"], "test", "task lambada has no protocol among hf-strided; it supports krony-pt, "
                                  "lambada-openai"),
    (["lambada"], ["lambada-openai", "word"], "validation", "task lambada has no validation split under "
                                                            "lambada-openai; it has one under krony-pt"),
])
def test_bad_task_protocol_combinations(tokenizer, tasks, protocols, split, message):
    with pytest.raises(KronyptError, match=re.escape(message)):
        evaluate(ConstantLM(), tokenizer, tasks, protocols, split=split, data_dir=SHARED_DATA, progress=False)


def test_pairs_that_are_not_defined_are_skipped_with_a_warning(tokenizer):
    with pytest.warns(UserWarning, match=re.escape("skipping wikitext2 under lambada-openai (lambada-openai is "
                                                   "defined on lambada only)")):
        records = evaluate(ConstantLM(), tokenizer, ["wikitext2"], ["krony-pt", "lambada-openai"],
                           data_dir=SHARED_DATA, max_tokens=200, progress=False)
    assert [(r.task, r.protocol) for r in records] == [("wikitext2", "krony-pt")]
    assert select_pairs(["wikitext2", "lambada"]).pairs == [("wikitext2", "hf-strided"), ("lambada", "lambada-openai")]
    selection = select_pairs(["wikitext2", "lambada"], ["krony-pt", "lambada-openai"], split="validation")
    assert selection.pairs == [("wikitext2", "krony-pt"), ("lambada", "krony-pt")]
    assert [(t, p) for t, p, _ in selection.skipped] == [("wikitext2", "lambada-openai"), ("lambada", "lambada-openai")]
    # the usual product (each task under the protocols defined on it) skips quietly
    assert select_pairs(["wikitext2", "lambada"], ["hf-strided", "lambada-openai"]).skipped == []


def test_table_columns_name_the_split_the_metric_and_the_scored_tokens(tokenizer):
    records = evaluate(ConstantLM(), tokenizer, ["lambada"], ["krony-pt", "lambada-openai"], data_dir=SHARED_DATA,
                       max_tokens=300, model_name="const", progress=False)
    table = comparison_table(records)
    headers = [c.header for c in table.columns]
    assert headers == ["model", "params", "protocol", "lambada ppl", "lambada last-word ppl", "lambada acc",
                       "scored tokens", "tok/s"]
    assert table.title == "kronypt eval (test split), first 300 tokens per task only"  # not whole-task numbers
    assert all(r.max_tokens == 300 for r in records)
    cells = {c.header: list(c.cells) for c in table.columns}
    assert cells["protocol"] == ["krony-pt (128-token windows)", "lambada-openai"]  # tiny_config: 128 positions
    assert cells["lambada ppl"][1] == "-" and cells["lambada last-word ppl"][0] == "-"  # never mixed
    assert cells["scored tokens"] == [f"{r.tokens:,}" for r in records if r.metric == "perplexity"]
    mixed = comparison_table([*records[:1], replace(records[0], split="validation")])
    assert [c.header for c in mixed.columns][3:5] == ["lambada/test ppl", "lambada/validation ppl"]


def test_krony_pt_and_hf_strided_score_1024_token_windows_whatever_the_model_takes(tokenizer):
    """SPEC §5 defines both with 1024-token windows: a longer-context model must not score longer ones
    (its numbers would not compare with GPT-2's), a shorter one scores what it can and says so."""
    options = {"tasks": ["wikitext2"], "data_dir": SHARED_DATA, "max_tokens": 5000, "progress": False}
    notes = []
    records = evaluate(ConstantLM(), tokenizer, protocols=["krony-pt", "hf-strided", "word"], on_skip=notes.append,
                       **options)
    assert {r.protocol: r.context_length for r in records} == {"krony-pt": 128, "hf-strided": 128, "word": 128}
    assert notes == ["ConstantLM: its context is 128 tokens, so hf-strided and krony-pt score 128-token windows, "
                     "not the 1024 of their definition: not comparable with 1024-window numbers"]
    notes.clear()
    evaluate(ConstantLM(), tokenizer, protocols=["krony-pt"], on_skip=notes.append, **options)
    assert notes == ["ConstantLM: its context is 128 tokens, so krony-pt scores 128-token windows, not the 1024 of "
                     "its definition: not comparable with 1024-window numbers"]
    long = ConstantLM()
    long.config = tiny_config(n_positions=2048)
    notes.clear()
    records = evaluate(long, tokenizer, protocols=["krony-pt", "hf-strided", "word"], on_skip=notes.append, **options)
    windows = {r.protocol: (r.context_length, r.stride, r.examples) for r in records}
    assert windows["krony-pt"] == (1024, 1024, 5) and windows["hf-strided"][:2] == (1024, 512)
    assert windows["word"][0] == 2048 and notes == []  # lm-eval's rolling windows take the whole context
    assert list(comparison_table(records).columns[2].cells)[0] == "krony-pt"
    chosen = evaluate(long, tokenizer, protocols=["krony-pt"], context=256, **options)
    assert chosen[0].context_length == 256  # an explicit window wins


class PeekingLM(ConstantLM):
    """Each position's logits depend on the sequence's last token: an encoder, not a causal LM."""

    def forward(self, input_ids):
        logits = torch.nn.functional.one_hot(input_ids[:, -1:], self.config.vocab_size).float()
        return CausalLMOutput(logits=logits.expand(*input_ids.shape, self.config.vocab_size) + self.bias)


def test_a_model_that_sees_later_tokens_is_refused(tokenizer):
    with pytest.raises(KronyptError, match="peeker is not a causal language model: its predictions depend on later"):
        evaluate(PeekingLM(), tokenizer, ["lambada"], ["lambada-openai"], data_dir=SHARED_DATA, max_tokens=300,
                 model_name="peeker", progress=False)
    short = tiny_model(n_positions=4)  # the check fits in a context under its usual 8 tokens
    records = evaluate(short, tokenizer, ["wikitext2"], ["krony-pt"], data_dir=SHARED_DATA, max_tokens=50,
                       on_skip=lambda message: None, progress=False)
    assert records[0].context_length == 4


def test_a_narrow_table_wraps_names_and_numbers_instead_of_cutting_them(tokenizer):
    from rich.console import Console

    records = evaluate(ConstantLM(), tokenizer, ["lambada"], ["krony-pt", "lambada-openai"], data_dir=SHARED_DATA,
                       max_tokens=300, model_name="models/a-rather-long-folder-name/gpt2-81M-healed", progress=False)
    console = Console(width=60, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(comparison_table(records))
    text = console.export_text()
    assert "…" not in text
    assert "gpt2-81M-heal" in text.replace("\n", "").replace("│", "").replace(" ", "")


def test_kronypt_and_dense_models_share_the_entry_point(tmp_path, tokenizer):
    """A compressed model, its `to_dense` export and folders of both evaluate alike through one code path."""
    model = tiny_model(seed=4, initializer_range=0.2)
    kronypt.compress_(model, kronypt.CompressionConfig(a_shape=(16, 8), init="random"), progress=False)
    dense = kronypt.to_dense(model)
    options = {"tasks": ["lambada"], "protocols": ["lambada-openai"], "data_dir": SHARED_DATA,
               "max_tokens": 500, "progress": False}
    krony, _ = evaluate(model, tokenizer, **options)  # perplexity, accuracy
    plain, _ = evaluate(dense, tokenizer, **options)
    assert type(model).__name__ == "KronyGPT2LMHeadModel" and type(dense).__name__ == "GPT2LMHeadModel"
    assert krony.params < plain.params
    assert krony.value == pytest.approx(plain.value, rel=1e-5)

    model.save_pretrained(tmp_path / "krony")
    dense.save_pretrained(tmp_path / "dense")
    from_folders = evaluate_models([str(tmp_path / "krony"), str(tmp_path / "dense")],
                                   tokenizer=str(TOKENIZER_DIR), **options)
    ppl_records = [r for r in from_folders if r.metric == "perplexity"]
    assert [r.params for r in ppl_records] == [krony.params, plain.params]
    for record in ppl_records:
        assert record.value == pytest.approx(plain.value, rel=1e-5)


def test_lm_eval_bridge_without_lm_eval_names_the_extra(monkeypatch):
    import sys

    from kronypt.eval import lm_eval_model

    monkeypatch.setitem(sys.modules, "lm_eval.models.huggingface", None)  # as if lm-eval were not installed
    with pytest.raises(KronyptError, match=r"needs lm_eval\.models\.huggingface: pip install 'kronypt\[eval\]'"):
        lm_eval_model(tiny_model(), load_tokenizer(str(TOKENIZER_DIR)))
