"""Compress a model in place (`compress_`: dense MLP matrices -> compressed layers) and turn it back (`to_dense`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from kronypt.errors import KronyptError
from kronypt.models.compression import CompressionConfig, resolve
from kronypt.models.configuration import base_config_of, extend, is_compressed
from kronypt.models.families import family_of
from kronypt.models.modeling import adopt, causal_lm_class
from kronypt.nn import KroneckerLinear
from kronypt.nn.compressed import is_compressed_layer, layer_spec


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
    """What a compression did: the scheme it resolved to, per-matrix errors, parameter counts before and after,
    and notes worth a warning (a scheme that saves nothing)."""

    matrices: list[MatrixReport] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    scheme: str | None = None
    a_shape: tuple[int, int] | None = None
    factors: int | None = None  # None: a k per matrix (allocated)
    init: str | None = None
    scalars: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def mean_rel_error(self) -> float:
        return sum(m.rel_error for m in self.matrices) / max(len(self.matrices), 1)

    def to_json(self) -> dict:
        return {"scheme": self.scheme, "a_shape": list(self.a_shape) if self.a_shape else None,
                "factors": self.factors, "allocated": self.factors is None, "init": self.init,
                "scalars": self.scalars, "params_before": self.params_before, "params_after": self.params_after,
                "mean_rel_error": self.mean_rel_error, "matrices": [asdict(m) for m in self.matrices]}


def count_params(model: torch.nn.Module) -> int:
    """Parameters of a model, shared (tied) tensors counted once."""
    return sum(p.numel() for p in model.parameters())


def compress_(model: PreTrainedModel, config: CompressionConfig, progress: bool = True) -> CompressionReport:
    """Replace the MLP matrices `config` selects by Kronecker layers, in place, and report what it did.

    Works for every supported family (`kronypt.models.families`). The model becomes the compressed class of its
    architecture (same object, e.g. `KronyLlamaForCausalLM`) whose config records the compressed matrices, so
    `save_pretrained` / `AutoModelForCausalLM.from_pretrained` round-trip; tied embeddings stay tied. A model
    compressed before keeps its earlier layers, and the config's budget counts them as they are.
    """
    if not isinstance(model, PreTrainedModel):
        raise KronyptError(f"expected a Hugging Face causal LM, got {type(model).__name__}")
    plan = resolve(model, config)
    config = plan.config
    family = plan.layout.family
    report = CompressionReport(params_before=count_params(model), scheme=plan.row.name if plan.row else None,
                               a_shape=plan.a_shape, factors=config.factors, init=config.init, scalars=config.scalars)
    if plan.row is not None and not plan.row.compresses:
        report.notes.append(f"A {plan.a_shape[0]}x{plan.a_shape[1]} with {plan.row.factors} factors can represent "
                            f"any matrix of this size: it saves nothing ({plan.row.model_params:,} parameters)")
    modules = dict(getattr(model.config, "compressed_modules", {}))
    init_std = getattr(model.config, "initializer_range", 0.02)
    for site in tqdm(plan.sites, desc="compressing", unit="matrix", disable=None if progress else True, leave=False):
        old = model.get_submodule(site.path)
        weight = family.dense_weight(old).detach()
        factors = config.factors_of(site.path)
        bias = None if getattr(old, "bias", None) is None else old.bias.detach()
        new, dec = KroneckerLinear.from_dense(weight, bias, plan.a_shape_of(site), factors, scalars=config.scalars,
                                              init=config.init, rescale=config.rescale,
                                              prune_fill=config.prune_fill, init_std=init_std)
        new.requires_grad_(old.weight.requires_grad)
        parent, _, name = site.path.rpartition(".")
        setattr(model.get_submodule(parent), name, new)
        modules[site.path] = {**layer_spec(new), "init": config.init}
        report.matrices.append(MatrixReport(site.path, new.shape.a_shape, new.shape.b_shape, factors,
                                            sum(p.numel() for n, p in new.named_parameters() if n != "bias"),
                                            weight.numel(), dec.rel_error))
    _become_compressed(model, modules)
    report.params_after = count_params(model)
    return report


def _become_compressed(model: PreTrainedModel, modules: dict) -> None:
    """Make `model` the compressed class of its architecture, with a config listing `modules`."""
    config = extend(model.config, modules, causal_lm_class(model.config).__name__)
    adopt(model, config)


def to_dense(model: PreTrainedModel) -> PreTrainedModel:
    """The base architecture's plain causal LM (loadable without kronypt) with the same weights and logits."""
    if not _is_causal_lm(model):
        hint = " (merge adapters first, e.g. PEFT's merge_and_unload())" if hasattr(model, "get_base_model") else ""
        raise KronyptError(f"expected a causal LM, got {type(model).__name__}{hint}")
    family = family_of(model)
    config = model.config.dense_config() if is_compressed(model.config) else model.config
    param = next(model.parameters())
    with torch.device(param.device):
        dense = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)](config).to(param.dtype)
    state = dict(model.state_dict())
    for path, module in model.named_modules():
        if is_compressed_layer(module):
            for key in [k for k in state if k.startswith(path + ".")]:
                del state[key]
            with torch.no_grad():
                state[f"{path}.weight"] = family.stored_weight(module.dense_weight())
                if module.bias is not None:
                    state[f"{path}.bias"] = module.bias.detach().clone()
    dense.load_state_dict(state, strict=True)
    dense.tie_weights()
    return dense.train(model.training)


def _is_causal_lm(model: object) -> bool:
    if not isinstance(model, PreTrainedModel):
        return False
    base = base_config_of(model.config)
    return base in MODEL_FOR_CAUSAL_LM_MAPPING and isinstance(model, MODEL_FOR_CAUSAL_LM_MAPPING[base])
