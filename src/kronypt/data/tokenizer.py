"""Encodings for bulk tokenisation: GPT-2 byte-level BPE through tiktoken, any other tokenizer through Hugging
Face's `tokenizers`.

tiktoken is much faster than the Hugging Face tokenizers for GPT-2's BPE, but `tiktoken.get_encoding("gpt2")`
downloads its files on first use. A folder holding OpenAI's `encoder.json`+`vocab.bpe` (or the same files
under Hugging Face's names `vocab.json`+`merges.txt`) gives the same encoding with no network: the merge
ranks come straight from the files, and tiktoken's token ids are those ranks. A folder holding a
`tokenizer.json` (Llama, SmolLM2, Qwen, ...; a BPE pair beside it is not read) is read by `tokenizers`
(`HFEncoding`). Token ids are stored as
uint16 while the vocabulary fits, as uint32 beyond (`token_dtype`).
"""

from __future__ import annotations

import functools
import itertools
import json
from pathlib import Path
from typing import Union

import numpy as np
import tiktoken
from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str

from kronypt.errors import KronyptError

# (vocabulary, merges) file names a tokenizer folder may hold, in the order they are looked for.
FILE_PAIRS = (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt"))
HF_FILE = "tokenizer.json"
HF_FILES = (HF_FILE, "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")  # a saved tokenizer
UINT16_MAX = np.iinfo(np.uint16).max
UINT32_MAX = np.iinfo(np.uint32).max
Encoding = Union[tiktoken.Encoding, "HFEncoding"]  # noqa: UP007  (a string forward reference)


class HFEncoding:
    """A Hugging Face `tokenizers` tokenizer with the part of tiktoken's interface that tokenising needs.

    Special-token strings inside a text are encoded as ordinary text (a document cannot inject a separator),
    and no BOS/EOS is added: documents are separated by `eot_token`, as in GPT-2's token files. The end of a
    document is `<|endoftext|>` where the vocabulary has it, else the `eos_token` of tokenizer_config.json.
    """

    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        try:
            self._tokenizer = Tokenizer.from_file(str(folder / HF_FILE))
        except Exception as exc:  # noqa: BLE001  (tokenizers raises bare Exceptions on a bad file)
            raise KronyptError(f"cannot read {folder / HF_FILE}: {str(exc).splitlines()[0] if str(exc) else exc}"
                               ) from None
        self._tokenizer.encode_special_tokens = True
        self.name = f"hf:{folder.name}"
        self.n_vocab = self._tokenizer.get_vocab_size(with_added_tokens=True)
        self.max_token_value = max(self._tokenizer.get_vocab(with_added_tokens=True).values())
        self.eot_token = self._end_of_text(folder)

    def _end_of_text(self, folder: Path) -> int:
        found = self._tokenizer.token_to_id(ENDOFTEXT)
        if found is not None:
            return found
        config = folder / "tokenizer_config.json"
        eos = json.loads(config.read_text(encoding="utf-8")).get("eos_token") if config.is_file() else None
        eos = eos.get("content") if isinstance(eos, dict) else eos
        found = self._tokenizer.token_to_id(eos) if isinstance(eos, str) else None
        if found is None:
            raise KronyptError(f"tokenizer {folder} has no {ENDOFTEXT} and no eos_token to separate documents")
        return found

    def encode_ordinary(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_ordinary_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=False)


def tokenizer_files(source: str) -> tuple[Path, Path] | None:
    """The (vocabulary, merges) files of a tokenizer folder, or None when `source` is not a folder."""
    path = Path(source).expanduser()
    if path.is_file():
        raise KronyptError(f"tokenizer {source} is a file; give the folder that holds the tokenizer files")
    if not path.is_dir():
        if source.startswith((".", "/", "~")):
            raise FileNotFoundError(f"tokenizer folder {source} does not exist")
        return None
    for vocab_name, merges_name in FILE_PAIRS:
        if (path / vocab_name).is_file() and (path / merges_name).is_file():
            return path / vocab_name, path / merges_name
    pairs = " or ".join("+".join(pair) for pair in FILE_PAIRS)
    raise KronyptError(f"tokenizer folder {path} holds neither {pairs} nor {HF_FILE}")


@functools.lru_cache(maxsize=4)
def load_encoding(source: str) -> Encoding:
    """The encoding of a tokenizer folder (a GPT-2 BPE pair, through tiktoken; else its tokenizer.json) or of a
    tiktoken encoding name (e.g. 'gpt2').

    Cached per process, so worker processes build it once. Only encodings with an end-of-text token and
    whose ids fit uint32 token files are accepted (see `eot_token`, `token_dtype`).
    """
    path = Path(source).expanduser()
    if path.is_dir() and (path / HF_FILE).is_file():  # a BPE pair beside it may be a lossy copy (other split rules)
        encoding = HFEncoding(path)
    else:
        files = tokenizer_files(source)
        encoding = encoding_from_files(*files) if files is not None else _encoding_by_name(source)
    eot_token(encoding)
    token_dtype(encoding, source)
    return encoding



def encoding_from_files(vocab_file: Path, merges_file: Path) -> tiktoken.Encoding:
    """Build a GPT-2-style byte-level BPE Encoding from a vocabulary JSON and a merges file, offline.

    Single characters of the vocabulary stand for bytes (GPT-2's printable-byte mapping); the token made by
    merge i must have a larger id than the token made by merge i-1, because tiktoken applies merges in id
    order. Vocabulary entries that are neither bytes nor merge results (e.g. `<|endoftext|>`) become
    special tokens. The pre-tokeniser is GPT-2's regular expression.
    """
    vocab: dict[str, int] = json.loads(vocab_file.read_text(encoding="utf-8"))
    lines = merges_file.read_text(encoding="utf-8").splitlines()
    merged = ["".join(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    missing = [token for token in merged if token not in vocab]
    if missing:
        raise KronyptError(f"{merges_file} merges into {missing[0]!r}, which {vocab_file} does not list")
    merge_ids = [vocab[token] for token in merged]
    if any(later <= earlier for earlier, later in itertools.pairwise(merge_ids)):
        raise KronyptError(f"{vocab_file}: token ids do not follow the merge order of {merges_file}, "
                           "so tiktoken cannot encode with them; use a GPT-2-style BPE vocabulary")
    to_byte = _unicode_to_byte()
    byte_tokens = {token: i for token, i in vocab.items() if token in to_byte}
    if len(byte_tokens) != 256 or any(c not in to_byte for token in merged for c in token):
        raise KronyptError(f"{vocab_file} is not a GPT-2 byte-level BPE vocabulary: it needs the 256 byte "
                           "tokens, and merges made of them")
    ranks = {bytes([to_byte[token]]): i for token, i in byte_tokens.items()}
    ranks.update({bytes(to_byte[c] for c in token): vocab[token] for token in merged})
    mergeable_ids = set(ranks.values())
    special = {token: i for token, i in vocab.items() if i not in mergeable_ids}
    return tiktoken.Encoding(name=f"bpe:{vocab_file.parent.name}", pat_str=r50k_pat_str,
                             mergeable_ranks=ranks, special_tokens=special)


def eot_token(encoding: Encoding) -> int:
    """The id of the token that separates documents (`<|endoftext|>` for GPT-2's BPE)."""
    if isinstance(encoding, HFEncoding):
        return encoding.eot_token
    try:
        return encoding.encode_single_token(ENDOFTEXT)
    except KeyError:
        raise KronyptError(f"tokenizer {encoding.name} has no {ENDOFTEXT} token to separate documents") from None


def token_dtype(encoding: Encoding, source: str = "") -> type[np.unsignedinteger]:
    """The dtype of token files: uint16 (nanoGPT's layout) while every id fits, uint32 beyond."""
    if encoding.max_token_value <= UINT16_MAX:
        return np.uint16
    if encoding.max_token_value <= UINT32_MAX:
        return np.uint32
    raise KronyptError(f"tokenizer {source or encoding.name} has ids up to {encoding.max_token_value}, beyond uint32")


def encode_documents(encoding: Encoding, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Encode documents, each followed by the end-of-text token; returns (tokens in `token_dtype`, tokens per
    document).

    Special-token strings inside the text are encoded as ordinary text, so a document can never inject
    a separator.
    """
    eot = eot_token(encoding)
    if isinstance(encoding, HFEncoding):
        ids = [doc + [eot] for doc in encoding.encode_ordinary_batch(texts)]
    else:
        ids = [encoding.encode_ordinary(text) + [eot] for text in texts]
    lengths = np.array([len(doc) for doc in ids], dtype=np.int64)
    tokens = np.fromiter((t for doc in ids for t in doc), dtype=token_dtype(encoding), count=int(lengths.sum()))
    return tokens, lengths


def _encoding_by_name(name: str) -> tiktoken.Encoding:
    known = tiktoken.list_encoding_names()
    if name not in known:
        raise KronyptError(f"unknown tokenizer {name!r}: give a folder holding encoder.json+vocab.bpe, "
                           f"vocab.json+merges.txt or tokenizer.json, a tiktoken encoding ({', '.join(known)}), or "
                           "(with `kronypt data prepare`) a model's tokenizer: a hub id, a .gguf file or a packaged "
                           "model")
    try:
        return tiktoken.get_encoding(name)
    except Exception as exc:  # noqa: BLE001  (tiktoken surfaces network failures as many exception types)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KronyptError(f"cannot load tiktoken encoding {name!r} (it downloads its files once: {first}); "
                           "offline, pass --tokenizer DIR with encoder.json+vocab.bpe") from None


def _unicode_to_byte() -> dict[str, int]:
    """GPT-2's byte-level alphabet: printable bytes stand for themselves, the rest for chr(256 + n)."""
    direct = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    shifted = [b for b in range(256) if b not in direct]
    return {chr(b): b for b in direct} | {chr(256 + n): b for n, b in enumerate(shifted)}
