"""Where the trained model comes from, and what of it is trained.

`--init-from dense` loads a dense model of any supported family (GPT-2, Llama-style; a folder, a .gguf file,
a packaged model or a hub id) and compresses it through `kronypt.compress_` by a scheme, an A shape, a ratio
or a parameter budget; `kronypt` loads a compressed folder as saved by `kronypt compress` or by a checkpoint;
`model` trains any model as it is (dense, compressed, or with dropped blocks); `scratch` builds a randomly
initialised GPT-2 from a GPT2Config JSON (to train small teachers). Training always
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
from kronypt.models import CompressionConfig, compress_, family_of, load_config, load_model
from kronypt.models.compression import preflight
from kronypt.models.configuration import config_context_length
from kronypt.nn import KroneckerLinear
from kronypt.nn.compressed import is_compressed_layer
from kronypt.train.args import TrainArgs
from kronypt.train.config import TrainConfig


def build_model(config: TrainConfig) -> PreTrainedModel:
    """The model to train, in float32 on the CPU, from the config's model source."""
    if config.init_from == "scratch":
        return GPT2LMHeadModel(scratch_config(config.model_config))
    compression = compression_config(config) if config.init_from == "dense" else None
    if compression is not None:  # bad schemes and unsupported models fail before the weights load
        preflight(load_config(config.model), compression, config.model)
    model = load_model(config.model, dtype=torch.float32)
    if compression is not None:
        compress_(model, compression, progress=False)
    elif config.init_from == "kronypt" and not getattr(model.config, "compressed_modules", None):
        raise KronyptError(f"{config.model} is not a kronypt model (no compressed layers); use --init-from dense "
                           "with --scheme to compress it, or --init-from model to train it as it is")
    return model


def compression_config(config: TrainConfig) -> CompressionConfig:
    """The CompressionConfig of `--scheme`, `--a-shape`, `--ratio` or `--target-params`, with `--factors` (which
    caps k per matrix under `--allocate-params`), `--init` and `--scalars`."""
    allocate = config.allocate_params is not None
    return CompressionConfig(scheme=config.scheme, a_shape=parse_shape(config.a_shape) if config.a_shape else None,
                             ratio=config.ratio, factors=config.factors, init=config.init, scalars=config.scalars,
                             target_params=config.allocate_params if allocate else config.target_params,
                             allocate=allocate)


