"""What to compress and how: `CompressionConfig`, and its resolution against a model into one plan per matrix.

A config may name its size in several ways (a scheme, an A shape with k, a parameter budget, a fraction of
the MLP parameters, a k per matrix); `resolve` turns any of them into the same thing, an (A shape, k) for
every selected MLP matrix, so every caller (the CLI, the trainer, the Python API) compresses alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn
from transformers import PretrainedConfig

from kronypt.errors import KronyptError
from kronypt.math.allocate import allocate_terms
from kronypt.math.decompose import kronecker_spectrum
from kronypt.math.shapes import integer_count, shape_pair
from kronypt.models.families import MlpLayout, MlpSite, mlp_layout
from kronypt.models.modeling import meta_model
from kronypt.models.schemes import (
    SCHEME_INITS,
    PlanRow,
    canonical_scheme,
    check_ratio,
    model_size,
    pick_for_ratio,
    pick_for_target,
    plan_row,
    resolve_scheme,
    widening_shape,
)
from kronypt.nn.kronecker_linear import INITS


@dataclass
class CompressionConfig:
    """What to compress and how.

    The size, exactly one of: `scheme` (a named scheme, e.g. "81M"), `a_shape` (the A shape of the widening
    MLP matrices in (out = inner, in = hidden) orientation; narrowing ones get the transposed shapes) with
    `factors` k, `target_params` (the largest scheme with at most this many model parameters) or `ratio` (the
    scheme whose matrices keep the fraction of their parameters nearest it). Or `allocate=True` with a budget
    (`target_params` or `ratio`) and a shape (`scheme` or `a_shape`): one A shape, a k per matrix where terms
    remove the most Van Loan error (`factors` then caps k). `factors_by_module` ({path: k}) sets the k of
    matrices explicitly. `layers` None means every block, `modules` None every MLP matrix of the family.
    """

    scheme: str | None = None
    a_shape: tuple[int, int] | None = None
    factors: int | None = None
    target_params: int | None = None
    ratio: float | None = None
    allocate: bool = False
    factors_by_module: Mapping[str, int] | None = None
    scalars: bool = False
    init: str | None = None  # default: the scheme's, else van-loan
    rescale: bool = False
    prune_fill: float = 0.0
    layers: Sequence[int] | None = None
    modules: Sequence[str] | str | None = None

    def __post_init__(self) -> None:
        if self.scheme is not None:
            self.scheme = canonical_scheme(self.scheme)
        if self.a_shape is not None:
            self.a_shape = shape_pair(self.a_shape)
        if self.factors is not None:
            self.factors = integer_count(self.factors, "factors")
            if self.factors < 1:
                raise KronyptError(f"factors must be at least 1, got {self.factors}")
        if self.target_params is not None:
            self.target_params = integer_count(self.target_params, "target_params")
        if self.ratio is not None:
            check_ratio(self.ratio)
        self._check_size()
        if self.init is None:
            self.init = SCHEME_INITS.get(self.scheme, "van-loan")
        if self.init not in INITS:
            raise KronyptError(f"unknown init {self.init!r}; choose one of {', '.join(INITS)}")
        if self.rescale and self.init != "van-loan":
            raise KronyptError(f"rescale applies to the van-loan init, not {self.init}")
        if self.prune_fill != 0.0 and self.init != "prune":
            raise KronyptError(f"prune_fill applies to the prune init, not {self.init}")
        if not torch.isfinite(torch.tensor(float(self.prune_fill))):
            raise KronyptError(f"prune_fill must be a finite number, got {self.prune_fill}")
        if self.allocate and self.init != "van-loan":
            raise KronyptError(f"factor allocation ranks terms by their Van Loan error; it needs init van-loan, "
                               f"not {self.init}")
        if isinstance(self.modules, str):  # "c_fc" or "gate_proj,up_proj", as the CLI spells them
            self.modules = [m.strip() for m in self.modules.split(",") if m.strip()]
        if self.modules is not None:
            self.modules = tuple(dict.fromkeys(self.modules))  # a name given twice counts once
            if not self.modules:
                raise KronyptError("modules names no MLP matrix")
        if self.layers is not None:
            self.layers = sorted({integer_count(i, "a layer") for i in self.layers})

    def _check_size(self) -> None:
        shape = [name for name in ("scheme", "a_shape") if getattr(self, name) is not None]
        budget = [name for name in ("target_params", "ratio") if getattr(self, name) is not None]
        if self.allocate:
            if len(shape) != 1 or len(budget) != 1:
                raise KronyptError("--allocate needs one budget (--target-params or --ratio) and one of --scheme "
                                   "or --a-shape (the A shape every matrix keeps)")
        elif len(shape) + len(budget) != 1:
            raise KronyptError("give exactly one of --scheme, --a-shape, --target-params or --ratio (or --allocate "
                               "with a budget and a shape)")
        if self.scheme is not None and self.factors is None and not self.allocate:
            self.factors = resolve_scheme(self.scheme)[1]

    @classmethod
    def from_scheme(cls, name: str, **overrides) -> CompressionConfig:
        """A config for a named scheme of the paper (README "Schemes"; e.g. '81M', '96M-prune', '92M-4')."""
        return cls(scheme=name, **overrides)

    def factors_of(self, path: str) -> int:
        """The number of factors of the matrix at `path` (after `resolve`)."""
        return (self.factors_by_module or {}).get(path, self.factors or 1)


@dataclass(frozen=True)
class Resolution:
    """A config resolved against a model: the matrices to compress, the A shape of the widening ones, a k per
    matrix, and the plan row of the uniform k (None when allocated)."""

    config: CompressionConfig
    layout: MlpLayout
    sites: list[MlpSite]
    a_shape: tuple[int, int]
    row: PlanRow | None

    def a_shape_of(self, site: MlpSite) -> tuple[int, int]:
        return self.a_shape if site.widening else self.a_shape[::-1]


def resolve(model: nn.Module, config: CompressionConfig) -> Resolution:
    """Everything `config` leaves open, decided for `model`: which matrices, which A shape, which k each."""
    layout = mlp_layout(model)
    sites = _selected_sites(model, layout, config)
    size = model_size(model, layout)
    k = config.factors or 1
    if config.scheme is not None:
        a_shape = resolve_scheme(config.scheme)[0]
    elif config.a_shape is not None:
        a_shape = config.a_shape
    elif config.target_params is not None:
        a_shape = pick_for_target(size, config.target_params, k, config.scalars, matrices=len(sites),
                                  already_saved=size.dense_params - _count(model)).a_shape
    else:
        a_shape = pick_for_ratio(size, config.ratio, k, config.scalars).a_shape
    widening_shape(size, a_shape)  # refuses shapes that do not divide, with a pointer to `kronypt plan`
    if config.allocate:
        config = replace(config, factors_by_module=_allocate(model, layout, sites, a_shape, config))
    row = None if config.allocate or config.factors_by_module else plan_row(size, a_shape, k, config.scalars)
    for path, factors in (config.factors_by_module or {}).items():
        plan_row(size, a_shape, integer_count(factors, f"factors of {path}"), config.scalars)
    per_matrix = config.allocate or bool(config.factors_by_module)
    return Resolution(replace(config, factors=None if per_matrix else k), layout, sites, a_shape, row)


def preflight(model_config: PretrainedConfig, config: CompressionConfig, name: str | None = None) -> Resolution:
    """`resolve` against the model a config describes, built on the meta device: a bad scheme, an unsupported
    family or a layer out of range is refused before any weights load. An allocation needs the weights, so
    only its shape and selection are checked here."""
    model = meta_model(model_config)
    mlp_layout(model, name)  # an unsupported family is named as such
    if config.allocate:
        config = replace(config, allocate=False, target_params=None, ratio=None)
    return resolve(model, config)


def allocate_factors(model: nn.Module, config: CompressionConfig) -> CompressionConfig:
    """The explicit per-matrix config (`a_shape` and `factors_by_module`) that `config` (with `allocate`) comes to
    for `model`: the most Van Loan error removed (summed squared relative errors, `kronypt.math.allocate`) within
    the budget."""
    if not config.allocate:
        raise KronyptError("allocate_factors needs a config with allocate=True, a budget and a shape")
    counts = resolve(model, config).config.factors_by_module
    return replace(config, allocate=False, target_params=None, ratio=None, factors=None, factors_by_module=counts)


def _allocate(model: nn.Module, layout: MlpLayout, sites: list[MlpSite], a_shape: tuple[int, int],
              config: CompressionConfig) -> dict[str, int]:
    shape = widening_shape(model_size(model, layout), a_shape)  # the narrowing ones' is its transpose: same counts
    saving = max((k for k in range(1, shape.terms() + 1) if shape.compresses(k)), default=1)
    cap = saving if config.factors is None else min(config.factors, saving)
    rest = _count(model) - len(sites) * layout.matrix_params
    if config.target_params is not None:
        budget = config.target_params
    else:
        budget = _count(model) - round((1 - config.ratio) * len(sites) * layout.matrix_params)
    per_term = shape.params(1, config.scalars)
    if (budget - rest) // per_term < len(sites):
        raise KronyptError(f"a model of at most {budget:,} parameters cannot give each of the {len(sites)} "
                           f"matrices one factor of A {shape.m1}x{shape.n1}: that needs "
                           f"{rest + len(sites) * per_term:,}")
    family = layout.family
    spectra = {site.path: kronecker_spectrum(family.dense_weight(model.get_submodule(site.path)).detach(),
                                             a_shape if site.widening else a_shape[::-1]) for site in sites}
    return allocate_terms(spectra, (budget - rest) // per_term, max_factors=cap)


def _selected_sites(model: nn.Module, layout: MlpLayout, config: CompressionConfig) -> list[MlpSite]:
    """The matrices `config` selects, checked to exist and to be dense."""
    family = layout.family
    if config.modules is not None:
        unknown = [m for m in config.modules if m not in family.matrices]
        if unknown:
            raise KronyptError(f"unknown MLP modules {unknown} for a {family.name}-family model; choose from "
                               f"{', '.join(family.matrices)}")
    if config.layers is not None and (not config.layers or config.layers[0] < 0
                                      or config.layers[-1] >= layout.blocks):
        raise KronyptError(f"layers {list(config.layers)} out of range: this model has blocks 0..{layout.blocks - 1}")
    sites = layout.sites(config.layers, config.modules)
    for site in sites:
        module = model.get_submodule(site.path)
        if not isinstance(module, family.dense_layer):
            raise KronyptError(f"{site.path} is already compressed ({type(module).__name__})")
    unknown = set(config.factors_by_module or {}) - {site.path for site in sites}
    if unknown and not config.allocate:
        raise KronyptError(f"factors_by_module names {sorted(unknown)[0]}, which is not a selected MLP matrix")
    return sites


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
