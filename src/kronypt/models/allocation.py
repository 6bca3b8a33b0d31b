"""Spend a parameter budget where it helps most: a k per matrix by the Van Loan error it removes
(`allocate_factors`), or a size per block by the loss it costs on calibration data (`allocate_by_sensitivity`).

Sensitivity: for every block and every level (the fraction of its MLP parameters kept: 1/2, 1/4, 1/8, 1/16),
the block's MLP alone is compressed at that level and the calibration loss measured; then the levels are chosen
block by block (dense included) to add the least loss within the budget, an exact multiple-choice knapsack
over the few distinct parameter totals. The loss increases of single blocks are treated as additive.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from torch import nn
from tqdm.auto import tqdm

from kronypt.errors import KronyptError
from kronypt.math.allocate import allocate_terms
from kronypt.math.decompose import kronecker_spectrum
from kronypt.math.shapes import kron_shape
from kronypt.models.calibration import Calibration, mean_loss
from kronypt.models.compression import CompressionConfig, Resolution, kronecker_spec, resolve
from kronypt.models.families import MlpSite
from kronypt.models.schemes import count_params, pick_for_ratio, widening_shape
from kronypt.nn.low_rank import LowRankLinear

LEVELS = (0.5, 0.25, 0.125, 0.0625)
SENSITIVITY_WINDOWS = 8  # calibration windows each loss is measured on (the same ones every time: paired)
Fitter = Callable[[MlpSite, dict], nn.Module]  # (site, spec) -> a fitted layer


def allocate_factors(model: nn.Module, config: CompressionConfig) -> CompressionConfig:
    """The explicit per-matrix config (`a_shape` and `factors_by_module`) that `config` (with `allocate`) comes to
    for `model`: the most Van Loan error removed (summed squared relative errors, `kronypt.math.allocate`) within
    the budget."""
    if not config.allocate:
        raise KronyptError("allocate_factors needs a config with allocate=True, a budget and a shape")
    counts = {path: spec["factors"] for path, spec in fill_factors(model, resolve(model, config)).specs.items()}
    return replace(config, allocate=False, target_params=None, ratio=None, factors=None, factors_by_module=counts)


def fill_factors(model: nn.Module, plan: Resolution) -> Resolution:
    """`plan` (an `allocate` config resolved) with each matrix's number of factors decided from its spectrum."""
    config, layout, sites = plan.config, plan.layout, plan.sites
    shape = widening_shape(plan.size, plan.a_shape)  # the narrowing ones' is its transpose: the same counts
    saving = max((k for k in range(1, shape.terms() + 1) if shape.compresses(k)), default=1)
    cap = saving if config.factors is None else min(config.factors, saving)
    total = count_params(model)
    rest = total - len(sites) * layout.matrix_params
    budget = config.target_params if config.target_params is not None else (
        total - round((1 - config.ratio) * len(sites) * layout.matrix_params))
    per_term = shape.params(1, config.scalars)
    if (budget - rest) // per_term < len(sites):
        raise KronyptError(f"a model of at most {budget:,} parameters cannot give each of the {len(sites)} "
                           f"matrices one factor of A {shape.m1}x{shape.n1}: that needs "
                           f"{rest + len(sites) * per_term:,}")
    family = layout.family
    spectra = {s.path: kronecker_spectrum(family.dense_weight(model.get_submodule(s.path)).detach(),
                                          s.oriented(plan.a_shape)) for s in sites}
    counts = allocate_terms(spectra, (budget - rest) // per_term, max_factors=cap)
    specs = {s.path: kronecker_spec(s.oriented(plan.a_shape), counts[s.path], config.scalars) for s in sites}
    return replace(plan, specs=specs)


@dataclass
class Sensitivity:
    """The calibration loss of the dense model, its increase with each block's MLP alone at each level, and the
    level chosen per block (1.0: dense)."""

    base_loss: float
    increase: dict[int, dict[float, float]]
    chosen: dict[int, float]

    def to_json(self) -> dict:
        return {"base_loss": self.base_loss, "chosen": self.chosen,
                "increase": {str(b): {str(r): v for r, v in levels.items()} for b, levels in self.increase.items()}}


def allocate_by_sensitivity(model: nn.Module, plan: Resolution, calibration: Calibration, fitter: Fitter,
                            progress: bool = True) -> tuple[Resolution, Sensitivity]:
    """`plan` (a sensitivity config resolved) with a level per block chosen by measured calibration loss.

    `fitter` builds each candidate layer (fitted as the config says); the caller may keep them to reuse."""
    config, sites = plan.config, plan.sites
    by_block: dict[int, list[MlpSite]] = {}
    for site in sites:
        by_block.setdefault(site.block, []).append(site)
    level_specs = {ratio: _level_specs(plan, ratio) for ratio in LEVELS}
    calibration = Calibration(calibration.tokens[:SENSITIVITY_WINDOWS], calibration.source)
    base = mean_loss(model, calibration)
    increase: dict[int, dict[float, float]] = {}
    steps = tqdm(total=len(by_block) * len(LEVELS), desc="sensitivity", unit="fit", disable=None if progress else True,
                 leave=False)
    with steps:
        for block, block_sites in by_block.items():
            increase[block] = {}
            for ratio, specs in level_specs.items():
                swapped = {s.path: fitter(s, specs[s.path]) for s in block_sites}
                with _swapped(model, swapped):
                    increase[block][ratio] = mean_loss(model, calibration) - base
                steps.update()
    dense = plan.layout.matrix_params
    cost = {ratio: {b: sum(_spec_params(specs[s.path], s) for s in block_sites) for b, block_sites in by_block.items()}
            for ratio, specs in level_specs.items()}
    cost[1.0] = {b: len(block_sites) * dense for b, block_sites in by_block.items()}
    total = count_params(model)
    budget = config.target_params if config.target_params is not None else (
        total - round((1 - config.ratio) * len(sites) * dense))
    chosen = _knapsack(increase, cost, budget - (total - len(sites) * dense))
    specs = {s.path: level_specs[chosen[s.block]][s.path] for s in sites if chosen[s.block] != 1.0}
    kept = [s for s in sites if chosen[s.block] != 1.0]
    return replace(plan, sites=kept, specs=specs), Sensitivity(base, increase, chosen)


def _level_specs(plan: Resolution, ratio: float) -> dict[str, dict]:
    config, layout = plan.config, plan.layout
    if config.method == "low-rank":
        rank = max(1, round(ratio * layout.matrix_params / (layout.inner + layout.hidden)))
        return {s.path: {"method": "low-rank", "rank": rank} for s in plan.sites}
    a_shape = pick_for_ratio(plan.size, ratio, config.factors or 1, config.scalars).a_shape
    return {s.path: kronecker_spec(s.oriented(a_shape), config.factors or 1, config.scalars) for s in plan.sites}


def _spec_params(spec: dict, site: MlpSite) -> int:
    if spec["method"] == "low-rank":
        return LowRankLinear.params(site.out_features, site.in_features, spec["rank"])
    shape = kron_shape(site.out_features, site.in_features, tuple(spec["a_shape"]))
    return shape.params(spec["factors"], spec["scalars"])


def _knapsack(increase: dict[int, dict[float, float]], cost: dict[float, dict[int, int]],
              budget: int) -> dict[int, float]:
    """The level per block (1.0 = dense) with the least summed loss increase whose parameters fit `budget`."""
    states: dict[int, tuple[float, tuple[float, ...]]] = {0: (0.0, ())}
    blocks = list(increase)
    for block in blocks:
        options = [(1.0, 0.0), *increase[block].items()]
        nxt: dict[int, tuple[float, tuple[float, ...]]] = {}
        for spent, (loss, picks) in states.items():
            for ratio, delta in options:
                total = spent + cost[ratio][block]
                if total <= budget and (total not in nxt or loss + delta < nxt[total][0]):
                    nxt[total] = (loss + delta, (*picks, ratio))
        if not nxt:
            raise KronyptError(f"a budget of {budget:,} MLP parameters cannot hold every block at the smallest "
                               f"level ({min(LEVELS)})")
        states = nxt
    _, picks = min(states.values())
    return dict(zip(blocks, picks, strict=True))


class _swapped:
    """Put fitted layers in place of the dense ones for the duration of a block, then put the dense ones back."""

    def __init__(self, model: nn.Module, layers: dict[str, nn.Module]) -> None:
        self.model, self.layers, self.saved = model, layers, {}

    def __enter__(self) -> None:
        for path, layer in self.layers.items():
            self.saved[path] = self.model.get_submodule(path)
            self.model.set_submodule(path, layer)

    def __exit__(self, *exc: object) -> None:
        for path, layer in self.saved.items():
            self.model.set_submodule(path, layer)
