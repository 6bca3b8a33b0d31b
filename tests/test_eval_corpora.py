"""Evaluation corpora: local files give the rows the HF datasets give, and bad inputs give one-line errors."""

from __future__ import annotations

import sys
import types

import pytest
import tiktoken
from conftest import SHARED_DATA, requires_shared

from kronypt.data.tokenizer import load_encoding
from kronypt.errors import KronyptError
from kronypt.eval import corpora
from kronypt.eval.corpora import HUB_SOURCES, LOCAL_FILES, load_texts, wikitext_pages, wikitext_rows
from kronypt.eval.detokenize import wikitext_detokenize


def _gpt2() -> tiktoken.Encoding:
    return load_encoding(str(SHARED_DATA / "gpt2-tokenizer"))


@requires_shared
def test_wikitext_rows_are_the_hf_rows():
    rows = load_texts("wikitext2", "test", "raw", SHARED_DATA)
    lines = (SHARED_DATA / "wikitext-2" / "wiki.test.raw").read_text(encoding="utf-8").split("\n")[:-1]
    assert len(rows) == len(lines) == 4358
    for row, line in zip(rows, lines, strict=True):
        assert row == ("" if not line.strip() else line + "\n")
    # SOURCES.md: 287,644 GPT-2 tokens for the HF recipe ("\n\n".join of the rows)
    assert len(_gpt2().encode_ordinary("\n\n".join(rows))) == 287_644


@requires_shared
def test_non_raw_rows_and_validation_split():
    test_rows = load_texts("wikitext2", "test", "tokens", SHARED_DATA)
    valid_rows = load_texts("wikitext2", "validation", "tokens", SHARED_DATA)
    assert (len(test_rows), len(valid_rows)) == (4358, 3760)
    assert sum("<unk>" in r for r in test_rows) > 0
    assert sum(r == "" for r in test_rows) == 1467


@requires_shared
def test_pages_partition_the_raw_file_at_top_level_headings():
    text = (SHARED_DATA / "wikitext-2" / "wiki.test.raw").read_text(encoding="utf-8")
    pages = load_texts("wikitext2", "test", "pages", SHARED_DATA)
    assert len(pages) == 62  # SOURCES.md: 62 top-level ` = Title = ` headings
    assert all(p.startswith(" = ") and not p.startswith(" = = ") for p in pages)
    assert "\n".join(pages) == text.split("\n", 1)[1]  # only the leading blank line is dropped


def test_pages_on_a_small_example():
    text = " \n = A = \n \n x . \n = = Sub = = \n y \n = B = \n z \n"
    assert wikitext_pages(text) == [" = A = \n \n x . \n = = Sub = = \n y ", " = B = \n z \n"]
    assert wikitext_rows(" \n a \n\n") == ["", " a \n", ""]


def test_detokenizer_rules():
    page = (' = = Early life = = \n He won 1 @,@ 000 @.@ 5 ( about 3 @-@ 4 ) " prizes " , N times , '
            'he said : it \'s fine . \n')
    expected = ' == Early life ==\nHe won 1,000.5 (about 3-4) "prizes", 1 times, he said: it\'s fine.\n'
    assert wikitext_detokenize(page) == expected


@requires_shared
def test_lambada_files():
    passages = load_texts("lambada", "test", "passages", SHARED_DATA)
    dev = load_texts("lambada", "validation", "passages", SHARED_DATA)
    openai = load_texts("lambada", "test", "openai", SHARED_DATA)
    assert (len(passages), len(dev), len(openai)) == (5153, 4869, 5153)
    assert passages[0] == passages[0].lower() and not passages[0].endswith("\n")
    # the same passages: the openai texts are the detokenised, cased versions, ending in the same word
    assert all(o.lower().endswith(p.split()[-1]) for p, o in zip(passages, openai, strict=True))


