"""The argument groups of a training run (`TrainConfig`'s recipe sections) and how a setting is declared.

Each setting is declared once, with `setting`: its name, type, default and help text. From that
declaration come the recipe key, the dataclass field and the `kronypt train` flag (`kronypt.cli.train`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

INIT_FROM = ("dense", "kronypt", "model", "scratch")
TRAINABLE = ("all", "mlp", "compressed")
SCHEDULES = ("constant", "cosine", "wsd")
PRECISIONS = ("auto", "bf16", "fp32")
PARALLEL = ("ddp", "fsdp")
# torch.compile modes; the two that capture CUDA graphs need a step boundary marked before each forward.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
GRAPHED_COMPILE_MODES = ("reduce-overhead", "max-autotune")
NO_DECAY_KINDS = ("bias", "norm", "embedding", "scalars")


def setting(default: Any, text: str, *flags: str) -> Any:
    """A field with the help text of its `kronypt train` flag, and the flag's click spelling where it is not
    --name-with-dashes (for a switch --name/--no-name), e.g. "--out", "-o" or
    "--freeze-embeddings/--train-embeddings"."""
    return field(default=default, metadata={"help": text, "flags": flags})


def flag_name(setting_field: dataclasses.Field) -> str:
    """The flag that sets this setting, as messages name it: --distill-alpha for `alpha`."""
    flags = setting_field.metadata.get("flags") or ("--" + setting_field.name.replace("_", "-"),)
    return flags[0].split("/")[0]


@dataclass
class TrainArgs:
    """Batch geometry, length of the run and what is trained."""

    max_steps: int = setting(1000, "Optimizer steps to train for.")
    micro_batch_size: int = setting(32, "Sequences per forward pass and rank.")
    seq_len: int = setting(1024, "Tokens per sequence.")
    tokens_per_step: int | None = setting(None, "Tokens per optimizer step, all ranks together; sets the gradient "
                                                "accumulation (default: one micro-batch per rank and step).")
    log_every: int = setting(10, "Steps between metrics.jsonl records.")
    precision: str = setting("auto", "auto (bf16 autocast on CUDA, fp32 on CPU), bf16, fp32.")
    compile: bool = setting(False, "torch.compile the model.")
    compile_mode: str = setting("default", (
        "With --compile: default, reduce-overhead (replays CUDA graphs, so the host launches nothing per kernel: the "
        "81M model trained 1.29x dense this way on an H100, 0.77x under default; one process, one micro-batch per "
        "step), max-autotune (also CUDA graphs) or max-autotune-no-cudagraphs."))
    parallel: str = setting("ddp", "Under torchrun: ddp (a full replica per rank) or fsdp (parameters, gradients and "
                                   "optimizer state sharded over the ranks; in bf16 it all-gathers bf16 weights).")
    dropout: float | None = setting(None, "Override the model's dropout probabilities (default: its config's).")
    freeze_embeddings: bool = setting(False, "Freeze token and position embeddings.",
                                      "--freeze-embeddings/--train-embeddings")
    trainable: str = setting("all", "What trains: all, mlp (the MLP matrices only) or compressed (the compressed "
                                    "layers only): fewer gradients, faster steps.")
    freeze_scalars: bool = setting(False, "Freeze the Kronecker scalars.", "--freeze-scalars/--train-scalars")
    scalar_value: float | None = setting(None, "With --freeze-scalars: set them to this value first, rescaling the "
                                               "A factors so that the model computes the same.")


@dataclass
class OptimArgs:
    """AdamW, its parameter groups, the learning-rate schedule and gradient clipping."""

    lr: float = setting(6e-5, "Peak learning rate.")
    min_lr: float = setting(0.0, "Learning rate the schedule decays to: wsd's at the last step, cosine's at "
                                 "max_steps, one past the last (as PyTorch's and transformers' cosine).")
    schedule: str = setting("constant", "constant, cosine (warm-up, cosine) or wsd (warm-up, stable, decay).")
    warmup_steps: int = setting(0, "Linear warm-up steps.")
    decay_fraction: float = setting(0.1, "wsd: the final fraction of max_steps that decays to min_lr.")
    betas: tuple[float, float] = setting((0.9, 0.95), "AdamW's betas, e.g. 0.9,0.95.")
    eps: float = setting(1e-8, "AdamW's epsilon.")
    weight_decay: float = setting(0.1, "AdamW weight decay of matrices.")
    no_decay: tuple[str, ...] = setting(NO_DECAY_KINDS, "Parameters kept out of weight decay, comma-separated, "
                                                        f"from: {', '.join(NO_DECAY_KINDS)}.")
    grad_clip: float = setting(1.0, "Clip the gradient norm to this (0: off; the norm is logged either way).")


@dataclass
class EvalArgs:
    """Periodic validation; the best checkpoint is chosen on `val.bin` loss only."""

    eval_every: int = setting(500, "Steps between validations (0: only at the end).")
    eval_batches: int = setting(20, "Validation micro-batches per evaluation.")
    eval_wikitext: str | None = setting(None, "Also log WikiText-2 validation perplexity (krony-pt protocol): a "
                                              "folder laid out like ../shared/data, or 'hub'.")
    eval_wikitext_tokens: int | None = setting(None, "Cap on the WikiText-2 tokens scored (quick checks; default: "
                                                     "the whole split).")


@dataclass
class CheckpointArgs:
    """When to save and how many checkpoints to keep."""

    save_every: int = setting(1000, "Steps between checkpoints.")
    keep_last: int = setting(2, "Checkpoints to keep (plus the best on validation).")
    resume: str = setting("auto", "auto (latest checkpoint in --out, if any), never, a run folder (its latest "
                                  "checkpoint) or a checkpoint folder. A resume must keep the checkpoint's settings "
                                  "except length, logging, saving, hardware and batch split (docs/training.md).")


@dataclass
class DistillArgs:
    """Optional distillation from a teacher: alpha·T²·KL(teacher‖student) + (1−alpha)·CE + hidden MSE."""

    teacher: str | None = setting(None, "Distil from this model (hub id or folder).")
    alpha: float = setting(0.5, "Weight of the KL term (1 − it weights CE).", "--distill-alpha")
    temperature: float = setting(2.0, "Softmax temperature of the KL.", "--distill-temperature")
    hidden_weight: float = setting(0.0, "Weight of the hidden-state MSE, block by block with no projection: above "
                                        "0 the teacher needs the student's number of blocks and width (checked "
                                        "before the run starts).", "--distill-hidden-weight")


GROUPS = {"train": TrainArgs, "optim": OptimArgs, "eval": EvalArgs, "checkpoint": CheckpointArgs,
          "distill": DistillArgs}
