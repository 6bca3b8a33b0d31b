"""GPT-2 byte-level BPE as a `tiktoken.Encoding`, built offline from a tokenizer folder or by tiktoken name.

tiktoken is much faster than the Hugging Face tokenizers for bulk encoding, but `tiktoken.get_encoding("gpt2")`
downloads its files on first use. A folder holding OpenAI's `encoder.json`+`vocab.bpe` (or the same files
under Hugging Face's names `vocab.json`+`merges.txt`) gives the same encoding with no network: the merge
ranks come straight from the files, and tiktoken's token ids are those ranks.
"""

from __future__ import annotations

import functools
import itertools
import json
from pathlib import Path

import numpy as np
import tiktoken
from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str

from kronypt.errors import KronyptError

# (vocabulary, merges) file names a tokenizer folder may hold, in the order they are looked for.
FILE_PAIRS = (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt"))
UINT16_MAX = np.iinfo(np.uint16).max


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
    raise KronyptError(f"tokenizer folder {path} holds neither {pairs}")


@functools.lru_cache(maxsize=4)
def load_encoding(source: str) -> tiktoken.Encoding:
    """The tiktoken Encoding for a tokenizer folder or a tiktoken encoding name (e.g. 'gpt2').

    Cached per process, so worker processes build it once. Only encodings with an end-of-text token and
    whose ids fit uint16 token files are accepted (see `eot_token`, `check_fits_uint16`).
    """
    files = tokenizer_files(source)
    if files is not None:
        encoding = encoding_from_files(*files)
    else:
        encoding = _encoding_by_name(source)
    eot_token(encoding)
    check_fits_uint16(encoding, source)
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


def eot_token(encoding: tiktoken.Encoding) -> int:
    """The id of the `<|endoftext|>` token that separates documents."""
    try:
        return encoding.encode_single_token(ENDOFTEXT)
    except KeyError:
        raise KronyptError(f"tokenizer {encoding.name} has no {ENDOFTEXT} token to separate documents") from None


def check_fits_uint16(encoding: tiktoken.Encoding, source: str) -> None:
    """Token files store ids as uint16 (nanoGPT layout): refuse tokenizers with ids above 65535."""
    if encoding.max_token_value > UINT16_MAX:
        raise KronyptError(f"tokenizer {source} has ids up to {encoding.max_token_value} (vocab size "
                           f"{encoding.n_vocab}); uint16 token files hold ids 0..{UINT16_MAX}, so use a "
                           "tokenizer with at most 65536 tokens, e.g. gpt2")


def encode_documents(encoding: tiktoken.Encoding, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Encode documents, each followed by the end-of-text token; returns (uint16 tokens, tokens per document).

    Special-token strings inside the text are encoded as ordinary text, so a document can never inject
    a separator.
    """
    eot = eot_token(encoding)
    ids = [encoding.encode_ordinary(text) + [eot] for text in texts]
    lengths = np.array([len(doc) for doc in ids], dtype=np.int64)
    tokens = np.fromiter((t for doc in ids for t in doc), dtype=np.uint16, count=int(lengths.sum()))
    return tokens, lengths


def _encoding_by_name(name: str) -> tiktoken.Encoding:
    known = tiktoken.list_encoding_names()
    if name not in known:
        raise KronyptError(f"unknown tokenizer {name!r}: give a folder holding encoder.json+vocab.bpe or "
                           f"vocab.json+merges.txt, or a tiktoken encoding ({', '.join(known)})")
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
