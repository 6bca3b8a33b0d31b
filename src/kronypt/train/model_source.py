"""Where the trained model comes from, and what of it is trained.

`--init-from dense` loads a dense GPT-2 and compresses it with a scheme (or an explicit A shape) and an
init; `kronypt` loads a compressed folder as saved by `kronypt compress` or by a checkpoint; `scratch`
builds a randomly initialised GPT-2 from a GPT2Config JSON (to train small teachers). Training always
holds float32 master weights; mixed precision is autocast's job.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel

from kronypt.errors import KronyptError
from kronypt.math.shapes import parse_shape
from kronypt.models import CompressionConfig, allocate_factors, compress, load_model
from kronypt.nn import KroneckerLinear
from kronypt.train.config import TrainArgs, TrainConfig

UINT16_TOKENS = 2**16


def build_model(config: TrainConfig) -> PreTrainedModel:
    """The model to train, in float32 on the CPU, from the config's model source."""
    if config.init_from == "scratch":
        return GPT2LMHeadModel(scratch_config(config.model_config))
    scheme = compression_config(config) if config.init_from == "dense" else None  # bad schemes fail before loading
    model = load_model(config.model, dtype=torch.float32, gpt2_only=True)
    if scheme is not None and config.allocate_params is not None:
        scheme = allocate_factors(model, scheme, config.allocate_params, max_factors=config.factors)
    if scheme is not None:
        compress(model, scheme, progress=False)
    elif not getattr(model.config, "kron_modules", None):
        raise KronyptError(f"{config.model} is not a kronypt model (no Kronecker layers); "
                           "use --init-from dense with --scheme to compress it")
    return model


def compression_config(config: TrainConfig) -> CompressionConfig:
    """The CompressionConfig of `--scheme` or `--a-shape`, with `--factors` (unless it caps an allocation),
    `--init` and `--scalars`."""
    options: dict = {"scalars": config.scalars}
    if config.init is not None:
        options["init"] = config.init
    if config.factors is not None and config.allocate_params is None:
        options["factors"] = config.factors
    if config.scheme is not None:
        return CompressionConfig.from_scheme(config.scheme, **options)
    return CompressionConfig(a_shape=parse_shape(config.a_shape), **options)


def scratch_config(path: str | Path) -> GPT2Config:
    """A GPT2Config from a JSON file (the keys of GPT2Config, e.g. n_layer, n_embd, n_head, n_positions)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model config {path} does not exist")
    try:
        values = json.loads(path.read_text())
    except ValueError as exc:
        raise KronyptError(f"{path} is not valid JSON: {exc}") from None
    values.pop("model_type", None)
    return GPT2Config(**values)


def prepare_for_training(model: PreTrainedModel, args: TrainArgs) -> None:
    """Apply dropout and freezing choices (re-applied after a resume: requires_grad is not saved)."""
    if args.dropout is not None:
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
            setattr(model.config, name, args.dropout)
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = args.dropout
    if args.freeze_embeddings:
        embeddings = model.get_input_embeddings(), model.transformer.wpe
        for module in embeddings:
            module.weight.requires_grad_(False)  # the tied LM head shares wte's tensor
    if args.freeze_scalars:
        layers = [m for m in model.modules() if isinstance(m, KroneckerLinear) and m.scalars is not None]
        if not layers:
            raise KronyptError("freeze_scalars: this model has no Kronecker scalars (compress with --scalars)")
        for layer in layers:
            layer.freeze_scalars(args.scalar_value)


def check_vocab(model: PreTrainedModel, meta: dict) -> None:
    """The data's ids must fit uint16 token files, and the model needs an embedding row for each of them."""
    data_vocab = int(meta.get("vocab_size", 0))
    if data_vocab > UINT16_TOKENS:
        raise KronyptError(f"the data's vocab size {data_vocab:,} does not fit uint16 token files (ids 0.."
                           f"{UINT16_TOKENS - 1}); prepare it with a tokenizer of at most {UINT16_TOKENS:,} tokens")
    if model.config.vocab_size < data_vocab:
        raise KronyptError(f"the model's vocab ({model.config.vocab_size:,}) is smaller than the data's "
                           f"({data_vocab:,}); use a model built for this tokenizer")


def load_teacher(name: str, student: PreTrainedModel, device: torch.device) -> PreTrainedModel:
    """A frozen teacher in eval mode whose vocabulary matches the student's."""
    teacher = load_model(name, dtype=torch.float32, device=device)
    if teacher.config.vocab_size != student.config.vocab_size:
        raise KronyptError(f"teacher vocab {teacher.config.vocab_size:,} differs from the student's "
                           f"{student.config.vocab_size:,}")
    teacher.requires_grad_(False)
    return teacher
