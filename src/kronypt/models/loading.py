"""Load models, configs and tokenizers from a hub id or a local folder, with one-line errors."""

from __future__ import annotations

import functools
import json
import os
import re
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Tokenizer, PretrainedConfig, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from kronypt.data.tokenizer import FILE_PAIRS
from kronypt.errors import KronyptError
from kronypt.models.family import family_config

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
AUTO_DTYPE = "auto"  # load_model: the dtype the checkpoint was stored in
GPT2_MODEL_TYPES = ("gpt2", "kronygpt2")  # what compression, inspection and export understand
GPT2_CONTEXT = 1024  # n_positions of every GPT-2-family model


def require_gpt2(config: PretrainedConfig, name: str) -> None:
    """Refuse a model that is not GPT-2-shaped (Conv1D MLPs, n_layer / n_embd / n_inner) in one line."""
    kind = getattr(config, "model_type", None)
    if kind not in GPT2_MODEL_TYPES:
        raise KronyptError(f"{name} is a {kind or 'unknown'} model; kronypt compresses GPT-2-family models "
                           "(model_type gpt2: gpt2, gpt2-medium/large/xl, distilgpt2, or a kronypt folder)")


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


_HUB_ID = re.compile(r"[\w][\w.-]*(/[\w][\w.-]*)?", re.ASCII)
HUB_PREFIX = "hf://"  # `hf://owner/name`: a hub id, even where a local folder `owner/` exists


def hub_id(name: str) -> str:
    """The repo id to ask the hub for: `name` without the `hf://` that forces the hub."""
    return name.removeprefix(HUB_PREFIX)


def _as_name(name_or_path: str | os.PathLike) -> str:
    """A str for the loaders: a `Path` (or other os.PathLike) always names a local path, so a relative one
    gets a leading ./ that keeps it from being read as a hub id ('gpt2')."""
    if isinstance(name_or_path, os.PathLike):
        path = os.fspath(name_or_path)
        return path if path.startswith(("/", ".", "~")) else os.path.join(".", path)
    return name_or_path


def _is_local(name: str) -> bool:
    """A local path rather than a hub id ('gpt2', 'openai-community/gpt2'): it exists, starts like a path,
    cannot be a hub id (two or more slashes, other characters), or its first part is a local folder
    ('runs/typo' where runs/ exists). Deciding here saves a mistyped path the hub's ~25 s of retries;
    `hf://owner/name` is always a hub id, for a repo whose owner is also the name of a folder here."""
    if name.startswith(HUB_PREFIX):
        return False
    if Path(name).exists() or name.startswith((".", "/", "~")) or not _HUB_ID.fullmatch(name):
        return True
    return _shadowing_folder(name) is not None


def _shadowing_folder(name: str) -> str | None:
    """The local folder `owner` when the hub-id-shaped `owner/name` is taken as a local path only because
    that folder exists (and `owner/name` does not); None otherwise."""
    owner, slash, _ = name.partition("/")
    if not slash or Path(name).exists() or not _HUB_ID.fullmatch(name) or not Path(owner).is_dir():
        return None
    return owner


def _missing(kind: str, name: str) -> FileNotFoundError:
    """The error for a local path that does not exist; for `owner/name` it says why the hub was not asked
    and how to ask it (the name may be a mistyped folder under `owner/` or a repo of the hub's `owner`)."""
    path = Path(name).expanduser()
    owner = _shadowing_folder(name)
    if owner is None:
        return FileNotFoundError(f"{kind} {path} does not exist")
    return FileNotFoundError(f"{kind} {path} does not exist (not tried as a hub id because {owner}/ is a local "
                             f"folder; write {HUB_PREFIX}{name} to load it from the hub)")


def local_model_dir(name_or_path: str | os.PathLike) -> Path | None:
    """The folder `name_or_path` names when it is a local path (checked: a folder with config.json,
    else a one-line error); None for a hub id."""
    name_or_path = _as_name(name_or_path)
    if not _is_local(name_or_path):
        return None
    path = Path(name_or_path).expanduser()
    if path.is_file():
        raise KronyptError(f"{name_or_path} is a file, not a model folder")
    if not path.is_dir():
        raise _missing("model folder", name_or_path)
    if not (path / "config.json").is_file():
        raise KronyptError(f"{path} is not a model folder: it has no config.json")
    return path


def load_config(name_or_path: str | os.PathLike, gpt2_only: bool = True) -> PretrainedConfig:
    """A GPT-2-family config (any architecture with `gpt2_only=False`): from a local folder, the offline
    GPT-2 family table, or the hub."""
    import kronypt.models.modeling  # noqa: F401  (registers the kronypt classes with the Auto classes)

    name_or_path = _as_name(name_or_path)
    path = local_model_dir(name_or_path)
    if path is not None:
        try:
            config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as exc:  # unreadable JSON, unknown model_type
            raise KronyptError(f"cannot read {path / 'config.json'}: {_first_line(exc)}") from None
    else:
        config = family_config(hub_id(name_or_path))
        if config is None:
            try:
                config = AutoConfig.from_pretrained(hub_id(name_or_path))
            except (OSError, ValueError) as exc:  # unreachable or unknown repo, unknown model_type
                raise KronyptError(f"cannot load config {name_or_path!r}: not a local folder, and the hub said: "
                                   f"{_first_line(exc)}") from None
    if gpt2_only:
        require_gpt2(config, name_or_path)
    return config


