"""Schemes: which Kronecker shapes to give a model's MLP matrices, and what each costs.

A scheme names the A-factor shape (m1, n1) of the widening MLP matrices (GPT-2's c_fc, Llama's gate_proj
and up_proj) in (out = inner, in = hidden) orientation and the number of factors k; the narrowing matrices
(c_proj, down_proj) use the transposed shapes, so every MLP matrix has the same parameter count. Model size
= dense size − replaced MLP weights + their factors. The paper's named schemes describe GPT-2 124M's c_fc,
(out, in) = (3072, 768); every other shape gets unnamed rows from the same enumeration.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn
from transformers import PretrainedConfig

from kronypt.errors import KronyptError
from kronypt.math.decompose import check_factors
from kronypt.math.shapes import KronShape, kron_factor_shapes, kron_shape
from kronypt.models.families import MlpLayout, mlp_layout
from kronypt.nn.compressed import is_compressed_layer, layer_params

# The paper's model classes for GPT-2 124M: name -> (A shape of c_fc, factors).
SCHEMES: dict[str, tuple[tuple[int, int], int]] = {
    "67M": ((64, 32), 1),
    "67M-alt": ((128, 64), 1),
    "MF1": ((256, 64), 1),
    "MF2": ((1024, 256), 1),
    "80M-2": ((1024, 256), 2),
    "81M": ((768, 768), 1),
    "81M-alt": ((1536, 384), 1),
    "86M": ((1024, 768), 1),
    "86M-3": ((1024, 256), 3),
    "92M-4": ((1024, 256), 4),
    "96M": ((1536, 768), 1),
    "96M-prune": ((3072, 384), 1),
}
SCHEME_FAMILY, SCHEME_MLP_SHAPE = "gpt2", (3072, 768)  # what the names describe: GPT-2 124M's c_fc (out, in)
SCHEME_INITS = {"96M-prune": "prune"}  # schemes whose paper recipe uses a particular init


@dataclass(frozen=True)
class ModelSize:
    """What planning needs to know of a model: its MLP layout and its dense parameter count."""

    layout: MlpLayout
    dense_params: int

    @property
    def base_params(self) -> int:
        """Parameters outside the MLP weight matrices."""
        return self.dense_params - self.matrices * self.layout.matrix_params

    @property
    def matrices(self) -> int:
        return self.layout.blocks * len(self.layout.family.matrices)

    @property
    def named(self) -> bool:
        """Whether the paper's scheme names describe this model's MLP."""
        layout = self.layout
        return layout.family.name == SCHEME_FAMILY and (layout.inner, layout.hidden) == SCHEME_MLP_SHAPE


@dataclass(frozen=True)
class PlanRow:
    """One candidate scheme for a model: shapes, parameter counts, rank and cost."""

    name: str | None
    a_shape: tuple[int, int]
    b_shape: tuple[int, int]
    factors: int
    scalars: bool
    params_per_matrix: int
    model_params: int
    mlp_ratio: float  # params_per_matrix / dense params of the matrix
    max_rank: int
    flops_per_token_a_first: int
    flops_per_token_b_first: int
    flops_ratio: float  # best factored FLOPs / dense FLOPs, per MLP matrix
    compresses: bool

    def to_json(self) -> dict:
        return asdict(self)


def count_params(model: nn.Module) -> int:
    """Parameters of a model, shared (tied) tensors counted once."""
    return sum(p.numel() for p in model.parameters())


def model_size(model: nn.Module, layout: MlpLayout | None = None) -> ModelSize:
    """A model's MLP layout and dense parameter count (its compressed layers counted as the dense matrices they
    replace; tied tensors once)."""
    layout = layout or mlp_layout(model)
    saved = sum(layout.matrix_params - layer_params(m) for m in model.modules() if is_compressed_layer(m))
    return ModelSize(layout, count_params(model) + saved)


def config_size(config: PretrainedConfig, name: str | None = None) -> ModelSize:
    """`model_size` of the model a config describes, built on the meta device (no memory, no weights); a
    config of an unsupported family is refused here, before any weights load."""
    from kronypt.models.modeling import meta_model

    model = meta_model(config)
    return model_size(model, mlp_layout(model, name))


def scheme_names() -> list[str]:
    return list(SCHEMES)


def canonical_scheme(name: str) -> str:
    """The SCHEMES key a user's spelling names: case-insensitive, a space may stand for the hyphen."""
    wanted = name.strip().lower().replace(" ", "-")
    for key in SCHEMES:
        if key.lower() == wanted:
            return key
    raise KronyptError(f"unknown scheme {name!r}; choose one of {', '.join(SCHEMES)}")


def resolve_scheme(name: str) -> tuple[tuple[int, int], int]:
    """(A shape of c_fc, factors) of a named scheme (any spelling `canonical_scheme` accepts)."""
    return SCHEMES[canonical_scheme(name)]


def scheme_name(a_shape: tuple[int, int], factors: int) -> str | None:
    for key, (shape, k) in SCHEMES.items():
        if shape == tuple(a_shape) and k == factors:
            return key
    return None


