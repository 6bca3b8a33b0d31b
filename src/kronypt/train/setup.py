"""What a training run sets up before its first step, one job per function, in the order `Trainer` runs
them: the token data, the batch geometry, where the run starts from (a checkpoint or a new model), the
checks of the model against the data, the teacher, and what validation and checkpoints need besides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from kronypt.data.tokens import check_token_ids, open_tokens, read_meta, tokenizer_source
from kronypt.errors import KronyptError
from kronypt.models import load_model
from kronypt.models.tokenizers import has_tokenizer
from kronypt.train import checkpoint, distributed
from kronypt.train.args import GRAPHED_COMPILE_MODES, TrainArgs
from kronypt.train.config import TrainConfig
from kronypt.train.model_source import check_context, check_vocab, load_teacher
from kronypt.train.wikitext import WikiTextValidation


def open_data(data: str, seq_len: int) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """meta.json and the train / val tokens of a token folder; each split must hold one window."""
    meta = read_meta(data)
    splits = open_tokens(data, "train"), open_tokens(data, "val")
    for split, tokens in zip(("train", "val"), splits, strict=True):
        if len(tokens) < seq_len + 1:
            raise KronyptError(f"the {split} split of {data} has {len(tokens):,} tokens, fewer than one "
                               f"window of seq_len + 1 = {seq_len + 1}")
    return meta, *splits


def accumulation_steps(tokens_per_step: int | None, micro_batch_size: int, seq_len: int, world_size: int) -> int:
    """Micro-batches per rank per optimizer step; tokens_per_step must be a multiple of one global micro-batch."""
    per_micro = micro_batch_size * seq_len * world_size
    if tokens_per_step is None:
        return 1
    if tokens_per_step < 1:
        raise KronyptError(f"tokens_per_step must be at least 1, got {tokens_per_step} (leave it unset for one "
                           "micro-batch per rank and step)")
    if tokens_per_step < per_micro or tokens_per_step % per_micro:
        nearest = max(1, round(tokens_per_step / per_micro)) * per_micro
        fits = [b for b in range(micro_batch_size, 0, -1) if tokens_per_step % (b * seq_len * world_size) == 0]
        keep = f"micro_batch_size {fits[0]} (same tokens per step) or " if fits else ""
        raise KronyptError(f"tokens_per_step {tokens_per_step:,} is not a multiple of micro_batch_size × seq_len "
                           f"× ranks = {per_micro:,}; use e.g. {keep}tokens_per_step {nearest:,}")
    return tokens_per_step // per_micro


def replays_cuda_graphs(args: TrainArgs, accumulation: int, env: distributed.DistEnv) -> bool:
    """Whether the steps replay CUDA graphs (--compile with a graphed --compile-mode), which needs one
    micro-batch per step on one process: refused otherwise."""
    graphed = args.compile and args.compile_mode in GRAPHED_COMPILE_MODES
    if graphed and (accumulation > 1 or env.enabled):
        # Gradients a CUDA-graph replay produces live in the graph's memory, which the next replay
        # reuses: accumulating over micro-batches (or DDP's hooks into them) is not safe there.
        raise KronyptError(f"--compile-mode {args.compile_mode} (CUDA graphs) needs one micro-batch per step "
                           f"on one process; this run has {accumulation} micro-batch"
                           f"{'es' if accumulation > 1 else ''} per step"
                           f"{f' on {env.world_size} ranks' if env.enabled else ''}: set --tokens-per-step "
                           f"to micro_batch_size x seq_len ({args.micro_batch_size * args.seq_len}) or use "
                           "--compile-mode default")
    return graphed


def resume_path(mode: str, out: Path) -> Path | None:
    """The checkpoint that --resume `mode` continues from in run folder `out` (None: a new run)."""
    if mode == "never":
        if checkpoint.list_checkpoints(out):
            raise KronyptError(f"{out} already holds checkpoints; pass --resume auto to continue that "
                               "run or choose another --out")
        return None
    if mode == "auto":
        return checkpoint.latest_checkpoint(out)
    path = Path(mode)
    if path.is_dir() and not (path / checkpoint.INDEX_FILE).exists() and not checkpoint.STEP_DIR.match(path.name):
        if checkpoint.list_checkpoints(path):  # a run folder: its latest checkpoint
            return checkpoint.latest_checkpoint(path)
        raise KronyptError(f"--resume {path} is not a checkpoint: pass a run folder, its latest/, or one of "
                           "its checkpoints/step-N folders")
    return path


def restore_weights(model: PreTrainedModel | None, model_dir: Path) -> PreTrainedModel:
    """The checkpoint's model; into `model` (keeping its class and hooks) when one was given."""
    saved = load_model(str(model_dir), dtype=torch.float32)
    if model is None:
        return saved
    model.load_state_dict(saved.state_dict())
    return model


def check_model_on_data(model: PreTrainedModel, config: TrainConfig, meta: dict[str, Any],
                        splits: dict[str, np.ndarray]) -> None:
    """The model's vocabulary holds the data's tokens, and its context the training windows."""
    check_vocab(model, meta)
    for split, tokens in splits.items():
        check_token_ids(tokens, model.config.vocab_size, str(Path(config.data) / meta["splits"][split]["file"]))
    check_context(model, config.train.seq_len)


def teacher_for(model: PreTrainedModel, config: TrainConfig, device: torch.device) -> PreTrainedModel | None:
    """The distillation teacher, checked against the student before any run file is written (None: none)."""
    distill = config.distill
    if not distill.teacher:
        return None
    checkpoint.check_model_folder(distill.teacher)
    return load_teacher(distill.teacher, model, device, config.train.seq_len, distill.hidden_weight)


def wikitext_validation(config: TrainConfig, meta: dict[str, Any]) -> WikiTextValidation | None:
    """The WikiText-2 validation of every rank, when configured (a collective: rank 0 reads and tokenises
    WikiText, once, and sends the token ids to the other ranks)."""
    if not config.eval.eval_wikitext:
        return None
    return WikiTextValidation(config.eval.eval_wikitext, tokenizer_source(config.data, meta), config.train.seq_len,
                              config.train.micro_batch_size, config.eval.eval_wikitext_tokens)


def tokenizer_dir(config: TrainConfig, meta: dict[str, Any]) -> Path | None:
    """A local folder with the run's tokenizer files: the source model's, else the one that made the data."""
    for candidate in (config.model, tokenizer_source(config.data, meta)):
        if candidate and has_tokenizer(candidate):
            return Path(candidate)
    return None


def inside(path: Path, folder: Path) -> bool:
    """Whether `path` lies in `folder` (after following links such as latest/)."""
    return path.resolve().is_relative_to(folder.resolve())
