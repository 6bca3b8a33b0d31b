"""Schemes: which Kronecker shapes to use for a GPT-2-family model, and what each costs.

A scheme names the A-factor shape (m1, n1) of `c_fc` in (out=n_inner, in=n_embd) orientation and the
number of factors k; `c_proj` (n_embd, n_inner) uses the transposed shapes, so both matrices of a block
have the same parameter count. Model size = dense size − replaced MLP weights + their factors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from kronypt.errors import KronyptError
from kronypt.math.decompose import check_factors
from kronypt.math.shapes import KronShape, kron_factor_shapes, kron_shape

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
# The names describe GPT-2 124M's c_fc, (out, in) = (3072, 768); other widths get unnamed rows.
SCHEME_MLP_SHAPE = (3072, 768)
# Schemes whose paper recipe uses a particular init.
SCHEME_INITS = {"96M-prune": "prune"}


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
    max_rank: int
    flops_per_token_a_first: int
    flops_per_token_b_first: int
    flops_ratio: float  # best factored FLOPs / dense FLOPs, per MLP matrix
    compresses: bool

    def to_json(self) -> dict:
        return asdict(self)


def mlp_dims(config: GPT2Config) -> tuple[int, int, int]:
    """(n_layer, n_embd, n_inner) of a GPT-2 config."""
    inner = config.n_inner if config.n_inner is not None else 4 * config.n_embd
    return config.n_layer, config.n_embd, inner


def dense_params(config: GPT2Config) -> int:
    """Parameters of the dense model (tied embeddings counted once), computed without allocating."""
    with torch.device("meta"):
        model = GPT2LMHeadModel(config)
    return sum(p.numel() for p in model.parameters())


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


def plan_row(config: GPT2Config, a_shape: tuple[int, int], factors: int = 1, scalars: bool = False,
             base_params: int | None = None) -> PlanRow:
    """The PlanRow of one (A shape, k) for a model config; refuses A shapes that do not divide c_fc and
    more factors than the shape has independent terms."""
    n_layer, n_embd, inner = mlp_dims(config)
    shape = kron_shape(inner, n_embd, a_shape)
    check_factors(factors, shape.terms())
    return _row(shape, factors, scalars, n_layer, base_params if base_params is not None else dense_params(config))


def plan_rows(config: GPT2Config, factors: int = 1, scalars: bool = False) -> list[PlanRow]:
    """Every divisor-pair scheme with `factors` terms, plus the named schemes that fit this model."""
    n_layer, n_embd, inner = mlp_dims(config)
    base = dense_params(config)
    rows = [_row(s, factors, scalars, n_layer, base) for s in kron_factor_shapes(inner, n_embd)]
    seen = {(r.a_shape, r.factors) for r in rows}
    for shape_a, k in SCHEMES.values() if (inner, n_embd) == SCHEME_MLP_SHAPE else ():
        if (shape_a, k) not in seen:
            rows.append(_row(kron_shape(inner, n_embd, shape_a), k, scalars, n_layer, base))
    return sorted(rows, key=lambda r: (r.model_params, r.a_shape))


def pick_for_target(config: GPT2Config, target_params: int, factors: int = 1,
                    scalars: bool = False, matrices: int | None = None, already_saved: int = 0) -> PlanRow:
    """The compressing scheme with the most parameters not above `target_params`.

    `matrices` is how many MLP matrices get compressed (default: all, two per block); the others count in
    full, less `already_saved` (what earlier Kronecker layers among them save against dense). Ties go to the
    higher max rank, then the fewer FLOPs, then a named scheme, then the larger A (the paper's convention:
    81M is A = 768x768, B = 4x1, not its mirror image with the same counts). Only schemes with `factors`
    terms are considered.
    """
    n_layer, n_embd, inner = mlp_dims(config)
    kept_dense = 2 * n_layer - (2 * n_layer if matrices is None else matrices)

    def params(row: PlanRow) -> int:  # the row counts every matrix compressed
        return row.model_params + kept_dense * (inner * n_embd - row.params_per_matrix) - already_saved

    candidates = [r for r in plan_rows(config, factors, scalars) if r.compresses and r.factors == factors]
    fitting = [r for r in candidates if params(r) <= target_params]
    if not fitting:
        smallest = min(params(r) for r in candidates)
        raise KronyptError(f"no compressing scheme has at most {target_params:,} parameters; the smallest "
                           f"has {smallest:,}")
    return max(fitting, key=lambda r: (params(r), r.max_rank, -r.flops_ratio, r.name is not None,
                                       r.a_shape[0] * r.a_shape[1], r.a_shape))


def _row(shape: KronShape, k: int, scalars: bool, n_layer: int, base: int) -> PlanRow:
    per_matrix = shape.params(k, scalars)
    dense_matrix = shape.dense_macs_per_token()
    a_macs, b_macs = shape.macs_per_token(k)
    named = (shape.out_features, shape.in_features) == SCHEME_MLP_SHAPE
    return PlanRow(
        name=scheme_name(shape.a_shape, k) if named else None,
        a_shape=shape.a_shape,
        b_shape=shape.b_shape,
        factors=k,
        scalars=scalars,
        params_per_matrix=per_matrix,
        model_params=base - 2 * n_layer * dense_matrix + 2 * n_layer * per_matrix,
        max_rank=shape.max_rank(k),
        flops_per_token_a_first=2 * a_macs,
        flops_per_token_b_first=2 * b_macs,
        flops_ratio=min(a_macs, b_macs) / dense_matrix,
        compresses=shape.compresses(k),
    )
