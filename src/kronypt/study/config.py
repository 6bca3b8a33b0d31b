"""What a study compares and how: `StudyConfig`, saved as OUT/study.json (a resumed study must ask for the same)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kronypt.errors import KronyptError
from kronypt.study.methods import DEFAULT_METHODS, DENSE, check_methods

# Settings a resumed study may change: how far it goes and how it is shown, not what each run is.
CHANGEABLE = ("methods", "budgets", "device")


@dataclass
class StudyConfig:
    """A model, budgets (fractions of the MLP parameters kept) and methods; how every compressed model is healed
    (the same recipe and the same tokens for all) and evaluated before and after.

    `data`: a token folder prepared with the model's tokenizer; healing samples its train split, and the
    validation loss and the KL to the dense model are measured on its first `eval_windows` val windows.
    `eval_data`: where WikiText-2 and LAMBADA are read (a folder like ../shared/data; None: the hub);
    `eval_max_tokens` scores only the start of each (quick checks). Evaluation runs in `eval_dtype` (every
    model alike), healing under `precision` (bf16 autocast, float32 master weights); on CPUs with AMX units and
    on GPUs bfloat16 is several times faster than float32.
    `trainable`: which parameters healing trains (all; mlp: the MLP matrices only; compressed: the compressed
    layers only, the rest frozen). `distill`: heal towards the dense model's predictions (alpha, with T = 2).
    """

    model: str
    data: str
    out: str
    budgets: list[float] = field(default_factory=lambda: [0.5, 0.25])
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    calibration: str | None = None  # a token folder or text file; default: `data`
    calibration_tokens: int = 32_768
    heal_tokens: int = 262_144
    seq_len: int = 1024
    micro_batch_size: int = 4
    tokens_per_step: int = 8192
    lr: float = 2e-4
    min_lr: float = 2e-5
    warmup_steps: int = 4
    trainable: str = "all"
    precision: str = "bf16"  # healing under bf16 autocast (float32 master weights), or fp32
    distill: float = 0.0  # alpha of the KL term (0: plain language-model loss)
    eval_data: str | None = None
    eval_windows: int = 32
    eval_stride: int = 1024  # hf-strided's stride: 1024 scores disjoint 1024-token windows, 512 overlaps them
    eval_dtype: str = "bfloat16"  # what evaluation runs in: bfloat16 (AMX, GPUs) or float32
    eval_max_tokens: int | None = None  # None: the whole WikiText-2 test set and all 5,153 LAMBADA examples
    heal_dense: bool = True  # heal the dense model too: what the same tokens do without compression
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        self.methods = check_methods(list(self.methods))
        self.budgets = sorted({float(b) for b in self.budgets}, reverse=True)
        if not self.budgets or not all(0 < b < 1 for b in self.budgets):
            raise KronyptError(f"budgets are fractions of the MLP parameters kept, between 0 and 1; got {self.budgets}")
        if self.heal_tokens < 0 or self.tokens_per_step < 1 or self.eval_windows < 1:
            raise KronyptError("heal_tokens must be 0 or more, tokens_per_step and eval_windows at least 1")
        if self.trainable not in ("all", "mlp", "compressed"):
            raise KronyptError(f"trainable must be all, mlp or compressed, got {self.trainable!r}")
        uncompressed = [m for m in self.methods if m.startswith("drop") or (m == DENSE and self.heal_dense)]
        if self.trainable == "compressed" and uncompressed:
            raise KronyptError(f"trainable compressed leaves nothing to train in {', '.join(uncompressed)} (no "
                               "compressed layers); use trainable mlp, the same parameters for every method")
        if self.precision not in ("bf16", "fp32"):
            raise KronyptError(f"precision must be bf16 or fp32, got {self.precision!r}")
        if self.eval_dtype not in ("bfloat16", "float32"):
            raise KronyptError(f"eval_dtype must be bfloat16 or float32, got {self.eval_dtype!r}")

    @property
    def heal_steps(self) -> int:
        return -(-self.heal_tokens // self.tokens_per_step)

    def runs(self) -> list[tuple[str, float | None]]:
        """(method, budget) of every run, dense first (it has no budget)."""
        dense = [(DENSE, None)] if DENSE in self.methods else []
        return dense + [(m, b) for b in self.budgets for m in self.methods if m != DENSE]

    def save_or_check(self) -> None:
        """Write OUT/study.json, or refuse to resume a study whose runs were made otherwise."""
        path = Path(self.out) / "study.json"
        mine = asdict(self)
        if path.is_file():
            saved = json.loads(path.read_text())
            differ = sorted(k for k in mine if k not in CHANGEABLE and k in saved and saved[k] != mine[k])
            if differ:
                raise KronyptError(f"{self.out} holds a study made with other settings ({', '.join(differ)}); give "
                                   "another --out, or the same settings to resume it")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".study.json.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(mine, indent=2))
        tmp.replace(path)


def run_name(method: str, budget: float | None) -> str:
    return method if budget is None else f"{method}-{budget:g}"
