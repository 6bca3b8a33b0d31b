"""Model families: where a causal LM keeps its blocks and MLP matrices, and how it stores them.

A family is data. Compression, export, planning and training find every MLP matrix through it, so a new
family is one `Family` entry (plus tests). A model belongs to the first family whose module names it has;
the Hugging Face `model_type` does not matter, so any Llama-style checkpoint (Mistral, Qwen2/3, SmolLM2,
...) with `gate_proj`/`up_proj`/`down_proj` is covered.

Orientation: every matrix is described in `nn.Linear`'s (out, in) terms. "Widening" matrices map the
hidden size to the MLP's inner size (GPT-2's c_fc; Llama's gate_proj and up_proj), "narrowing" ones map it
back (c_proj; down_proj). A scheme's A shape is given for the widening matrices; narrowing ones use the
transposed shapes, so every MLP matrix of a model has the same parameter count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from kronypt.errors import KronyptError


@dataclass(frozen=True)
class Family:
    """One model family: the path of its block list, the MLP inside a block and its matrices."""

    name: str
    blocks: str  # the nn.ModuleList of blocks, relative to the causal LM ("transformer.h")
    mlp: str  # the MLP, relative to a block ("mlp")
    widening: tuple[str, ...]  # (out = inner, in = hidden)
    narrowing: tuple[str, ...]  # (out = hidden, in = inner)
    dense_layer: type[nn.Module]  # what an uncompressed MLP matrix is
    stores_in_out: bool  # the dense layer keeps its weight as (in, out) (GPT-2's Conv1D)
    positions: str | None  # learned position embeddings, if any ("transformer.wpe"; Llama's RoPE has none)
    description: str  # for messages

    @property
    def matrices(self) -> tuple[str, ...]:
        """The MLP matrices of a block, in the order the MLP applies them."""
        return self.widening + self.narrowing

    def path(self, block: int, matrix: str) -> str:
        """The module path of one MLP matrix, relative to the causal LM."""
        return f"{self.blocks}.{block}.{self.mlp}.{matrix}"

    def dense_weight(self, module: nn.Module) -> torch.Tensor:
        """A dense MLP layer's weight in (out, in) orientation (a view, not a copy)."""
        return module.weight.T if self.stores_in_out else module.weight

    def stored_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """An (out, in) weight in the orientation this family's dense layer stores."""
        return weight.T.contiguous() if self.stores_in_out else weight


FAMILIES: tuple[Family, ...] = (
    Family("gpt2", "transformer.h", "mlp", ("c_fc",), ("c_proj",), Conv1D, True, "transformer.wpe",
           "GPT-2 (Conv1D c_fc/c_proj: gpt2, gpt2-medium/large/xl, distilgpt2)"),
    Family("llama", "model.layers", "mlp", ("gate_proj", "up_proj"), ("down_proj",), nn.Linear, False, None,
           "Llama-style gated MLPs (nn.Linear gate_proj/up_proj/down_proj: Llama, Mistral, Qwen2/Qwen3, SmolLM2)"),
)


def supported_families() -> str:
    """The supported families, for messages."""
    return "; ".join(f.description for f in FAMILIES)


@dataclass(frozen=True)
class MlpSite:
    """One MLP matrix of a model: where it is and its (out, in) shape."""

    path: str
    block: int
    name: str
    out_features: int
    in_features: int
    widening: bool

    def oriented(self, a_shape: tuple[int, int]) -> tuple[int, int]:
        """This matrix's A shape for a scheme's A (given for the widening matrices; narrowing ones transpose it)."""
        return tuple(a_shape) if self.widening else tuple(a_shape[::-1])


@dataclass(frozen=True)
class MlpLayout:
    """The MLP matrices of a model, block by block, and their shapes (every block alike)."""

    family: Family
    blocks: int
    hidden: int
    inner: int

    @property
    def matrix_params(self) -> int:
        """Dense parameters of one MLP matrix (bias not counted)."""
        return self.hidden * self.inner

    def sites(self, layers: list[int] | None = None, modules: tuple[str, ...] | None = None) -> list[MlpSite]:
        """The selected MLP matrices (every block and matrix by default), in block order."""
        family = self.family
        chosen = range(self.blocks) if layers is None else layers
        names = family.matrices if modules is None else modules
        return [MlpSite(family.path(i, name), i, name,
                        *((self.inner, self.hidden) if name in family.widening else (self.hidden, self.inner)),
                        name in family.widening)
                for i in chosen for name in family.matrices if name in names]


def find_family(model: nn.Module, strip: str = "") -> Family | None:
    """The family whose block list and MLP matrix names `model` has, or None. `strip`: the prefix of the family's
    paths that `model` lacks (a bare body without its causal LM: "model.")."""
    for family in FAMILIES:
        try:
            blocks = model.get_submodule(family.blocks.removeprefix(strip))
            mlp = blocks[0].get_submodule(family.mlp) if isinstance(blocks, nn.ModuleList) and len(blocks) else None
        except (AttributeError, IndexError):
            continue
        if mlp is not None and all(isinstance(getattr(mlp, name, None), nn.Module) for name in family.matrices):
            return family
    return None


def family_of(model: nn.Module, name: str | None = None) -> Family:
    """The family of `model`, refused in one line naming the supported families when it has none."""
    family = find_family(model)
    if family is None:
        what = f"{name} ({type(model).__name__})" if name else type(model).__name__
        raise KronyptError(f"{what} is not a model kronypt can compress; supported families: {supported_families()}")
    return family


def mlp_layout(model: nn.Module, name: str | None = None) -> MlpLayout:
    """The MLP layout of a causal LM (its family, number of blocks, hidden and inner sizes), checked to have the
    same MLP shapes in every block."""
    family = family_of(model, name)
    blocks = model.get_submodule(family.blocks)
    shapes = {(i, matrix): _out_in(blocks[i].get_submodule(family.mlp).get_submodule(matrix))
              for i in range(len(blocks)) for matrix in family.matrices}
    inner, hidden = shapes[(0, family.widening[0])]
    expected = {(i, m): (inner, hidden) if m in family.widening else (hidden, inner) for i, m in shapes}
    if shapes != expected:
        odd = next(key for key in shapes if shapes[key] != expected[key])
        raise KronyptError(f"{family.path(*odd)} is {shapes[odd][0]}x{shapes[odd][1]} (out x in), not "
                           f"{expected[odd][0]}x{expected[odd][1]} like block 0's: kronypt needs the same MLP "
                           "shapes in every block")
    return MlpLayout(family, len(blocks), hidden, inner)


def _out_in(module: nn.Module) -> tuple[int, int]:
    """(out, in) of a dense or compressed MLP matrix."""
    if hasattr(module, "out_features") and hasattr(module, "in_features"):
        return module.out_features, module.in_features
    if isinstance(module, Conv1D):
        return module.nf, module.nx
    raise KronyptError(f"cannot tell the shape of {type(module).__name__}: not a linear layer")
