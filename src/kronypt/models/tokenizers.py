"""Load tokenizers (any Hugging Face tokenizer, GPT-2 BPE file pairs, the one inside a GGUF) and save them beside
model weights in Hugging Face's layout."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path

from transformers import AutoTokenizer, GPT2Tokenizer
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from kronypt.data.tokenizer import FILE_PAIRS, HF_FILES
from kronypt.errors import KronyptError
from kronypt.models.sources import PACKAGED, as_name, hub_id, is_local, missing, model_source

GPT2_CONTEXT = 1024  # n_positions of every GPT-2-family model
TOKENIZER_FILES = (*(name for pair in FILE_PAIRS for name in pair), *HF_FILES)


def load_tokenizer(name_or_path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """A tokenizer from a hub id, a local folder (Hugging Face's layout, or a BPE pair `vocab.json`+`merges.txt`
    or OpenAI's `encoder.json`+`vocab.bpe`), a `.gguf` file or a packaged model's short name."""
    name = as_name(name_or_path)
    if name.lower() in PACKAGED or name.lower().endswith(".gguf"):
        where, options = model_source(name).pretrained_args()
        return _gguf_tokenizer(str(where), options["gguf_file"])
    if is_local(name):
        return _local_tokenizer(name)
    try:
        return AutoTokenizer.from_pretrained(hub_id(name))
    except (OSError, ValueError) as exc:  # unreachable or unknown repo, no tokenizer class for it
        raise KronyptError(f"cannot load tokenizer {name!r}: {_first_line(exc)}") from None


@functools.lru_cache(maxsize=2)
def _gguf_tokenizer(folder: str, file: str) -> PreTrainedTokenizerBase:
    """The tokenizer rebuilt from a GGUF file's metadata (once per process: it takes seconds)."""
    return AutoTokenizer.from_pretrained(folder, gguf_file=file)


def _local_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The tokenizer of a local folder: its tokenizer.json, else a GPT-2 BPE file pair, else Hugging Face's
    layout."""
    path = Path(name).expanduser()
    if path.is_file():
        raise KronyptError(f"tokenizer {path} is a file; give the folder that holds it")
    if not path.is_dir():
        raise missing("tokenizer folder", name)
    try:
        if (path / "tokenizer.json").is_file():  # the full tokenizer: a BPE pair beside it may lose split rules
            return AutoTokenizer.from_pretrained(path)
        for vocab_name, merges_name in FILE_PAIRS:
            if (path / vocab_name).is_file() and (path / merges_name).is_file():
                return _bpe_from_files(path / vocab_name, path / merges_name)
        if (path / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(path)
    except KronyptError:
        raise
    except Exception as exc:  # noqa: BLE001  (the tokenizers library raises bare Exceptions on bad files)
        raise KronyptError(f"cannot read the tokenizer in {path}: {_first_line(exc)}") from None
    raise KronyptError(f"no tokenizer in {path}: expected vocab.json+merges.txt, encoder.json+vocab.bpe "
                       "or tokenizer.json")


def has_tokenizer(folder: str | Path) -> bool:
    """Whether a local folder holds a loadable tokenizer (BPE file pair or tokenizer.json)."""
    path = Path(folder).expanduser()
    return path.is_dir() and (any((path / v).is_file() and (path / m).is_file() for v, m in FILE_PAIRS)
                              or (path / "tokenizer.json").is_file())


def save_tokenizer(source: str, dest: Path) -> bool:
    """Put the tokenizer of a model source next to saved weights, in Hugging Face's layout, so that plain
    `AutoTokenizer.from_pretrained(dest)` loads it; False when the source has none.

    A folder already in that layout is copied as it is; a bare BPE pair (OpenAI's encoder.json + vocab.bpe, or
    vocab.json + merges.txt) is written as vocab.json + merges.txt plus the tokenizer.json and
    tokenizer_config.json that transformers needs to know it is GPT-2's tokenizer; a GGUF's or the hub's
    tokenizer is saved."""
    name = as_name(source)
    if name.lower() in PACKAGED or name.lower().endswith(".gguf") or not is_local(name):
        try:
            load_tokenizer(name).save_pretrained(dest)
        except (KronyptError, OSError, ValueError):
            return False  # a hub model without a tokenizer: not fatal for the weights
        return True
    folder = Path(name).expanduser()
    if not has_tokenizer(folder):
        return False
    if (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file():
        for file in TOKENIZER_FILES:
            if (folder / file).is_file():
                (dest / file).write_bytes((folder / file).read_bytes())
        return True
    vocab, merges = next((folder / v, folder / m) for v, m in FILE_PAIRS
                         if (folder / v).is_file() and (folder / m).is_file())
    files = _hf_tokenizer_files(vocab.resolve(), merges.resolve(), vocab.stat().st_mtime_ns, merges.stat().st_mtime_ns)
    for file, data in files.items():
        (dest / file).write_bytes(data)
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
    try:
        vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
        lines = merges_file.read_text(encoding="utf-8").split("\n")
    except (UnicodeDecodeError, ValueError) as exc:
        raise KronyptError(f"cannot read the tokenizer files {vocab_file.name} + {merges_file.name} in "
                           f"{vocab_file.parent}: {_first_line(exc)}") from None
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    if not isinstance(vocab, dict) or any(len(pair) != 2 for pair in merges):
        raise KronyptError(f"{vocab_file.parent} does not hold a BPE tokenizer: {vocab_file.name} must map tokens "
                           f"to ids and every line of {merges_file.name} must hold two tokens")
    # GPT-2's context, as the hub's gpt2 tokenizer says: pipelines and `truncation=True` read it (else ~1e30).
    return GPT2Tokenizer(vocab=vocab, merges=merges, model_max_length=GPT2_CONTEXT)


def tokenizer_id(tokenizer: PreTrainedTokenizerBase) -> str:
    """What identifies a tokenizer in records: its size and a digest of its vocabulary ("49152:1f2e3d4c"), so
    numbers measured under different tokenizers can be told apart (their perplexities do not compare)."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode("utf-8")).hexdigest()[:8]
    return f"{len(tokenizer)}:{digest}"


def saved_tokenizer(model: str) -> PreTrainedTokenizerBase | None:
    """The tokenizer a model carries: its local folder's or its GGUF's; None for a folder without one or a hub id."""
    name = as_name(model)
    if name.lower() in PACKAGED or name.lower().endswith(".gguf"):
        return load_tokenizer(name)
    if is_local(name) and has_tokenizer(name):
        return load_tokenizer(name)
    return None


COVERED = 0.9  # a tokenizer covering less of the embedding is another model's (models pad theirs a little)


def check_tokenizer_fits(tokenizer: PreTrainedTokenizerBase, vocab_size: int,
                         own: PreTrainedTokenizerBase | None = None) -> None:
    """Refuse a tokenizer that does not belong to the model: one that emits ids it has no embedding (and no
    logits) for, one covering less than 90% of its embedding rows, or one whose vocabulary differs from the
    tokenizer saved with the model (`own`, where there is one)."""
    size = len(tokenizer)
    if size > vocab_size or size < COVERED * vocab_size:
        raise KronyptError(f"the tokenizer has {size:,} tokens but the model's vocabulary has {vocab_size:,}: "
                           "they do not belong together (pass the model's own tokenizer)")
    if own is not None and tokenizer_id(own) != tokenizer_id(tokenizer):
        raise KronyptError(f"the tokenizer's vocabulary ({tokenizer_id(tokenizer)}) is not the one saved with the "
                           f"model ({tokenizer_id(own)}): its ids would mean other words (pass the model's own "
                           "tokenizer)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
