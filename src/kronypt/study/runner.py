"""Run a study: for every (method, budget), compress, evaluate zero-shot, heal with the shared recipe, evaluate
again. Every step writes its result under OUT/runs/NAME/ when it is complete, so a killed study resumes where it
stopped (healing resumes from its last checkpoint)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kronypt.eval import evaluate
from kronypt.eval.divergence import window_scores
from kronypt.files import apply_umask
from kronypt.models import compress_, count_params, load_calibration, load_model, load_tokenizer
from kronypt.study.config import StudyConfig, run_name
from kronypt.study.methods import DENSE, compression_config, describe
from kronypt.train import TrainConfig, train
from kronypt.train.metrics import read_metrics

Log = Callable[[str], None]


def run_study(config: StudyConfig, progress: bool = True, log: Log = print) -> list[dict[str, Any]]:
    """Every run of the study, each a row of results (see `results.py`), written to OUT/results.json as they come."""
    from kronypt.study.results import write_results

    config.save_or_check()
    source = load_model(config.model)
    tokenizer = load_tokenizer(config.model)
    calibration = None
    rows = []
    for method, budget in config.runs():
        name = run_name(method, budget)
        needs = method != DENSE and compression_config(method, budget).needs_calibration
        if needs and calibration is None and not _done(Path(config.out) / "runs" / name / "compression.json"):
            calibration = load_calibration(config.calibration or config.data, config.calibration_tokens,
                                           seq_len=config.seq_len, tokenizer=tokenizer)
        rows.append(run_one(config, method, budget, source, tokenizer, calibration, progress, log))
        write_results(config, rows)
    return rows


def run_one(config: StudyConfig, method: str, budget: float | None, source: torch.nn.Module, tokenizer,
            calibration, progress: bool, log: Log) -> dict[str, Any]:
    """One run's row: compression, zero-shot and healed evaluations, healing; each step done once."""
    folder = Path(config.out) / "runs" / run_name(method, budget)
    folder.mkdir(parents=True, exist_ok=True)
    row: dict[str, Any] = {"run": folder.name, "method": method, "budget": budget, "description": describe(method)}
    model = None
    if method == DENSE:
        model, row["compression"] = source, {"params": count_params(source)}
    else:
        model, row["compression"] = _compressed(config, method, budget, source, tokenizer, calibration, folder,
                                                progress, log)
    row["params"] = row["compression"]["params"]
    row["zero_shot"] = _once(folder / "zero-shot.json", lambda: _evaluate(
        model if model is not None else load_model(folder / "model"), tokenizer, source, config, progress), log,
        f"{folder.name}: zero-shot evaluation")
    if config.heal_tokens and (method != DENSE or config.heal_dense):
        row["heal"] = _once(folder / "heal.json", lambda: _heal(config, method, folder, progress), log,
                            f"{folder.name}: healing on {config.heal_tokens:,} tokens")
        best = row["heal"]["best_model"] or row["heal"]["last_model"]
        row["healed"] = _once(folder / "healed.json", lambda: _evaluate(load_model(best), tokenizer, source, config,
                                                                        progress), log,
                              f"{folder.name}: evaluation after healing")
    return row


def _compressed(config: StudyConfig, method: str, budget: float, source: torch.nn.Module, tokenizer, calibration,
                folder: Path, progress: bool, log: Log) -> tuple[torch.nn.Module | None, dict]:
    """The run's compressed model (in memory when made now, else None: it is in folder/model) and its summary."""
    done = folder / "compression.json"
    if _done(done):
        return None, json.loads(done.read_text())
    log(f"{folder.name}: compressing ({describe(method)}, {budget:g} of the MLP parameters)")
    model = copy.deepcopy(source)
    started = time.perf_counter()
    report = compress_(model, compression_config(method, budget), calibration, progress=progress)
    summary = json.loads(json.dumps({"params": report.params_after, "seconds": time.perf_counter() - started,
                                     **report.to_json()}))  # as it reads back from the file
    _save_model(model, tokenizer, folder / "model")
    _write_json(done, summary)
    if report.calibration_line():
        log(f"{folder.name}: {report.calibration_line()}")
    return model, summary


