"""Encodings for token files: tiktoken GPT-2 BPE built offline (equal to tiktoken's own gpt2 and to Hugging Face),
Hugging Face tokenizer.json folders, and the token dtype."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tiktoken

from kronypt.data.tokenizer import encode_documents, encoding_from_files, load_encoding
from kronypt.errors import KronyptError
from kronypt.models.tokenizers import load_tokenizer
from tests.conftest import SHARED_DATA, TOKENIZER_DIR, requires_shared, requires_smollm2

pytestmark = requires_shared

# tiktoken's cache file names for the two GPT-2 files (sha1 of their URLs; see shared/data/SOURCES.md).
TIKTOKEN_CACHE_KEYS = {"encoder.json": "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6",
                       "vocab.bpe": "6d1cbeee0f20b3d9449abfede4726ed8212e3aee"}


def offline_tiktoken_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Let `tiktoken.get_encoding("gpt2")` find the staged files instead of downloading them."""
    for name, key in TIKTOKEN_CACHE_KEYS.items():
        shutil.copy(TOKENIZER_DIR / name, tmp_path / key)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))


def sample_text() -> str:
    """~40 kB of varied real text: Shakespeare, Gutenberg prose with non-ASCII, WikiText markup."""
    shakespeare = (SHARED_DATA / "tiny-shakespeare" / "input.txt").read_text(encoding="utf-8")[:12000]
    with gzip.open(SHARED_DATA / "corpus" / "gutenberg" / "gutenberg_val.txt.gz", "rt", encoding="utf-8") as f:
        gutenberg = f.read(400_000)[-16000:]
    wiki = (SHARED_DATA / "wikitext-2" / "wiki.test.raw").read_text(encoding="utf-8")[:12000]
    return shakespeare + gutenberg + wiki + " naïve café — 東京 🙂 \t\r\n  x"


def test_files_give_tiktokens_own_gpt2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    offline_tiktoken_cache(tmp_path, monkeypatch)
    reference = tiktoken.get_encoding("gpt2")
    ours = encoding_from_files(TOKENIZER_DIR / "encoder.json", TOKENIZER_DIR / "vocab.bpe")
    assert ours._mergeable_ranks == reference._mergeable_ranks
    assert ours._special_tokens == reference._special_tokens == {"<|endoftext|>": 50256}
    assert ours.n_vocab == 50257
    text = sample_text()
    assert ours.encode_ordinary(text) == reference.encode_ordinary(text)
    assert load_encoding("gpt2").encode_ordinary(text) == reference.encode_ordinary(text)


def test_files_match_hugging_face_ids() -> None:
    encoding = load_encoding(str(TOKENIZER_DIR))
    hf = load_tokenizer(str(TOKENIZER_DIR))
    for piece in sample_text().split("\n\n"):
        assert encoding.encode_ordinary(piece) == hf.encode(piece), piece[:80]


def test_hf_file_names_are_accepted(tmp_path: Path) -> None:
    shutil.copy(TOKENIZER_DIR / "encoder.json", tmp_path / "vocab.json")
    shutil.copy(TOKENIZER_DIR / "vocab.bpe", tmp_path / "merges.txt")
    text = sample_text()
    assert load_encoding(str(tmp_path)).encode_ordinary(text) == load_encoding(str(TOKENIZER_DIR)).encode_ordinary(text)


def test_encode_documents_appends_eot_and_ignores_special_strings() -> None:
    encoding = load_encoding(str(TOKENIZER_DIR))
    texts = ["Hello world", "a <|endoftext|> b", "x"]
    tokens, lengths = encode_documents(encoding, texts)
    assert tokens.dtype == np.uint16
    expected = [t for text in texts for t in encoding.encode_ordinary(text) + [50256]]
    assert tokens.tolist() == expected
    assert lengths.tolist() == [len(encoding.encode_ordinary(t)) + 1 for t in texts]
    assert tokens.tolist().count(50256) == 3  # the literal string in the second text is not a separator


def write_tokenizer(folder: Path, vocab: dict[str, int], merges: list[str]) -> Path:
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder


def byte_vocab() -> dict[str, int]:
    encoder = json.loads((TOKENIZER_DIR / "encoder.json").read_text(encoding="utf-8"))
    return {token: i for token, i in encoder.items() if i < 256}


def test_small_custom_bpe_folder(tmp_path: Path) -> None:
    vocab = byte_vocab() | {"ab": 256, "abc": 257, "<|endoftext|>": 258}
    encoding = load_encoding(str(write_tokenizer(tmp_path / "tok", vocab, ["a b", "ab c"])))
    assert encoding.encode_ordinary("abcab") == [257, 256]
    assert encoding.encode_ordinary(" abd") == [vocab["Ġ"], 256, vocab["d"]]
    assert encoding.eot_token == 258


