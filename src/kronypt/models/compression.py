"""What to compress and how: `CompressionConfig`, and its resolution against a model.

A config names a method (Kronecker factors, low-rank factors, or dropping whole blocks), a fit (to the weights,
or to what calibration inputs make of them), and a size in one of several ways (a scheme, an A shape with k, a
parameter budget, a fraction of the MLP parameters, a rank, a k per matrix). `resolve` turns any of them into
the same thing: a layer spec for every selected MLP matrix, or the blocks to drop, so every caller (the CLI,
the trainer, `kronypt study`, the Python API) compresses alike. Budget-driven allocations that need the weights
or calibration data (`allocate`, `allocation="sensitivity"`) are finished by `kronypt.models.allocation`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from torch import nn
from transformers import PretrainedConfig

from kronypt.errors import KronyptError
from kronypt.math.shapes import integer_count, shape_pair
from kronypt.models.families import MlpLayout, MlpSite, mlp_layout
from kronypt.models.modeling import meta_model
from kronypt.models.schemes import (
    SCHEME_INITS,
    ModelSize,
    PlanRow,
    canonical_scheme,
    check_ratio,
    count_params,
    model_size,
    pick_for_ratio,
    pick_for_target,
    plan_row,
    resolve_scheme,
    widening_shape,
)
from kronypt.nn.kronecker_linear import INITS
from kronypt.nn.low_rank import LowRankLinear

METHODS = ("kronecker", "low-rank", "drop-blocks")
FITS = ("weights", "activations")  # minimise ‖W − Ŵ‖, or ‖(W − Ŵ)Xᵀ‖ over calibration inputs X
ALLOCATIONS = ("uniform", "sensitivity")  # every matrix alike, or a level per block by measured loss
DROPS = ("importance", "every-other")  # ShortGPT's block influence on calibration text, or DistilGPT2's spread


@dataclass
class CompressionConfig:
    """What to compress and how.

    `method`: "kronecker" (W ≈ Σ A_i ⊗ B_i), "low-rank" (W ≈ U·V) or "drop-blocks" (remove whole blocks, chosen
    by `drop`). `fit`: "weights", or "activations" (minimise the error of the matrix's outputs on calibration
    inputs; needs calibration data). `allocation`: "uniform", or "sensitivity" (with a budget and calibration data:
    some blocks dense, others compressed harder, where the measured loss rises least).

    The size, exactly one of: `scheme` (a named scheme, e.g. "81M"), `a_shape` (the A shape of the widening MLP
    matrices in (out = inner, in = hidden) orientation; narrowing ones get the transposed shapes) with `factors`
    k, `target_params` (the largest size with at most this many model parameters), `ratio` (keep the fraction of
    the MLP parameters nearest it) or `rank` (low-rank). A low-rank or drop-blocks config given a scheme or A
    shape matches that Kronecker configuration's parameter count as nearly as it can. `allocate=True` (Kronecker)
    with a budget and a shape: one A shape, a k per matrix where terms remove the most Van Loan error (`factors`
    then caps k); `factors_by_module` ({path: k}) sets the k of matrices explicitly. `layers` None means every
    block, `modules` None every MLP matrix of the family.
    """

    method: str = "kronecker"
    scheme: str | None = None
    a_shape: tuple[int, int] | None = None
    factors: int | None = None
    target_params: int | None = None
    ratio: float | None = None
    rank: int | None = None
    allocate: bool = False
    factors_by_module: Mapping[str, int] | None = None
    fit: str = "weights"
    allocation: str = "uniform"
    drop: str = "importance"
    scalars: bool = False
    init: str | None = None  # default: the scheme's, else van-loan
    rescale: bool = False
    prune_fill: float = 0.0
    layers: Sequence[int] | None = None
    modules: Sequence[str] | str | None = None

    def __post_init__(self) -> None:
        for name, allowed in (("method", METHODS), ("fit", FITS), ("allocation", ALLOCATIONS), ("drop", DROPS)):
            if getattr(self, name) not in allowed:
                raise KronyptError(f"unknown {name} {getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        if self.scheme is not None:
            self.scheme = canonical_scheme(self.scheme)
        if self.a_shape is not None:
            self.a_shape = shape_pair(self.a_shape)
        for name in ("factors", "rank", "target_params"):
            if getattr(self, name) is not None:
                setattr(self, name, integer_count(getattr(self, name), name))
                if getattr(self, name) < 1:
                    raise KronyptError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.ratio is not None:
            check_ratio(self.ratio)
        self._check_size()
        self._check_method()
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
        sizes = len(shape) + len(budget) + (self.rank is not None)
        if self.allocate:
            if len(shape) != 1 or len(budget) != 1 or self.rank is not None:
                raise KronyptError("--allocate needs one budget (--target-params or --ratio) and one of --scheme "
                                   "or --a-shape (the A shape every matrix keeps)")
        elif self.allocation == "sensitivity":
            if len(budget) != 1 or sizes != 1:
                raise KronyptError("--allocation sensitivity needs a budget (--target-params or --ratio) and no "
                                   "other size: it picks a size per block")
        elif sizes != 1:
            raise KronyptError("give exactly one of --scheme, --a-shape, --target-params, --ratio or --rank (or "
                               "--allocate with a budget and a shape)")
        if self.rank is not None and self.method != "low-rank":
            raise KronyptError("--rank sizes low-rank factors; use --method low-rank")
        if self.scheme is not None and self.factors is None and not self.allocate:
            self.factors = resolve_scheme(self.scheme)[1]

    def _check_method(self) -> None:
        if self.init is None:
            self.init = SCHEME_INITS.get(self.scheme, "van-loan") if self.method == "kronecker" else "van-loan"
        if self.init not in INITS:
            raise KronyptError(f"unknown init {self.init!r}; choose one of {', '.join(INITS)}")
        if self.method != "kronecker" and (self.init != "van-loan" or self.scalars or self.allocate or self.rescale):
            raise KronyptError(f"--init, --scalars, --allocate and --rescale are Kronecker settings, not "
                               f"{self.method}'s")
        if self.method == "drop-blocks" and (self.fit != "weights" or self.allocation != "uniform"
                                             or self.modules is not None):
            raise KronyptError("drop-blocks removes whole blocks: --fit, --allocation and --modules do not apply")
        if self.fit == "activations" and self.init != "van-loan":
            raise KronyptError(f"the activation-aware fit replaces the van-loan init; --init {self.init} fits the "
                               "weights")
        if self.rescale and self.init != "van-loan":
            raise KronyptError(f"rescale applies to the van-loan init, not {self.init}")
        if self.prune_fill != 0.0 and self.init != "prune":
            raise KronyptError(f"prune_fill applies to the prune init, not {self.init}")
        if not math.isfinite(self.prune_fill):
            raise KronyptError(f"prune_fill must be a finite number, got {self.prune_fill}")
        if self.allocate and self.init != "van-loan":
            raise KronyptError(f"factor allocation ranks terms by their Van Loan error; it needs init van-loan, "
                               f"not {self.init}")

    @property
    def needs_calibration(self) -> bool:
        """Whether compressing needs calibration data (activation-aware fits, sensitivity, block importance)."""
        return (self.fit == "activations" or self.allocation == "sensitivity"
                or (self.method == "drop-blocks" and self.drop == "importance"))

    @classmethod
    def from_scheme(cls, name: str, **overrides) -> CompressionConfig:
        """A config for a named scheme of the paper (README "Schemes"; e.g. '81M', '96M-prune', '92M-4')."""
        return cls(scheme=name, **overrides)

    def factors_of(self, path: str) -> int:
        """The number of factors of the matrix at `path` (after `resolve`)."""
        return (self.factors_by_module or {}).get(path, self.factors or 1)


@dataclass(frozen=True)
class Resolution:
    """A config resolved against a model: the selected matrices, a layer spec for each one compressed (its A shape
    in its own orientation), how many blocks to drop, and the plan row of a uniform Kronecker size (None
    otherwise). Allocations fill `specs` later (`kronypt.models.allocation`)."""

    config: CompressionConfig
    layout: MlpLayout
    size: ModelSize
    sites: list[MlpSite]
    specs: dict[str, dict] = field(default_factory=dict)
    drop_count: int = 0
    row: PlanRow | None = None
    a_shape: tuple[int, int] | None = None


def resolve(model: nn.Module, config: CompressionConfig) -> Resolution:
    """Everything `config` leaves open that needs neither the weights nor calibration data, decided for `model`."""
    layout = mlp_layout(model)
    size = model_size(model, layout)
    if config.method == "drop-blocks":
        _check_layers(config, layout)
        return Resolution(config, layout, size, [], drop_count=_blocks_to_drop(model, layout, size, config))
    sites = _selected_sites(model, layout, config)
    if config.allocation == "sensitivity":
        return Resolution(config, layout, size, sites)
    if config.method == "low-rank":
        rank = low_rank_for(model, layout, size, config, len(sites))
        return Resolution(config, layout, size, sites, {s.path: {"method": "low-rank", "rank": rank} for s in sites})
    return _kronecker(model, config, layout, size, sites)


def _kronecker(model: nn.Module, config: CompressionConfig, layout: MlpLayout, size: ModelSize,
               sites: list[MlpSite]) -> Resolution:
    k = config.factors or 1
    row = None
    if config.scheme is not None or config.a_shape is not None:
        a_shape = config.a_shape or resolve_scheme(config.scheme)[0]
    elif config.target_params is not None:
        a_shape = pick_for_target(size, config.target_params, k, config.scalars, matrices=len(sites),
                                  already_saved=size.dense_params - count_params(model)).a_shape
    else:
        a_shape = pick_for_ratio(size, config.ratio, k, config.scalars).a_shape
    widening_shape(size, a_shape)  # refuses shapes that do not divide, with a pointer to `kronypt plan`
    per_matrix = config.allocate or bool(config.factors_by_module)
    if not per_matrix:
        row = plan_row(size, a_shape, k, config.scalars)
    for path, factors in (config.factors_by_module or {}).items():
        plan_row(size, a_shape, integer_count(factors, f"factors of {path}"), config.scalars)
    if not per_matrix:  # with an allocation, `factors` stays the cap on k (`allocation.fill_factors`)
        config = replace(config, factors=k)
    specs = {site.path: kronecker_spec(site.oriented(a_shape), config.factors_of(site.path), config.scalars)
             for site in sites}
    return Resolution(config, layout, size, sites, specs, row=row, a_shape=a_shape)


def kronecker_spec(a_shape: tuple[int, int], factors: int, scalars: bool) -> dict:
    return {"method": "kronecker", "a_shape": list(a_shape), "factors": factors, "scalars": scalars}


def low_rank_for(model: nn.Module, layout: MlpLayout, size: ModelSize, config: CompressionConfig,
                 matrices: int) -> int:
    """The rank of every selected matrix: as given; nearest the fraction `ratio` or a Kronecker configuration's
    parameters; the largest within `target_params`."""
    out_in = layout.inner + layout.hidden
    if config.rank is not None:
        rank = config.rank
    elif config.target_params is not None:
        rest = count_params(model) - matrices * layout.matrix_params
        rank = (config.target_params - rest) // matrices // out_in
    else:
        rank = round(_matrix_budget(size, config) / out_in)
    if not 1 <= rank <= min(layout.inner, layout.hidden):
        raise KronyptError(f"that size gives rank {rank}; a {layout.inner}x{layout.hidden} matrix takes ranks 1.."
                           f"{min(layout.inner, layout.hidden)}")
    if LowRankLinear.params(layout.inner, layout.hidden, rank) >= layout.matrix_params:
        raise KronyptError(f"rank {rank} factors of a {layout.inner}x{layout.hidden} matrix are no smaller than it")
    return rank


def _matrix_budget(size: ModelSize, config: CompressionConfig) -> float:
    """Parameters per matrix that a ratio or a Kronecker configuration names."""
    if config.ratio is not None:
        return config.ratio * size.layout.matrix_params
    a_shape = config.a_shape or resolve_scheme(config.scheme)[0]
    return plan_row(size, a_shape, config.factors or 1).params_per_matrix


def _blocks_to_drop(model: nn.Module, layout: MlpLayout, size: ModelSize, config: CompressionConfig) -> int:
    """How many blocks to remove: the fewest within `target_params`, else the nearest to the parameters the
    ratio or Kronecker configuration saves (which ones: `kronypt.models.dropping`)."""
    block = _block_params(model, layout)
    if config.target_params is not None:
        count = math.ceil((count_params(model) - config.target_params) / block)
    else:
        saving = (1 - config.ratio) * size.matrices * layout.matrix_params if config.ratio is not None else (
            size.matrices * (layout.matrix_params - _matrix_budget(size, config)))
        count = round(saving / block)
    candidates = layout.blocks if config.layers is None else len(config.layers)
    if not 1 <= count < layout.blocks or count > candidates:
        raise KronyptError(f"that size means dropping {count} of {layout.blocks} blocks"
                           + (f" ({candidates} allowed by --layers)" if config.layers is not None else ""))
    return count


def _block_params(model: nn.Module, layout: MlpLayout) -> int:
    return sum(p.numel() for p in model.get_submodule(layout.family.blocks)[0].parameters())


def preflight(model_config: PretrainedConfig, config: CompressionConfig, name: str | None = None) -> Resolution:
    """`resolve` against the model a config describes, built on the meta device: a bad scheme, an unsupported
    family or a layer out of range is refused before any weights load. An allocation needs the weights, so
    only its shape and selection are checked here."""
    model = meta_model(model_config)
    mlp_layout(model, name)  # an unsupported family is named as such
    if config.allocate:
        config = replace(config, allocate=False, target_params=None, ratio=None)
    return resolve(model, config)


def _selected_sites(model: nn.Module, layout: MlpLayout, config: CompressionConfig) -> list[MlpSite]:
    """The matrices `config` selects, checked to exist and to be dense."""
    family = layout.family
    if config.modules is not None:
        unknown = [m for m in config.modules if m not in family.matrices]
        if unknown:
            raise KronyptError(f"unknown MLP modules {unknown} for a {family.name}-family model; choose from "
                               f"{', '.join(family.matrices)}")
    _check_layers(config, layout)
    sites = layout.sites(config.layers, config.modules)
    for site in sites:
        module = model.get_submodule(site.path)
        if not isinstance(module, family.dense_layer):
            raise KronyptError(f"{site.path} is already compressed ({type(module).__name__})")
    unknown = set(config.factors_by_module or {}) - {site.path for site in sites}
    if unknown and not config.allocate:
        raise KronyptError(f"factors_by_module names {sorted(unknown)[0]}, which is not a selected MLP matrix")
    return sites


def _check_layers(config: CompressionConfig, layout: MlpLayout) -> None:
    if config.layers is not None and (not config.layers or config.layers[0] < 0
                                      or config.layers[-1] >= layout.blocks):
        raise KronyptError(f"layers {list(config.layers)} out of range: this model has blocks 0..{layout.blocks - 1}")