def _evaluate(model: torch.nn.Module, tokenizer, reference: torch.nn.Module, config: StudyConfig,
              progress: bool) -> dict[str, Any]:
    """WikiText-2 (hf-strided) and LAMBADA (lambada-openai) with the model's tokenizer, and the validation loss
    and KL to the dense model on the data's first validation windows; all in `config.eval_dtype` (copies: the
    models given stay as they are)."""
    started = time.perf_counter()
    dtype = getattr(torch, config.eval_dtype)
    same = reference is model
    model = copy.deepcopy(model).to(dtype)
    reference = None if same else _cast_reference(reference, dtype)
    records = evaluate(model, tokenizer, ["wikitext2", "lambada"], ["hf-strided", "lambada-openai"],
                       data_dir=config.eval_data, stride=config.eval_stride, max_tokens=config.eval_max_tokens,
                       progress=progress, on_skip=lambda message: None)
    values = {f"{r.task}_{r.metric}": r.value for r in records}
    scores = window_scores(model, config.data, reference, windows=config.eval_windows, seq_len=config.seq_len,
                           progress=progress)
    return {"wikitext2_ppl": values.get("wikitext2_perplexity"), "lambada_acc": values.get("lambada_accuracy"),
            "lambada_ppl": values.get("lambada_perplexity"), "val_loss": scores.loss,
            "kl": scores.kl if scores.kl is not None else 0.0, "wikitext2_tokens": _tokens(records, "wikitext2"),
            "tokenizer": records[0].tokenizer if records else None, "dtype": config.eval_dtype,
            "seconds": time.perf_counter() - started}


_REFERENCES: dict[tuple[int, torch.dtype], torch.nn.Module] = {}


def _cast_reference(reference: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """The dense reference in the evaluation dtype, made once per study."""
    key = (id(reference), dtype)
    if key not in _REFERENCES:
        _REFERENCES.clear()
        _REFERENCES[key] = copy.deepcopy(reference).to(dtype)
    return _REFERENCES[key]


def _heal(config: StudyConfig, method: str, folder: Path, progress: bool) -> dict[str, Any]:
    """Train the run's model with the study's recipe (resuming a killed run) and summarise it."""
    compressed = method != DENSE
    settings = {
        "init_from": "model", "model": str(folder / "model") if compressed else config.model,
        "data": config.data, "out": str(folder / "heal"), "seed": config.seed, "device": config.device,
        "max_steps": config.heal_steps, "micro_batch_size": config.micro_batch_size, "seq_len": config.seq_len,
        "tokens_per_step": config.tokens_per_step, "log_every": 1, "trainable": config.trainable,
        "precision": config.precision,
        "lr": config.lr, "min_lr": config.min_lr, "schedule": "cosine", "warmup_steps": config.warmup_steps,
        "eval_every": max(1, config.heal_steps // 4), "eval_batches": 4,
        "save_every": max(1, config.heal_steps // 4), "keep_last": 1,
    }
    if config.distill:
        settings.update({"teacher": config.model, "alpha": config.distill})
    result = train(TrainConfig.from_dict(settings), progress=progress)
    metrics = read_metrics(folder / "heal" / "metrics.jsonl")
    rates = [m["tokens_per_s"] for m in metrics if "tokens_per_s" in m]
    return {**result.to_json(), "last_model": str(_last_model(folder / "heal")),
            "tokens_per_s": sum(rates) / len(rates) if rates else None,
            "curve": [{"tokens": m["tokens"], "val_loss": m["val_loss"]} for m in metrics if "val_loss" in m]}


def _last_model(heal: Path) -> Path:
    from kronypt.train.checkpoint import latest_checkpoint

    latest = latest_checkpoint(heal)
    return latest / "model" if latest is not None else heal


def _once(path: Path, compute: Callable[[], dict], log: Log, what: str) -> dict:
    """The result stored at `path`, computed (and stored atomically) the first time."""
    if _done(path):
        return json.loads(path.read_text())
    log(what)
    result = compute()
    _write_json(path, result)
    return result


def _done(path: Path) -> bool:
    return path.is_file()


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def _save_model(model: torch.nn.Module, tokenizer, folder: Path) -> None:
    """Save a model folder with its tokenizer, whole or not at all: written beside, then renamed into place."""
    tmp = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    apply_umask(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def _tokens(records, task: str) -> int | None:
    return next((r.tokens for r in records if r.task == task), None)
