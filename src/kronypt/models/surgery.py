"""Compress a model in place (`compress_`: dense MLP matrices -> compressed layers, or whole blocks dropped) and
turn it back (`to_dense`)."""

from __future__ import annotations

import json

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from kronypt.errors import KronyptError
from kronypt.models.allocation import allocate_by_sensitivity, fill_factors
from kronypt.models.calibration import Calibration, check_vocabulary, mean_loss, second_moments
from kronypt.models.compression import CompressionConfig, Resolution, resolve
from kronypt.models.configuration import base_config_of, extend, is_compressed
from kronypt.models.dropping import choose_blocks, drop_blocks_
from kronypt.models.families import MlpSite, family_of
from kronypt.models.fitting import Fit, fit_layer
from kronypt.models.modeling import adopt, causal_lm_class
from kronypt.models.report import CompressionReport, MatrixReport
from kronypt.models.schemes import count_params
from kronypt.nn import KroneckerLinear
from kronypt.nn.compressed import is_compressed_layer, layer_params, layer_spec


def compress_(model: PreTrainedModel, config: CompressionConfig, calibration: Calibration | None = None,
              progress: bool = True) -> CompressionReport:
    """Compress the model in place as `config` says, and report what it did.

    Works for every supported family (`kronypt.models.families`). With Kronecker or low-rank factors the model
    becomes the compressed class of its architecture (same object, e.g. `KronyLlamaForCausalLM`) whose config
    records the compressed matrices, so `save_pretrained` / `AutoModelForCausalLM.from_pretrained` round-trip;
    dropping blocks leaves a plain model of its architecture with fewer blocks. Tied embeddings stay tied. A
    model compressed before keeps its earlier layers, and the config's budget counts them as they are.
    `calibration` (see `kronypt.models.calibration`) is needed by activation-aware fits, sensitivity allocation
    and importance-ranked block dropping; given, the report holds the calibration loss before and after.
    """
    if not _is_causal_lm(model):
        raise KronyptError(f"expected a Hugging Face causal LM, got {type(model).__name__}")
    if config.needs_calibration and calibration is None:
        raise KronyptError(f"{_needing(config)} needs calibration data: give --calibration DATA (a token folder "
                           "or a text file)")
    plan = resolve(model, config)
    report = CompressionReport(method=config.method, fit=config.fit, allocation=config.allocation,
                               params_before=count_params(model), init=plan.config.init,
                               scalars=plan.config.scalars)
    if calibration is not None:
        check_vocabulary(model, calibration)
        report.calibration, report.calibration_tokens = calibration.source, calibration.count
        report.calibration_loss_before = mean_loss(model, calibration)
    if config.method == "drop-blocks":
        report.dropped_blocks = choose_blocks(model, plan.layout, plan.drop_count, config.drop, config.layers,
                                              calibration)
        report.blocks_before, report.blocks_path = plan.layout.blocks, plan.layout.family.blocks
        drop_blocks_(model, plan.layout, report.dropped_blocks)
    else:
        _factorise(model, plan, report, calibration, progress)
    report.params_after = count_params(model)
    if calibration is not None:
        report.calibration_loss_after = mean_loss(model, calibration)
    return report


def _factorise(model: PreTrainedModel, plan: Resolution, report: CompressionReport,
               calibration: Calibration | None, progress: bool) -> None:
    """Replace the planned matrices by fitted Kronecker or low-rank layers (after any allocation)."""
    config, family = plan.config, plan.layout.family
    moments = second_moments(model, plan.sites, calibration, progress=progress) if config.fit == "activations" else {}
    init_std = getattr(model.config, "initializer_range", 0.02)
    fits: dict[tuple[str, str], Fit] = {}

    def fit(site: MlpSite, spec: dict) -> Fit:
        key = (site.path, json.dumps(spec, sort_keys=True))
        if key not in fits:
            fits[key] = fit_layer(model.get_submodule(site.path), family, spec, config, moments.get(site.path),
                                  init_std)
        return fits[key]

    if config.allocate:
        plan = fill_factors(model, plan)
    if config.allocation == "sensitivity":
        plan, sensitivity = allocate_by_sensitivity(model, plan, calibration, lambda s, spec: fit(s, spec).layer,
                                                    progress)
        report.sensitivity = sensitivity.to_json()
    if plan.row is not None:
        report.scheme, report.factors = plan.row.name, plan.row.factors
        if not plan.row.compresses:
            report.notes.append(f"A {plan.a_shape[0]}x{plan.a_shape[1]} with {plan.row.factors} factors can "
                                f"represent any matrix of this size: it saves nothing ({plan.row.model_params:,} "
                                "parameters)")
    report.a_shape = plan.a_shape
    modules = dict(getattr(model.config, "compressed_modules", {}))
    for site in tqdm(plan.sites, desc="compressing", unit="matrix", disable=None if progress else True, leave=False):
        spec = plan.specs[site.path]
        result = fit(site, spec)
        model.set_submodule(site.path, result.layer)
        modules[site.path] = {**layer_spec(result.layer), "init": _init_name(config, spec)}
        report.matrices.append(_matrix_report(site, result))
    if plan.sites:
        adopt(model, extend(model.config, modules, causal_lm_class(model.config).__name__))


def _init_name(config: CompressionConfig, spec: dict) -> str:
    """How a layer's factors were made, as its config entry records it."""
    if config.fit == "activations":
        return "activation-aware"
    return config.init if spec["method"] == "kronecker" else "svd"


def _matrix_report(site: MlpSite, result: Fit) -> MatrixReport:
    layer = result.layer
    kronecker = isinstance(layer, KroneckerLinear)
    return MatrixReport(site.path, "kronecker" if kronecker else "low-rank",
                        layer.shape.a_shape if kronecker else None, layer.shape.b_shape if kronecker else None,
                        layer.factors if kronecker else None, None if kronecker else layer.rank,
                        layer_params(layer), site.out_features * site.in_features, result.weight_error,
                        result.output_error)


def _needing(config: CompressionConfig) -> str:
    if config.fit == "activations":
        return "--fit activations"
    if config.allocation == "sensitivity":
        return "--allocation sensitivity"
    return "--method drop-blocks with --drop importance"


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