def test_ids_beyond_uint16_make_uint32_token_files(tmp_path: Path) -> None:
    from kronypt.data.tokenizer import token_dtype

    vocab = byte_vocab() | {"ab": 256, "<|endoftext|>": 70000}
    encoding = load_encoding(str(write_tokenizer(tmp_path / "big", vocab, ["a b"])))
    assert token_dtype(encoding) is np.uint32 and encode_documents(encoding, ["ab"])[0].tolist() == [256, 70000]


def test_merges_out_of_id_order_are_refused(tmp_path: Path) -> None:
    vocab = byte_vocab() | {"ab": 257, "cd": 256}
    with pytest.raises(KronyptError, match="merge order"):
        load_encoding(str(write_tokenizer(tmp_path / "bad", vocab, ["a b", "c d"])))


def test_vocab_without_end_of_text_or_bytes_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KronyptError, match="<\\|endoftext\\|>"):
        load_encoding(str(write_tokenizer(tmp_path / "noeot", byte_vocab() | {"ab": 256}, ["a b"])))
    vocab = {token: i for token, i in byte_vocab().items() if token != "a"} | {"<|endoftext|>": 300}
    with pytest.raises(KronyptError, match="byte-level"):
        load_encoding(str(write_tokenizer(tmp_path / "nobyte", vocab, [])))


def test_bad_tokenizer_sources(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_encoding(str(tmp_path / "missing"))
    with pytest.raises(KronyptError, match="encoder.json"):
        load_encoding(str(tmp_path))
    with pytest.raises(KronyptError, match="tiktoken encoding"):
        load_encoding("not-a-tokenizer")


def test_a_tiktoken_download_failure_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # A tiktoken name (not a folder) downloads its files on first use; offline that fails in one line.
    asked = []

    def unreachable(name: str) -> tiktoken.Encoding:
        asked.append(name)
        raise ConnectionError("HTTPSConnectionPool(host='openaipublic.blob.core.windows.net')\nretries exceeded")

    monkeypatch.setattr(tiktoken, "get_encoding", unreachable)
    load_encoding.cache_clear()  # a cached encoding would skip the download
    try:
        with pytest.raises(KronyptError) as caught:
            load_encoding("gpt2")
    finally:
        load_encoding.cache_clear()
    assert asked == ["gpt2"]
    assert str(caught.value) == ("cannot load tiktoken encoding 'gpt2' (it downloads its files once: "
                                 "HTTPSConnectionPool(host='openaipublic.blob.core.windows.net')); "
                                 "offline, pass --tokenizer DIR with encoder.json+vocab.bpe")


@requires_smollm2
def test_a_hugging_face_tokenizer_gives_its_own_ids_and_a_separator(tmp_path: Path) -> None:
    """A tokenizer.json folder (SmolLM2's, from its GGUF) through `tokenizers`: the ids transformers gives, no
    BOS added, <|endoftext|> between documents, and the string <|endoftext|> inside a text kept as text."""
    from kronypt.data.tokenizer import HFEncoding, token_dtype
    from kronypt.models.tokenizers import load_tokenizer

    reference = load_tokenizer("smollm2-135m")
    reference.save_pretrained(tmp_path)
    encoding = load_encoding(str(tmp_path))
    assert isinstance(encoding, HFEncoding) and encoding.eot_token == reference.convert_tokens_to_ids("<|endoftext|>")
    texts = ["The capital of France is Paris.", "Call me <|endoftext|> Ishmael."]
    tokens, lengths = encode_documents(encoding, texts)
    assert tokens.dtype == np.uint16 and token_dtype(encoding) is np.uint16
    first = tokens[: lengths[0]].tolist()
    assert first == reference(texts[0], add_special_tokens=False).input_ids + [encoding.eot_token]
    assert encoding.eot_token not in tokens[lengths[0]: lengths.sum() - 1]  # the string in the text is text
    assert encoding.decode(tokens[lengths[0]: lengths.sum() - 1].tolist()) == texts[1]


def test_ids_beyond_uint16_are_stored_as_uint32(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    from kronypt.data.tokenizer import token_dtype

    vocab = {"<|endoftext|>": 0, **{f"w{i}": i + 1 for i in range(70_000)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    encoding = load_encoding(str(tmp_path))
    tokens, lengths = encode_documents(encoding, ["w1 w69999"])
    assert token_dtype(encoding) is np.uint32 and tokens.dtype == np.uint32
    assert tokens.tolist() == [2, 70_000, 0] and lengths.tolist() == [3]