def widening_shape(size: ModelSize, a_shape: tuple[int, int]) -> KronShape:
    """The factorisation of the widening matrices with A of `a_shape`; a shape that does not divide them is
    refused with the divisors and a pointer to `kronypt plan`."""
    layout = size.layout
    try:
        return kron_shape(layout.inner, layout.hidden, a_shape)
    except KronyptError as exc:
        raise KronyptError(f"{exc}; `kronypt plan MODEL --all` lists every A shape of this model") from None


def plan_row(size: ModelSize, a_shape: tuple[int, int], factors: int = 1, scalars: bool = False) -> PlanRow:
    """The PlanRow of one (A shape, k); refuses A shapes that do not divide the MLP and more factors than the
    shape has independent terms."""
    shape = widening_shape(size, a_shape)
    check_factors(factors, shape.terms())
    return _row(size, shape, factors, scalars)


def plan_rows(size: ModelSize, factors: int = 1, scalars: bool = False) -> list[PlanRow]:
    """Every divisor-pair scheme with `factors` terms, plus the named schemes that fit this model."""
    layout = size.layout
    rows = [_row(size, s, factors, scalars) for s in kron_factor_shapes(layout.inner, layout.hidden)]
    seen = {(r.a_shape, r.factors) for r in rows}
    for shape_a, k in SCHEMES.values() if size.named else ():
        if (shape_a, k) not in seen:
            rows.append(_row(size, kron_shape(layout.inner, layout.hidden, shape_a), k, scalars))
    return sorted(rows, key=lambda r: (r.model_params, r.a_shape))


def pick_for_target(size: ModelSize, target_params: int, factors: int = 1, scalars: bool = False,
                    matrices: int | None = None, already_saved: int = 0) -> PlanRow:
    """The compressing scheme with the most parameters not above `target_params`.

    `matrices` is how many MLP matrices get compressed (default: all); the others count in full, less
    `already_saved` (what earlier compressed layers among them save against dense). Ties go to the higher max
    rank, then the fewer FLOPs, then a named scheme, then the larger A (the paper's convention: 81M is A =
    768x768, B = 4x1, not its mirror image with the same counts). Only schemes with `factors` terms count.
    """
    kept_dense = size.matrices - (size.matrices if matrices is None else matrices)

    def params(row: PlanRow) -> int:  # the row counts every matrix compressed
        return row.model_params + kept_dense * (size.layout.matrix_params - row.params_per_matrix) - already_saved

    candidates = _compressing(size, factors, scalars)
    fitting = [r for r in candidates if params(r) <= target_params]
    if not fitting:
        smallest = min(params(r) for r in candidates)
        raise KronyptError(f"no compressing scheme has at most {target_params:,} parameters; the smallest "
                           f"has {smallest:,}")
    return max(fitting, key=lambda r: (params(r), *_preference(r)))


def pick_for_ratio(size: ModelSize, ratio: float, factors: int = 1, scalars: bool = False) -> PlanRow:
    """The compressing scheme whose MLP matrices keep the fraction of their dense parameters nearest `ratio`
    (ties as `pick_for_target`). Nearest, not at most: the small B factors put exact halves or quarters a few
    parameters above the mark (A 768x576, B 2x1 keeps 0.500002 of a 1536x576 matrix)."""
    check_ratio(ratio)
    candidates = _compressing(size, factors, scalars)
    distance = {r: abs(r.params_per_matrix - ratio * size.layout.matrix_params) for r in candidates}
    nearest = min(distance.values())
    return max((r for r in candidates if distance[r] == nearest), key=_preference)


def check_ratio(ratio: float) -> None:
    if not 0 < ratio < 1:
        raise KronyptError(f"ratio must be between 0 and 1 (the fraction of MLP parameters to keep), got {ratio}")


def _compressing(size: ModelSize, factors: int, scalars: bool) -> list[PlanRow]:
    rows = [r for r in plan_rows(size, factors, scalars) if r.compresses and r.factors == factors]
    if not rows:
        raise KronyptError(f"no A shape with {factors} factors compresses this model's "
                           f"{size.layout.inner}x{size.layout.hidden} MLP matrices")
    return rows


def _preference(row: PlanRow) -> tuple:
    """Among rows of equal size: higher max rank, fewer FLOPs, a named scheme, the larger A."""
    return row.max_rank, -row.flops_ratio, row.name is not None, row.a_shape[0] * row.a_shape[1], row.a_shape


def _row(size: ModelSize, shape: KronShape, k: int, scalars: bool) -> PlanRow:
    per_matrix = shape.params(k, scalars)
    dense_matrix = shape.dense_macs_per_token()
    a_macs, b_macs = shape.macs_per_token(k)
    return PlanRow(
        name=scheme_name(shape.a_shape, k) if size.named else None,
        a_shape=shape.a_shape,
        b_shape=shape.b_shape,
        factors=k,
        scalars=scalars,
        params_per_matrix=per_matrix,
        model_params=size.base_params + size.matrices * per_matrix,
        mlp_ratio=per_matrix / dense_matrix,
        max_rank=shape.max_rank(k),
        flops_per_token_a_first=2 * a_macs,
        flops_per_token_b_first=2 * b_macs,
        flops_ratio=min(a_macs, b_macs) / dense_matrix,
        compresses=shape.compresses(k),
    )
