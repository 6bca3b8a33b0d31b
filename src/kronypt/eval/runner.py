"""Evaluate models on named tasks under named protocols: the entry point for the CLI and the training loop.

`evaluate` takes a model object (dense GPT-2, distilgpt2, a kronypt model, any causal LM whose forward
returns `.logits`) and a tokenizer; `evaluate_models` loads each model by hub id or folder first. For periodic
validation during training, build the `Plan` once with `plan_eval` (validation split) and call `run_plan`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from kronypt.errors import KronyptError
from kronypt.eval.corpora import TASKS, check_available, load_texts
from kronypt.eval.protocols import PROTOCOLS, Plan, get_protocol
from kronypt.eval.results import EvalRecord
from kronypt.eval.scoring import ScoreRun, model_device, score_requests
from kronypt.models import count_params
from kronypt.models.loading import load_model, load_tokenizer, local_model_dir


def context_length(model: torch.nn.Module) -> int:
    """The longest input the model accepts (GPT-2: `n_positions`, 1024)."""
    config = model.config
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 1:
            return value
    raise KronyptError(f"cannot tell the context length of {type(model).__name__}: its config has no "
                       "n_positions / max_position_embeddings; pass context_length")


def check_vocab(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
    """Refuse a tokenizer that emits ids the model has no logits for."""
    vocab = model.config.vocab_size
    if len(tokenizer) > vocab:
        raise KronyptError(f"tokenizer has {len(tokenizer):,} tokens but the model's vocabulary has {vocab:,}: "
                           "they do not belong together (pass the model's own tokenizer)")


def task_protocol_pairs(tasks: Sequence[str], protocols: Sequence[str]) -> list[tuple[str, str]]:
    """Every (task, protocol) with the protocol defined on the task; each task and protocol must be used."""
    for name in protocols:
        get_protocol(name)
    for task in tasks:
        if task not in TASKS:
            raise KronyptError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    pairs = [(t, p) for t in tasks for p in protocols if t in PROTOCOLS[p].forms]
    for task in tasks:
        if not any(t == task for t, _ in pairs):
            options = [p.name for p in PROTOCOLS.values() if task in p.forms]
            raise KronyptError(f"task {task} has no protocol among {', '.join(protocols)}; "
                               f"it supports {', '.join(options)}")
    for name in protocols:
        if not any(p == name for _, p in pairs):
            raise KronyptError(f"protocol {name} applies to none of {', '.join(tasks)}; "
                               f"it supports {', '.join(PROTOCOLS[name].forms)}")
    return pairs


def plan_eval(
    tokenizer: PreTrainedTokenizerBase,
    task: str,
    protocol: str,
    context: int,
    split: str = "test",
    data_dir: str | Path | None = None,
    stride: int | None = None,
    max_tokens: int | None = None,
) -> Plan:
    """Load and tokenise one task's texts and lay out its spans under `protocol` (no model needed)."""
    proto = get_protocol(protocol)
    if task not in proto.forms:
        raise KronyptError(f"protocol {protocol} is defined on {', '.join(proto.forms)}, not {task!r}")
    if max_tokens is not None and max_tokens < 2:
        raise KronyptError(f"max_tokens must be at least 2, got {max_tokens}")
    texts = load_texts(task, split, proto.forms[task], data_dir)
    plan = proto.plan(texts, tokenizer, context, stride, max_tokens)
    if not plan.requests:
        raise KronyptError(f"nothing to score for {task} ({split}) under {protocol}")
    return plan


def run_plan(model: torch.nn.Module, plan: Plan, batch_size: int | None = None,
             progress: bool = True, desc: str = "eval") -> tuple[dict[str, float], ScoreRun]:
    """Score a plan with `model`; returns {metric: value} and the raw run (scores, tokens, time)."""
    was_training = model.training
    model.eval()
    try:
        run = score_requests(model, plan.sequences, plan.requests, batch_size=batch_size, greedy=plan.greedy,
                             progress=progress, desc=desc)
    finally:
        model.train(was_training)
    return plan.summarize(run.scores), run


def evaluate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    tasks: Sequence[str] = ("wikitext2",),
    protocols: Sequence[str] = ("hf-strided",),
    split: str = "test",
    data_dir: str | Path | None = None,
    stride: int | None = None,
    batch_size: int | None = None,
    max_tokens: int | None = None,
    context: int | None = None,
    model_name: str | None = None,
    progress: bool = True,
) -> list[EvalRecord]:
    """Evaluate one model on every (task, protocol) pair that is defined; one record per metric."""
    check_vocab(model, tokenizer)
    pairs = task_protocol_pairs(tasks, protocols)
    longest = context_length(model)
    if context is not None and not 2 <= context <= longest:
        raise KronyptError(f"context {context} must be between 2 and the model's context length {longest}")
    context = context or longest
    name = model_name or getattr(model.config, "_name_or_path", "") or type(model).__name__
    params = count_params(model)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.") if params else "float32"
    records = []
    for task, protocol in pairs:
        plan = plan_eval(tokenizer, task, protocol, context, split, data_dir, stride, max_tokens)
        metrics, run = run_plan(model, plan, batch_size, progress, desc=f"{task} {protocol}")
        for metric, value in metrics.items():
            records.append(EvalRecord(
                model=name, params=params, task=task, split=split, protocol=protocol, metric=metric, value=value,
                tokens=plan.scored_tokens, examples=plan.examples, context_length=context, stride=plan.stride,
                tokens_per_s=run.input_tokens / run.seconds if run.seconds > 0 else float("nan"),
                seconds=run.seconds, dtype=dtype, device=str(model_device(model))))
    return records


def evaluate_models(
    names: Sequence[str],
    tasks: Sequence[str] = ("wikitext2",),
    protocols: Sequence[str] = ("hf-strided",),
    tokenizer: str | None = None,
    dtype: str | None = None,
    device: str | None = None,
    split: str = "test",
    data_dir: str | Path | None = None,
    on_model_done: Callable[[list[EvalRecord]], None] | None = None,
    **options,
) -> list[EvalRecord]:
    """Load each model (hub id or folder) with its tokenizer (or `tokenizer`) and `evaluate` it.

    Bad task/protocol combinations and missing data are refused before any model is loaded.
    `on_model_done` gets the records so far after each model (e.g. to save them as they come).
    """
    for task, protocol in task_protocol_pairs(tasks, protocols):
        check_available(task, split, PROTOCOLS[protocol].forms[task], data_dir)
    folders = {name: local_model_dir(name) for name in names}  # a mistyped folder fails now, not later
    records: list[EvalRecord] = []
    for name in dict.fromkeys(names):  # each model once: table rows are keyed by model name
        try:
            tok = load_tokenizer(tokenizer or name)
        except KronyptError as exc:
            if tokenizer is not None:
                raise
            if folders[name] is None:  # a hub id: most likely mistyped rather than a tokenizer problem
                raise KronyptError(f"cannot load model {name!r}: no such local folder, and the hub has no "
                                   f"tokenizer for it ({exc})") from None
            raise KronyptError(f"{exc}; pass a tokenizer (--tokenizer)") from None  # a folder saved without one
        model = load_model(name, dtype=dtype, device=device)
        records += evaluate(model, tok, tasks, protocols, split=split, data_dir=data_dir, model_name=name, **options)
        del model
        if on_model_done is not None:
            on_model_done(records)
    return records