def load_model(
    name_or_path: str | os.PathLike,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    gpt2_only: bool = False,
) -> PreTrainedModel:
    """A causal LM (dense GPT-2 or kronypt) from a hub id or a local folder, in eval mode.

    `dtype` defaults to float32 (what training and evaluation compute in); "auto" keeps the dtype the
    checkpoint was stored in (its config's `dtype`, else its weights'), for commands that rewrite or describe
    a checkpoint. `gpt2_only` refuses other architectures (for compression, inspection and export;
    evaluation and generation take any causal LM)."""
    import kronypt.models.modeling  # noqa: F401

    name_or_path = _as_name(name_or_path)
    torch_dtype = AUTO_DTYPE if dtype == AUTO_DTYPE else parse_dtype(dtype) or torch.float32
    source: str | Path = local_model_dir(name_or_path) or hub_id(name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        raise KronyptError(f"cannot load model {name_or_path!r}: {_first_line(exc)}") from None
    except SafetensorError as exc:
        raise KronyptError(f"cannot load model {name_or_path!r}: a .safetensors file in it is truncated or "
                           f"corrupt ({_first_line(exc)})") from None
    except RuntimeError as exc:  # transformers refuses stored tensors of other shapes than config.json's
        if "mismatched_sizes" not in str(exc):
            raise
        raise KronyptError(f"cannot load model {name_or_path!r}: its weights do not have the shapes its "
                           "config.json describes (the load report above lists them); was the config edited, "
                           "or the weights copied from another model?") from None
    if gpt2_only:
        require_gpt2(model.config, name_or_path)
    if device is not None:
        model.to(device)
    return model.eval()


def load_tokenizer(name_or_path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """A GPT-2 BPE tokenizer from a hub id, a saved tokenizer folder, or a folder holding
    `vocab.json`+`merges.txt` or OpenAI's `encoder.json`+`vocab.bpe`."""
    name_or_path = _as_name(name_or_path)
    if _is_local(name_or_path):
        return _local_tokenizer(name_or_path)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(hub_id(name_or_path))
    except (OSError, ValueError) as exc:  # unreachable or unknown repo, no tokenizer class for it
        raise KronyptError(f"cannot load tokenizer {name_or_path!r}: {_first_line(exc)}") from None


def _local_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The tokenizer of a local folder (a BPE file pair first, else Hugging Face's layout)."""
    path = Path(name).expanduser()
    if path.is_file():
        raise KronyptError(f"tokenizer {path} is a file; give the folder that holds it")
    if not path.is_dir():
        raise _missing("tokenizer folder", name)
    for vocab_name, merges_name in FILE_PAIRS:
        if (path / vocab_name).is_file() and (path / merges_name).is_file():
            return _bpe_from_files(path / vocab_name, path / merges_name)
    if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    raise KronyptError(f"no tokenizer in {path}: expected vocab.json+merges.txt, encoder.json+vocab.bpe "
                       "or tokenizer.json")


TOKENIZER_FILES = ("vocab.json", "merges.txt", "encoder.json", "vocab.bpe", "tokenizer.json",
                   "tokenizer_config.json", "special_tokens_map.json")


def has_tokenizer(folder: str | Path) -> bool:
    """Whether a local folder holds a loadable tokenizer (BPE file pair or tokenizer.json)."""
    path = Path(folder).expanduser()
    return path.is_dir() and (any((path / v).is_file() and (path / m).is_file() for v, m in FILE_PAIRS)
                              or (path / "tokenizer.json").is_file())


def copy_tokenizer_files(source: str | Path, dest: Path) -> bool:
    """Put the tokenizer of a local folder next to saved weights, in Hugging Face's layout, so that plain
    `AutoTokenizer.from_pretrained(dest)` loads it; False when the folder has none.

    A folder already in that layout (tokenizer.json / tokenizer_config.json) is copied as it is. A bare
    BPE pair (OpenAI's encoder.json + vocab.bpe, or vocab.json + merges.txt) is written as vocab.json +
    merges.txt (what `kronypt data prepare --tokenizer` and other BPE tools read) plus the tokenizer.json
    and tokenizer_config.json that transformers needs to know it is GPT-2's tokenizer."""
    folder = Path(source).expanduser()
    if not has_tokenizer(folder):
        return False
    if (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file():
        for name in TOKENIZER_FILES:
            if (folder / name).is_file():
                (dest / name).write_bytes((folder / name).read_bytes())
        return True
    vocab, merges = next((folder / v, folder / m) for v, m in FILE_PAIRS
                         if (folder / v).is_file() and (folder / m).is_file())
    files = _hf_tokenizer_files(vocab.resolve(), merges.resolve(), vocab.stat().st_mtime_ns, merges.stat().st_mtime_ns)
    for name, data in files.items():
        (dest / name).write_bytes(data)
    return True


@functools.lru_cache(maxsize=4)
def _hf_tokenizer_files(vocab: Path, merges: Path, *mtimes: int) -> dict[str, bytes]:
    """The files of a BPE pair in Hugging Face's layout (built once per pair: training saves it with every
    checkpoint)."""
    with tempfile.TemporaryDirectory() as tmp:
        _bpe_from_files(vocab, merges).save_pretrained(tmp)
        files = {path.name: path.read_bytes() for path in Path(tmp).iterdir() if path.is_file()}
    return {**files, "vocab.json": vocab.read_bytes(), "merges.txt": merges.read_bytes()}


def _bpe_from_files(vocab_file: Path, merges_file: Path) -> PreTrainedTokenizerBase:
    vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    lines = merges_file.read_text(encoding="utf-8").split("\n")
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    # GPT-2's context, as the hub's gpt2 tokenizer says: pipelines and `truncation=True` read it (else ~1e30).
    return GPT2Tokenizer(vocab=vocab, merges=merges, model_max_length=GPT2_CONTEXT)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