def test_missing_file_names_it_and_the_layout(tmp_path):
    with pytest.raises(KronyptError, match=r"missing .*wikitext-103/wiki\.test\.tokens.*wikitext-2/wiki\.test\.raw"):
        load_texts("wikitext103", "test", "tokens", tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_texts("wikitext2", "test", "raw", tmp_path / "nowhere")


def test_bad_names_list_the_options():
    with pytest.raises(KronyptError, match="wikitext2, wikitext103, lambada"):
        load_texts("ptb", "test", "raw")
    with pytest.raises(KronyptError, match="test, validation"):
        load_texts("wikitext2", "train", "raw")
    with pytest.raises(KronyptError, match="available: test"):
        load_texts("lambada", "validation", "openai")


def test_hub_needs_the_data_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(KronyptError, match=r"kronypt\[data\].*--data-dir"):
        load_texts("wikitext2", "test", "raw")


@pytest.mark.parametrize("key", sorted(HUB_SOURCES))
def test_hub_source_of_every_local_file(monkeypatch, key):
    """Each local file has a hub counterpart whose config names the same WikiText variant."""
    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return {HUB_SOURCES[key][3]: ["row"]}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert load_texts(*key) == ["row"]
    name, config, split = calls[0]
    assert split == key[1] and key in LOCAL_FILES
    if key[0].startswith("wikitext"):
        assert config.startswith("wikitext-" + key[0].removeprefix("wikitext") + "-")
        assert ("raw" in config) == (key[2] != "tokens")


def _fake_datasets(monkeypatch, load_dataset) -> None:
    """`datasets` replaced by a module whose `load_dataset` is the given function (the real one takes
    `split` by keyword: its third positional parameter is `data_dir`)."""
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))


@pytest.mark.parametrize(("key", "expected"), [
    (("wikitext2", "validation", "tokens"), ("Salesforce/wikitext", "wikitext-2-v1", "validation", "text")),
    (("wikitext103", "test", "raw"), ("Salesforce/wikitext", "wikitext-103-raw-v1", "test", "text")),
    (("wikitext2", "test", "pages"), ("EleutherAI/wikitext_document_level", "wikitext-2-raw-v1", "test", "page")),
    (("lambada", "validation", "passages"), ("cimec/lambada", None, "validation", "text")),
    (("lambada", "test", "openai"), ("EleutherAI/lambada_openai", "default", "test", "text")),
])
def test_hub_is_asked_for_the_right_dataset_config_split_and_column(monkeypatch, key, expected):
    calls = []

    def load_dataset(path, name=None, *, split=None):
        calls.append((path, name, split))
        return {"text": ["a text row\n", ""], "page": [" = A page = \n"], "title": ["not this"]}

    _fake_datasets(monkeypatch, load_dataset)
    rows = load_texts(*key)
    assert calls == [expected[:3]]
    assert rows == ([" = A page = \n"] if expected[3] == "page" else ["a text row\n", ""])


@pytest.mark.parametrize("error", [
    ConnectionError("Couldn't reach 'Salesforce/wikitext' on the Hub (LocalEntryNotFoundError)\nretry later"),
    FileNotFoundError("Dataset 'Salesforce/wikitext' doesn't exist on the Hub or cannot be accessed.\nmore"),
    ValueError("BuilderConfig 'wikitext-2-v1' not found.\nAvailable: [...]"),
])
def test_hub_failures_are_one_line_errors_that_point_to_local_files(monkeypatch, error):
    def load_dataset(path, name=None, *, split=None):
        raise error

    _fake_datasets(monkeypatch, load_dataset)
    with pytest.raises(KronyptError) as caught:
        load_texts("wikitext2", "validation", "tokens")
    first = str(error).splitlines()[0]
    assert str(caught.value) == (f"cannot load Salesforce/wikitext (wikitext-2-v1, validation) from the hub: "
                                 f"{first}; {corpora.LOCAL_HINT}")


@pytest.mark.parametrize(("content", "message"), [
    (b'{"text": "a passage"}\n{"body": "no text"}\n', r"lambada_test.jsonl:2: expected a JSON object with a "
                                                     r'non-empty "text" string'),
    (b'{"text": "a passage"}\nnot json\n', r"lambada_test.jsonl:2: not JSON"),
    (b'{"text": ""}\n', r'lambada_test.jsonl:1: expected a JSON object with a non-empty "text"'),
    (b'{"text": "caf\xe9"}\n', r"lambada_test.jsonl is not UTF-8 text \(invalid continuation byte at byte 13\)"),
])
def test_a_malformed_local_file_is_one_line_naming_it(tmp_path, content: bytes, message: str) -> None:
    """Each used to escape as a KeyError / JSONDecodeError / UnicodeDecodeError traceback."""
    path = tmp_path / LOCAL_FILES["lambada", "test", "openai"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    with pytest.raises(KronyptError, match=message):
        load_texts("lambada", "test", "openai", tmp_path)


def test_a_data_dir_that_is_a_file_says_so(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(KronyptError, match="notes.txt is a file; --data-dir takes a folder"):
        load_texts("wikitext2", "test", "raw", tmp_path / "notes.txt")
