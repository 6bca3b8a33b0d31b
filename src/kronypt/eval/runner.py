"""Evaluate models on named tasks under named protocols: the entry point for the CLI and the training loop.

`evaluate` takes a model object (dense GPT-2, distilgpt2, a kronypt model, any causal LM whose forward
returns `.logits`) and a tokenizer; `evaluate_models` loads each model by hub id or folder first. For periodic
validation during training, build the `Plan` once with `plan_eval` (validation split) and call `run_plan`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PretrainedConfig
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from kronypt.errors import KronyptError
from kronypt.eval.corpora import DEFAULT_PROTOCOLS, SPLITS, TASKS, available_splits, check_available, load_texts
from kronypt.eval.protocols import PROTOCOLS, Plan, get_protocol
from kronypt.eval.results import EvalRecord
from kronypt.eval.scoring import ScoreRun, model_device, score_requests
from kronypt.models import count_params
from kronypt.models.configuration import config_context_length
from kronypt.models.loading import load_config, load_model, parse_dtype
from kronypt.models.sources import local_model_dir
from kronypt.models.tokenizers import check_tokenizer_fits, load_tokenizer, saved_tokenizer, tokenizer_id


def context_length(model: torch.nn.Module) -> int:
    """The longest input the model accepts (GPT-2: `n_positions`, 1024)."""
    found = config_context_length(model.config)
    if found is None:
        raise KronyptError(f"cannot tell the context length of {type(model).__name__}: its config has no "
                           "n_positions / max_position_embeddings; pass context_length")
    return found


def _check_context(context: int | None, longest: int, name: str) -> None:
    if context is not None and not 2 <= context <= longest:
        raise KronyptError(f"context {context} must be between 2 and the context length of {name}, {longest}")


def check_vocab(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
    """Refuse a tokenizer that emits ids the model has no logits for."""
    check_tokenizer_fits(tokenizer, model.config.vocab_size)


@dataclass(frozen=True)
class PairSelection:
    """The (task, protocol) pairs to run, and those asked for that cannot run (task, protocol, why): every
    pair whose corpus lacks the split, and undefined pairs that leave a task or a protocol with nothing."""

    pairs: list[tuple[str, str]]
    skipped: list[tuple[str, str, str]]

    def warning(self) -> str | None:
        """One line naming every skipped pair, or None."""
        if not self.skipped:
            return None
        return "skipping " + "; ".join(f"{task} under {protocol} ({why})" for task, protocol, why in self.skipped)


def select_pairs(tasks: Sequence[str], protocols: Sequence[str] | None = None,
                 split: str = "test") -> PairSelection:
    """The (task, protocol) pairs of `tasks` x `protocols` that are defined on `split`.

    Without protocols each task runs under its default (`DEFAULT_PROTOCOLS`). A pair whose protocol is not
    defined on the task, or whose corpus has no such split (lambada-openai: test only), is skipped; it is
    listed in `skipped` (for one warning) when it lacks the split or when its task or its protocol runs
    nowhere else. Unknown names, and nothing left to run, are errors.
    """
    if protocols is not None and not protocols:
        raise KronyptError("no protocols given; pass None for each task's default")
    for name in protocols or ():
        get_protocol(name)
    for task in tasks:
        if task not in TASKS:
            raise KronyptError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    if split not in SPLITS:
        raise KronyptError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    tasks = list(dict.fromkeys(tasks))
    if protocols is None:
        wanted = [(t, DEFAULT_PROTOCOLS[t]) for t in tasks]
    else:
        wanted = [(t, p) for t in tasks for p in dict.fromkeys(protocols)]
    pairs, rejected = [], []  # rejected: (task, protocol, why, whether only the split is missing)
    for task, name in wanted:
        forms = PROTOCOLS[name].forms
        if task not in forms:
            rejected.append((task, name, f"{name} is defined on {', '.join(forms)} only", False))
        elif split not in available_splits(task, forms[task]):
            has = ", ".join(available_splits(task, forms[task]))
            rejected.append((task, name, f"no {split} split; it has {has}", True))
        else:
            pairs.append((task, name))
    if not pairs:
        raise KronyptError("nothing to evaluate: " + "; ".join(_why_none(task, [p for t, p in wanted if t == task],
                                                                          split) for task in tasks))
    # Each task runs under the protocols defined on it: a pair outside that product (wikitext2 under
    # lambada-openai when lambada runs it) is only worth a word when it leaves a task or a protocol unused.
    ran_tasks, ran_protocols = {t for t, _ in pairs}, {p for _, p in pairs}
    skipped = [(t, p, why) for t, p, why, lacks_split in rejected
               if lacks_split or t not in ran_tasks or p not in ran_protocols]
    return PairSelection(pairs, skipped)


def _why_none(task: str, protocols: list[str], split: str) -> str:
    supported = [p.name for p in PROTOCOLS.values() if task in p.forms]
    defined = [p for p in protocols if p in supported]
    if not defined:
        return f"task {task} has no protocol among {', '.join(protocols)}; it supports {', '.join(supported)}"
    with_split = [p for p in supported if split in available_splits(task, PROTOCOLS[p].forms[task])]
    return (f"task {task} has no {split} split under {', '.join(defined)}"
            + (f"; it has one under {', '.join(with_split)}" if with_split else ""))


def task_protocol_pairs(tasks: Sequence[str], protocols: Sequence[str] | None = None,
                        split: str = "test") -> list[tuple[str, str]]:
    """The pairs `select_pairs` would run (skipped ones dropped silently)."""
    return select_pairs(tasks, protocols, split).pairs


def model_config(name_or_path: str) -> PretrainedConfig:
    """The config of a model to evaluate (hub id or local folder, any architecture: evaluation runs any
    causal LM), read before any model is loaded, so that a mistyped folder, an unreadable config.json or an
    unreachable hub id fails before the first evaluation."""
    return load_config(name_or_path)


def check_causal(model: torch.nn.Module, name: str = "the model") -> None:
    """Refuse a model whose predictions see later tokens (an encoder such as BERT loaded as a "causal LM"
    without `is_decoder`): every perplexity would be meaningless. Two forward passes over 8 tokens that
    differ in the last one only (fewer where the context is shorter); a causal model's other outputs are
    identical."""
    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    length = min(8, config_context_length(model.config) or 8)
    if vocab < 2 or length < 2:
        return
    device = model_device(model)
    ids = torch.arange(length, device=device).remainder(vocab).unsqueeze(0)
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % vocab
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            first, second = (model(input_ids=x).logits[0, :-1].float() for x in (ids, changed))
    finally:
        model.train(was_training)
    if not torch.allclose(first, second, rtol=1e-3, atol=1e-3):
        raise KronyptError(f"{name} is not a causal language model: its predictions depend on later tokens (an "
                           "encoder such as BERT?); perplexity and LAMBADA need a left-to-right model")


def _report(message: str | None, on_skip: Callable[[str], None] | None) -> None:
    if message is None:
        return
    if on_skip is None:
        warnings.warn(message, stacklevel=3)
    else:
        on_skip(message)


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
    protocols: Sequence[str] | None = None,
    split: str = "test",
    data_dir: str | Path | None = None,
    stride: int | None = None,
    batch_size: int | None = None,
    max_tokens: int | None = None,
    context: int | None = None,
    model_name: str | None = None,
    progress: bool = True,
    on_skip: Callable[[str], None] | None = None,
) -> list[EvalRecord]:
    """Evaluate one model on every (task, protocol) pair of `select_pairs`; one record per metric.

    `protocols=None` runs each task under its default (`DEFAULT_PROTOCOLS`). Pairs that are not defined
    (protocol or split) are skipped: `on_skip` gets one line naming them (default: a `UserWarning`).
    """
    check_vocab(model, tokenizer)
    selection = select_pairs(tasks, protocols, split)
    _report(selection.warning(), on_skip)
    pairs = selection.pairs
    longest = context_length(model)
    name = model_name or getattr(model.config, "_name_or_path", "") or type(model).__name__
    _check_context(context, longest, name)
    check_causal(model, name)
    params = count_params(model)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.") if params else "float32"
    vocabulary = tokenizer_id(tokenizer)
    records = []
    for task, protocol in pairs:
        window = context or PROTOCOLS[protocol].context_for(longest)
        plan = plan_eval(tokenizer, task, protocol, window, split, data_dir, stride, max_tokens)
        metrics, run = run_plan(model, plan, batch_size, progress, desc=f"{task} {protocol}")
        for metric, value in metrics.items():
            records.append(EvalRecord(
                model=name, params=params, task=task, split=split, protocol=protocol, metric=metric, value=value,
                tokens=plan.scored_tokens, examples=plan.examples, context_length=window, stride=plan.stride,
                tokens_per_s=run.input_tokens / run.seconds if run.seconds > 0 else float("nan"),
                seconds=run.seconds, dtype=dtype, device=str(model_device(model)), tokenizer=vocabulary,
                max_tokens=max_tokens))
    short = sorted({p for _, p in pairs if context is None and (PROTOCOLS[p].window or 0) > longest})
    if short:  # said with the numbers it concerns (and not before an error that leaves none)
        _report(f"{name}: its context is {longest} tokens, so {' and '.join(short)} "
                f"score{'s' if len(short) == 1 else ''} {longest}-token windows, not the 1024 of "
                f"{'its' if len(short) == 1 else 'their'} definition: not comparable with 1024-window numbers",
                on_skip)
    return records


def evaluate_models(
    names: Sequence[str],
    tasks: Sequence[str] = ("wikitext2",),
    protocols: Sequence[str] | None = None,
    tokenizer: str | None = None,
    dtype: str | None = None,
    device: str | torch.device | None = None,
    split: str = "test",
    data_dir: str | Path | None = None,
    on_model_done: Callable[[list[EvalRecord]], None] | None = None,
    on_skip: Callable[[str], None] | None = None,
    **options,
) -> list[EvalRecord]:
    """Load each model (hub id or folder) with its tokenizer (or `tokenizer`) and `evaluate` it.

    Everything that can be checked is checked before the first model is evaluated: tasks, protocols, split,
    data files, dtype, every model's config (a mistyped folder or hub id fails here) and every tokenizer.
    Skipped pairs are reported once through `on_skip` (default: a `UserWarning`). `on_model_done` gets the
    records so far after each model (e.g. to save them as they come).
    """
    selection = select_pairs(tasks, protocols, split)
    for task, protocol in selection.pairs:
        check_available(task, split, PROTOCOLS[protocol].forms[task], data_dir)
    parse_dtype(dtype)
    names = list(dict.fromkeys(names))  # each model once: table rows are keyed by model name
    folders = {name: local_model_dir(name) for name in names}  # a mistyped folder fails now, not later
    configs = {name: model_config(name) for name in names}
    shared = load_tokenizer(tokenizer) if tokenizer is not None else None
    tokenizers = {name: shared if shared is not None else _own_tokenizer(name, folders[name]) for name in names}
    for name in names:
        vocab = getattr(configs[name], "vocab_size", None)
        if isinstance(vocab, int):
            check_tokenizer_fits(tokenizers[name], vocab, saved_tokenizer(name) if shared is not None else None)
        longest = config_context_length(configs[name])
        if longest is not None:
            _check_context(options.get("context"), longest, name)
    skipped = selection.warning()
    _report(skipped, on_skip)

    def notes(message: str) -> None:  # the skipped pairs were reported once, above; a model's own notes pass
        if message != skipped:
            _report(message, on_skip)

    records: list[EvalRecord] = []
    for name in names:
        model = load_model(name, dtype=dtype, device=device)
        records += evaluate(model, tokenizers[name], tasks, protocols, split=split, data_dir=data_dir,
                            model_name=name, on_skip=notes, **options)
        del model
        if on_model_done is not None:
            on_model_done(records)
    return records


def _own_tokenizer(name: str, folder: Path | None) -> PreTrainedTokenizerBase:
    try:
        return load_tokenizer(name)
    except KronyptError as exc:
        if folder is None:  # a hub id whose config loaded: the hub has no tokenizer for it
            raise KronyptError(f"cannot load the tokenizer of model {name!r} ({exc}); pass one with "
                               "--tokenizer") from None
        raise KronyptError(f"{exc}; pass a tokenizer (--tokenizer)") from None  # a folder saved without one