def scratch_config(path: str | Path) -> GPT2Config:
    """A GPT2Config from a JSON file (the keys of GPT2Config, e.g. n_layer, n_embd, n_head, n_positions),
    checked so that a bad value is one line here rather than a traceback from building the model."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model config {path} does not exist")
    try:
        values = json.loads(path.read_text())
    except ValueError as exc:  # a UnicodeDecodeError too
        raise KronyptError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(values, dict):
        raise KronyptError(f"{path} must hold a JSON object of GPT2Config keys (n_layer, n_embd, n_head, ...), "
                           f"not a {type(values).__name__}")
    values.pop("model_type", None)
    defaults = GPT2Config()
    for key in ("n_layer", "n_embd", "n_head", "n_positions", "vocab_size"):
        value = values.get(key, getattr(defaults, key))
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise KronyptError(f"{path}: {key} must be a positive whole number, got {value!r}")
    try:
        config = GPT2Config(**values)
    except Exception as exc:  # transformers' own checks of the values (e.g. a strict dataclass field)
        raise KronyptError(f"{path}: {' '.join(str(exc).split())}") from None
    if config.n_embd % config.n_head:
        raise KronyptError(f"{path}: n_embd ({config.n_embd}) must be a multiple of n_head ({config.n_head}): each "
                           "attention head gets n_embd / n_head dimensions")
    return config


def prepare_for_training(model: PreTrainedModel, args: TrainArgs) -> None:
    """Apply dropout and freezing choices (re-applied after a resume: requires_grad is not saved)."""
    if args.dropout is not None:
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "attention_dropout"):
            if hasattr(model.config, name):
                setattr(model.config, name, args.dropout)
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = args.dropout
    if args.freeze_embeddings:
        family = family_of(model)
        positions = [model.get_submodule(family.positions)] if family.positions else []
        for module in [model.get_input_embeddings(), *positions]:
            module.weight.requires_grad_(False)  # the tied LM head shares wte's tensor
    if args.trainable != "all":
        freeze_all_but(model, args.trainable)
    if args.freeze_scalars:
        layers = [m for m in model.modules() if isinstance(m, KroneckerLinear) and m.scalars is not None]
        if not layers:
            raise KronyptError("freeze_scalars: this model has no Kronecker scalars (compress with --scalars)")
        for layer in layers:
            layer.freeze_scalars(args.scalar_value)


def freeze_all_but(model: PreTrainedModel, trainable: str) -> None:
    """Train only the MLP matrices ("mlp") or only the compressed layers ("compressed"): fewer weight gradients
    and optimizer states, so a step is cheaper (the activations' gradients still flow through everything)."""
    family = family_of(model)
    if trainable == "mlp":
        keep = [model.get_submodule(f"{family.blocks}.{i}.{family.mlp}.{name}")
                for i in range(len(model.get_submodule(family.blocks))) for name in family.matrices]
    else:
        keep = [m for m in model.modules() if is_compressed_layer(m)]
        if not keep:
            raise KronyptError("trainable compressed: this model has no compressed layers (use all or mlp)")
    model.requires_grad_(False)
    for module in keep:
        module.requires_grad_(True)


def check_vocab(model: PreTrainedModel, meta: dict) -> None:
    """The model needs an embedding row (and a logit) for every id the data holds."""
    data_vocab = int(meta.get("vocab_size", 0))
    if model.config.vocab_size < data_vocab:
        raise KronyptError(f"the model's vocab ({model.config.vocab_size:,}) is smaller than the data's "
                           f"({data_vocab:,}); use a model built for this tokenizer")


def load_teacher(name: str, student: PreTrainedModel, device: torch.device, seq_len: int | None = None,
                 hidden_weight: float = 0.0) -> PreTrainedModel:
    """A frozen teacher in eval mode on `device`, checked on the CPU first (so a bad one fails before the run
    writes anything): the student's vocabulary, a context of at least `seq_len`, and with `hidden_weight` > 0
    the student's number of hidden states and width."""
    teacher = load_model(name, dtype=torch.float32)
    if teacher.config.vocab_size != student.config.vocab_size:
        raise KronyptError(f"teacher vocab {teacher.config.vocab_size:,} differs from the student's "
                           f"{student.config.vocab_size:,}")
    if seq_len is not None:
        check_context(teacher, seq_len, "the teacher's")
    if hidden_weight > 0:
        check_hidden_states(student, teacher)
    teacher.requires_grad_(False)
    return teacher.to(device)


def check_context(model: PreTrainedModel, seq_len: int, whose: str = "the model's") -> None:
    """Refuse windows longer than the model's position embeddings (they would index past them); a config
    that names no context length is not checked."""
    context = config_context_length(model.config)
    if context is not None and seq_len > context:
        raise KronyptError(f"seq_len {seq_len} exceeds {whose} context ({context})")


def hidden_shape(model: PreTrainedModel) -> tuple[int | None, int | None]:
    """(blocks, width) of a causal LM: its number of hidden states past the embeddings, and their size."""
    config = model.config
    return getattr(config, "num_hidden_layers", None), getattr(config, "hidden_size", None)


def check_hidden_states(student: PreTrainedModel, teacher: PreTrainedModel) -> None:
    """Hidden-state distillation compares the student's and the teacher's hidden states block by block (with
    no projection or layer mapping between them), so both need the same depth and width; checked before the
    run, as a mismatch would otherwise only fail inside the first training step."""
    (s_blocks, s_width), (t_blocks, t_width) = hidden_shape(student), hidden_shape(teacher)
    if s_blocks is None or s_width is None or (s_blocks, s_width) != (t_blocks, t_width):
        raise KronyptError(f"--distill-hidden-weight > 0 compares hidden states block by block, so the teacher "
                           f"needs the student's depth and width: student {s_blocks} blocks x {s_width}, teacher "
                           f"{t_blocks} blocks x {t_width}; use such a teacher or --distill-hidden-weight 0 "
                           "(logit distillation works with any teacher of the same vocabulary)")
