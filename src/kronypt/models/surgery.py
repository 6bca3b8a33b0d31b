"""Compress a GPT-2 model in place (Conv1D MLP matrices -> KroneckerLinear) and turn it back to dense."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import torch
from tqdm.auto import tqdm
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from kronypt.errors import KronyptError
from kronypt.math.allocate import allocate_terms
from kronypt.math.decompose import kronecker_spectrum
from kronypt.math.shapes import integer_count, kron_shape, shape_pair
from kronypt.models.configuration import KronyGPT2Config
from kronypt.models.modeling import KronyGPT2LMHeadModel, adopt_class
from kronypt.nn import KroneckerLinear
from kronypt.nn.kronecker_linear import INITS
from kronypt.plan import SCHEME_INITS, canonical_scheme, mlp_dims, pick_for_target, resolve_scheme

MLP_MODULES = ("c_fc", "c_proj")


@dataclass
class CompressionConfig:
    """What to compress and how.

    `a_shape` is the A-factor shape of `c_fc` in (out=n_inner, in=n_embd) orientation; `c_proj` gets the
    transposed shapes. `layers` None means every block; `modules` picks c_fc and/or c_proj.
    `factors_by_module` (module path -> k, from `allocate_factors`) overrides `factors` per matrix.
    """

    a_shape: tuple[int, int]
    factors: int = 1
    scalars: bool = False
    init: str = "van-loan"
    rescale: bool = False
    prune_fill: float = 0.0
    layers: Sequence[int] | None = None
    modules: Sequence[str] = MLP_MODULES
    factors_by_module: Mapping[str, int] | None = None

    def factors_of(self, path: str) -> int:
        """The number of factors of the matrix at `path`."""
        return (self.factors_by_module or {}).get(path, self.factors)

    def __post_init__(self) -> None:
        self.a_shape = shape_pair(self.a_shape)
        self.factors = integer_count(self.factors, "factors")
        if self.factors < 1:
            raise KronyptError(f"factors must be at least 1, got {self.factors}")
        if self.init not in INITS:
            raise KronyptError(f"unknown init {self.init!r}; choose one of {', '.join(INITS)}")
        if self.rescale and self.init != "van-loan":
            raise KronyptError(f"rescale applies to the van-loan init, not {self.init}")
        if self.prune_fill != 0.0 and self.init != "prune":
            raise KronyptError(f"prune_fill applies to the prune init, not {self.init}")
        if isinstance(self.modules, str):  # "c_fc" or "c_fc,c_proj", as the CLI spells them
            self.modules = tuple(m.strip() for m in self.modules.split(",") if m.strip())
        self.modules = tuple(dict.fromkeys(self.modules))  # "c_fc,c_fc" names c_fc once
        bad = [m for m in self.modules if m not in MLP_MODULES]
        if bad or not self.modules:
            raise KronyptError(f"unknown MLP modules {bad or '(none)'}; choose from {', '.join(MLP_MODULES)}")

    @classmethod
    def from_scheme(cls, name: str, **overrides) -> CompressionConfig:
        """A config for a named scheme of the paper (README "Schemes"; e.g. '81M', '96M-prune', '92M-4')."""
        a_shape, factors = resolve_scheme(name)
        overrides.setdefault("init", SCHEME_INITS.get(canonical_scheme(name), "van-loan"))
        return cls(a_shape=a_shape, factors=overrides.pop("factors", factors), **overrides)

    @classmethod
    def from_target_params(cls, config: GPT2Config, target: int, factors: int = 1, **overrides
                           ) -> CompressionConfig:
        """The compressing scheme with the most parameters not above `target`, counting only the matrices
        `layers` and `modules` select as compressed (the others as they are: dense, or Kronecker layers of an
        earlier compression)."""
        chosen = cls(a_shape=(1, 1), factors=factors, **overrides)  # normalised layers and modules
        n_layer, n_embd, inner = mlp_dims(config)
        blocks = range(n_layer) if chosen.layers is None else set(chosen.layers)
        selected = {f"transformer.h.{i}.mlp.{name}" for i in blocks for name in chosen.modules}
        saved = 0  # by matrices a kronypt model has compressed already and this leaves as they are
        for path, spec in getattr(config, "kron_modules", {}).items():
            if path not in selected:
                out_in = (inner, n_embd) if path.endswith("c_fc") else (n_embd, inner)
                kept = kron_shape(*out_in, tuple(spec["a_shape"])).params(spec["factors"], spec.get("scalars", False))
                saved += inner * n_embd - kept
        row = pick_for_target(config, target, factors, chosen.scalars, matrices=len(selected), already_saved=saved)
        return replace(chosen, a_shape=row.a_shape)


@dataclass
class MatrixReport:
    name: str
    a_shape: tuple[int, int]
    b_shape: tuple[int, int]
    factors: int
    params: int
    dense_params: int
    rel_error: float


@dataclass
class CompressionReport:
    """Per-matrix errors and the parameter counts before and after."""

    matrices: list[MatrixReport] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0

    @property
    def mean_rel_error(self) -> float:
        return sum(m.rel_error for m in self.matrices) / max(len(self.matrices), 1)

    def to_json(self) -> dict:
        return {"params_before": self.params_before, "params_after": self.params_after,
                "mean_rel_error": self.mean_rel_error, "matrices": [asdict(m) for m in self.matrices]}


def count_params(model: torch.nn.Module) -> int:
    """Parameters of a model, shared (tied) tensors counted once."""
    return sum(p.numel() for p in model.parameters())


def compress(model: GPT2LMHeadModel, config: CompressionConfig, progress: bool = True) -> CompressionReport:
    """Replace the chosen MLP matrices of a GPT-2 LM by Kronecker layers, in place.

    The model becomes a `KronyGPT2LMHeadModel` (same object) whose config records the Kronecker modules,
    so `save_pretrained` / `from_pretrained` round-trip. Embeddings stay tied.
    """
    if not isinstance(model, GPT2LMHeadModel):
        raise KronyptError(f"expected a GPT-2-family causal LM (GPT2LMHeadModel), got {type(model).__name__}")
    report = CompressionReport(params_before=count_params(model))
    earlier = getattr(model.config, "kronecker", {}).get("init")  # folders from before per-module inits
    kron_modules = {path: {"init": earlier, **spec} if earlier else spec
                    for path, spec in getattr(model.config, "kron_modules", {}).items()}
    targets = _targets(model, config)
    for path, name in tqdm(targets, desc="compressing", unit="matrix", disable=None if progress else True,
                           leave=False):
        old = model.get_submodule(path)
        a_shape = config.a_shape if name == "c_fc" else config.a_shape[::-1]
        weight = old.weight.detach().T  # Conv1D stores (in, out)
        factors = config.factors_of(path)
        new, dec = KroneckerLinear.from_dense(weight, old.bias.detach(), a_shape, factors,
                                              scalars=config.scalars, init=config.init,
                                              rescale=config.rescale, prune_fill=config.prune_fill,
                                              init_std=getattr(model.config, "initializer_range", 0.02))
        new.requires_grad_(old.weight.requires_grad)
        setattr(model.get_submodule(path.rpartition(".")[0]), name, new)
        kron_modules[path] = {"a_shape": list(a_shape), "factors": factors, "scalars": config.scalars,
                              "init": config.init}
        report.matrices.append(MatrixReport(path, new.shape.a_shape, new.shape.b_shape, factors,
                                            sum(p.numel() for n, p in new.named_parameters() if n != "bias"),
                                            weight.numel(), dec.rel_error))
    _become_kronecker(model, kron_modules)
    report.params_after = count_params(model)
    return report


def allocate_factors(model: GPT2LMHeadModel, config: CompressionConfig, target_params: int,
                     max_factors: int | None = None) -> CompressionConfig:
    """`config` with a number of factors per matrix: the most Van Loan error removed (summed squared relative
    errors, `kronypt.math.allocate`) by a model of at most `target_params` parameters.

    Every targeted matrix keeps `config.a_shape` and gets at least one factor and at most `max_factors`
    (else as many as its shape admits while still saving parameters).
    """
    if config.init != "van-loan":
        raise KronyptError(f"factor allocation ranks terms by their Van Loan error; it needs init van-loan, "
                           f"not {config.init}")
    targets = _targets(model, config)
    _, n_embd, inner = mlp_dims(model.config)
    shape = kron_shape(inner, n_embd, config.a_shape)  # c_proj's is its transpose: the same counts
    saving = max((k for k in range(1, shape.terms() + 1) if shape.compresses(k)), default=1)
    spectra = {}
    for path, name in targets:
        weight = model.get_submodule(path).weight.detach().T  # Conv1D stores (in, out)
        spectra[path] = kronecker_spectrum(weight, config.a_shape if name == "c_fc" else config.a_shape[::-1])
    per_term = shape.params(1, config.scalars)
    rest = count_params(model) - len(targets) * inner * n_embd
    if (target_params - rest) // per_term < len(targets):
        raise KronyptError(f"a model of at most {target_params:,} parameters cannot give each of the "
                           f"{len(targets)} matrices one factor of A {shape.m1}x{shape.n1}: that needs "
                           f"{rest + len(targets) * per_term:,}")
    counts = allocate_terms(spectra, (target_params - rest) // per_term,
                            max_factors=saving if max_factors is None else min(max_factors, saving))
    return replace(config, factors_by_module=counts)


def _targets(model: GPT2LMHeadModel, config: CompressionConfig) -> list[tuple[str, str]]:
    """(module path, c_fc or c_proj) of every matrix `config` compresses, checked to be dense Conv1Ds."""
    n_layer, _, _ = mlp_dims(model.config)
    layers = list(range(n_layer)) if config.layers is None else sorted(set(config.layers))
    if not layers or layers[0] < 0 or layers[-1] >= n_layer:
        raise KronyptError(f"layers {list(config.layers or [])} out of range: this model has blocks 0..{n_layer - 1}")
    targets = [(f"transformer.h.{i}.mlp.{name}", name) for i in layers for name in config.modules]
    for path, _ in targets:
        module = model.get_submodule(path)
        if not isinstance(module, Conv1D):
            raise KronyptError(f"{path} is already compressed ({type(module).__name__})")
    return targets


def _become_kronecker(model: GPT2LMHeadModel, kron_modules: dict) -> None:
    """Make `model` a kronypt LM whose config lists `kron_modules` (each with the init it came from; the
    top-level "init" is the common one, or "mixed" after compressions with different inits).

    Every submodule that held the old config (the blocks' attention reads its implementation from there)
    gets the new one; the old object is left as it was, for other models built from it.
    """
    inits = {spec.get("init") for spec in kron_modules.values()} - {None}
    init = inits.pop() if len(inits) == 1 else "mixed" if inits else None
    old = model.config
    config = KronyGPT2Config.extend(old, {"modules": kron_modules, "init": init})
    for module in model.modules():
        if getattr(module, "config", None) is old:
            module.config = config
    adopt_class(model, KronyGPT2LMHeadModel)


def to_dense(model: GPT2LMHeadModel) -> GPT2LMHeadModel:
    """A plain `GPT2LMHeadModel` (loadable without kronypt) with the same weights and logits."""
    if not isinstance(model, GPT2LMHeadModel):
        hint = " (merge adapters first, e.g. PEFT's merge_and_unload())" if hasattr(model, "get_base_model") else ""
        raise KronyptError(f"expected a GPT-2-family causal LM (GPT2LMHeadModel), got {type(model).__name__}{hint}")
    config = model.config.to_gpt2() if isinstance(model.config, KronyGPT2Config) else model.config
    param = next(model.parameters())
    with torch.device(param.device):
        dense = GPT2LMHeadModel(config).to(param.dtype)
    state = {}
    for key, value in model.state_dict().items():
        state[key] = value
    for path, module in model.named_modules():
        if isinstance(module, KroneckerLinear):
            for key in [k for k in state if k.startswith(path + ".")]:
                del state[key]
            with torch.no_grad():
                state[f"{path}.weight"] = module.dense_weight().T.contiguous()  # back to Conv1D's (in, out)
                if module.bias is not None:
                    state[f"{path}.bias"] = module.bias.detach().clone()
    dense.load_state_dict(state, strict=True)
    dense.tie_weights()
    return dense.train(model.training)
