"""`prepare_tokens`: decoding the token files gives back the documents, counts agree with meta.json,
the output does not depend on the number of workers, and an interrupted run leaves nothing complete."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

import kronypt.data.prepare as prepare_module
from kronypt.data.prepare import prepare_tokens
from kronypt.data.sources import HFDatasetSource, resolve_inputs
from kronypt.data.tokenizer import load_encoding
from kronypt.data.tokens import open_tokens
from kronypt.data.writer import TokenFolderWriter
from kronypt.errors import KronyptError
from tests.conftest import SHARED_DATA, TOKENIZER_DIR, requires_shared

pytestmark = requires_shared

GUTENBERG = SHARED_DATA / "corpus" / "gutenberg"
SHAKESPEARE = SHARED_DATA / "tiny-shakespeare" / "input.txt"
EOT = "<|endoftext|>"


def prepare(inputs: list[Path], out: Path, **options) -> dict:
    options.setdefault("progress", False)
    return prepare_tokens(resolve_inputs([str(p) for p in inputs]), out, tokenizer=str(TOKENIZER_DIR), **options)


def decode(path: Path) -> str:
    return load_encoding(str(TOKENIZER_DIR)).decode_bytes(np.fromfile(path, dtype=np.uint16).tolist()).decode()


def gutenberg_val_books() -> list[str]:
    """The six validation books, cut from the shard by the manifest's byte offsets."""
    with gzip.open(GUTENBERG / "gutenberg_val.txt.gz", "rb") as handle:
        data = handle.read()
    with (GUTENBERG / "gutenberg_manifest.tsv").open(encoding="utf-8", newline="") as handle:
        rows = [row for row in csv.DictReader(handle, delimiter="\t") if row["split"] == "val"]
    return [data[int(r["byte_offset"]): int(r["byte_offset"]) + int(r["byte_length"])].decode() for r in rows]


def assert_counts_match_files(out: Path, meta: dict) -> None:
    assert json.loads((out / "meta.json").read_text()) == meta
    for split in ("train", "val"):
        assert (out / f"{split}.bin").stat().st_size == 2 * meta["splits"][split]["tokens"]
        assert len(open_tokens(out, split)) == meta["splits"][split]["tokens"]
    assert sum(i["tokens"] for i in meta["inputs"]) == sum(s["tokens"] for s in meta["splits"].values())
    assert sum(i["documents"] for i in meta["inputs"]) == sum(s["documents"] for s in meta["splits"].values())
    assert sorted(os.listdir(out)) == ["meta.json", "train.bin", "val.bin"]


def test_shakespeare_round_trip(tmp_path: Path) -> None:
    meta = prepare([SHAKESPEARE], tmp_path / "out", val_fraction=0)
    text = SHAKESPEARE.read_text(encoding="utf-8")
    assert decode(tmp_path / "out" / "train.bin") == text + EOT  # one document, then end-of-text
    assert meta["splits"]["train"] == {"file": "train.bin", "tokens": 338_025 + 1, "documents": 1}
    assert meta["splits"]["val"]["tokens"] == 0
    assert meta["inputs"][0]["sha256"] == hashlib.sha256(SHAKESPEARE.read_bytes()).hexdigest()
    assert meta["inputs"][0]["bytes"] == SHAKESPEARE.stat().st_size
    assert meta["vocab_size"] == 50257 and meta["eot_token"] == 50256 and meta["dtype"] == "uint16"
    assert_counts_match_files(tmp_path / "out", meta)


def test_gutenberg_books_are_documents_and_val_takes_whole_books(tmp_path: Path) -> None:
    books = gutenberg_val_books()
    meta = prepare([GUTENBERG / "gutenberg_val.txt.gz"], tmp_path / "out", val_fraction=0.3, seed=3)
    train_docs = decode(tmp_path / "out" / "train.bin").split(EOT)
    val_docs = decode(tmp_path / "out" / "val.bin").split(EOT)
    assert train_docs[-1] == val_docs[-1] == ""  # every document ends with the end-of-text token
    train_docs, val_docs = train_docs[:-1], val_docs[:-1]
    assert len(val_docs) == round(0.3 * 6) == 2
    assert [b for b in books if b in train_docs] == train_docs  # input order kept within each split
    assert [b for b in books if b in val_docs] == val_docs
    assert sorted(train_docs + val_docs) == sorted(books)
    encoding = load_encoding(str(TOKENIZER_DIR))
    assert meta["splits"]["val"]["tokens"] == sum(len(encoding.encode_ordinary(b)) + 1 for b in val_docs)
    assert meta["val_split"] == {"method": "documents", "fraction": 0.3, "seed": 3}
    assert_counts_match_files(tmp_path / "out", meta)
    other_seed = prepare([GUTENBERG / "gutenberg_val.txt.gz"], tmp_path / "seed4", val_fraction=0.3, seed=4)
    assert other_seed["splits"]["val"]["documents"] == 2
    other_val = decode(tmp_path / "seed4" / "val.bin").split(EOT)[:-1]
    assert len(other_val) == 2 and set(other_val) <= set(books)
    assert set(other_val) != set(val_docs)  # seed 4 holds out other books than seed 3 (books 3, 5 against 0, 4)
    same_seed = prepare([GUTENBERG / "gutenberg_val.txt.gz"], tmp_path / "seed3", val_fraction=0.3, seed=3)
    assert same_seed == meta
    for split in ("train", "val"):  # the same seed picks the same books: byte-identical token files
        assert (tmp_path / "seed3" / f"{split}.bin").read_bytes() == (tmp_path / "out" / f"{split}.bin").read_bytes()


def write_jsonl(path: Path, records: list[dict], gz: bool = False) -> Path:
    lines = "".join(json.dumps(r) + "\n" + ("\n" if i == 1 else "") for i, r in enumerate(records))
    opener = gzip.open if gz else open
    with opener(path, "wt", encoding="utf-8") as handle:
        handle.write(lines)
    return path


RECORDS = [{"text": "First document.\nWith two lines."}, {"text": ""}, {"text": "Ünïcödé ✓ and \"quotes\"", "id": 3},
           {"text": "  leading spaces\r\nand CRLF\n\n"}]


def test_jsonl_records_are_documents(tmp_path: Path) -> None:
    plain = write_jsonl(tmp_path / "a.jsonl", RECORDS)
    packed = write_jsonl(tmp_path / "b.jsonl.gz", RECORDS[::-1], gz=True)
    meta = prepare([plain, packed], tmp_path / "out", val_fraction=0)
    texts = [r["text"] for r in RECORDS + RECORDS[::-1] if r["text"]]  # empty records are skipped
    assert decode(tmp_path / "out" / "train.bin") == "".join(t + EOT for t in texts)
    assert [i["documents"] for i in meta["inputs"]] == [3, 3]
    assert_counts_match_files(tmp_path / "out", meta)


def test_bad_jsonl_lines_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text field"}\n', encoding="utf-8")
    with pytest.raises(KronyptError, match=r"bad.jsonl:2: expected a JSON object"):
        prepare([bad], tmp_path / "out", val_fraction=0)


def test_a_recursive_glob_passes_over_the_folders_it_matches(tmp_path: Path) -> None:
    (tmp_path / "books" / "more").mkdir(parents=True)
    for path in (tmp_path / "books" / "a.txt", tmp_path / "books" / "more" / "b.txt"):
        path.write_text(path.stem, encoding="utf-8")
    found = resolve_inputs([str(tmp_path / "books" / "**" / "*")])  # matches the folder more/ too
    assert [source.path.name for source in found] == ["a.txt", "b.txt"]
    with pytest.raises(KronyptError, match="matches no file"):
        resolve_inputs([str(tmp_path / "books" / "mor*")])  # only a folder
    with pytest.raises(KronyptError, match="is a folder"):
        resolve_inputs([str(tmp_path / "books")])  # named as an input: a mistake worth a word


def test_text_separators_and_val_inputs(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(f"one\n{EOT}\ntwo {EOT} inline\n\n{EOT}\r\n{EOT}\nthree", encoding="utf-8")
    val = write_jsonl(tmp_path / "val.jsonl", RECORDS)
    meta = prepare([corpus], tmp_path / "out", val_inputs=resolve_inputs([str(val)]))
    assert decode(tmp_path / "out" / "train.bin") == f"one\n{EOT}two {EOT} inline\n\n{EOT}three{EOT}"
    assert decode(tmp_path / "out" / "val.bin") == "".join(r["text"] + EOT for r in RECORDS if r["text"])
    assert meta["splits"]["train"]["documents"] == 3 and meta["val_split"] == {"method": "inputs"}
    assert [i["role"] for i in meta["inputs"]] == ["input", "val_input"]
    with pytest.raises(KronyptError, match="both a training and a validation input"):
        prepare([corpus], tmp_path / "again", val_inputs=resolve_inputs([str(corpus)]))


def test_output_does_not_depend_on_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prepare_module, "BATCH_CHARS", 100_000)  # many batches in flight at once
    jsonl = write_jsonl(tmp_path / "r.jsonl", RECORDS * 50)
    inputs = [GUTENBERG / "gutenberg_val.txt.gz", jsonl, SHAKESPEARE]
    serial = prepare(inputs, tmp_path / "w1", workers=1, val_fraction=0.05)
    parallel = prepare(inputs, tmp_path / "w2", workers=2, val_fraction=0.05)
    assert serial == parallel
    for name in ("train.bin", "val.bin", "meta.json"):
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()
    assert serial["splits"]["val"]["documents"] == round(0.05 * (6 + 150 + 1))


def test_a_single_document_is_split_by_tokens(tmp_path: Path) -> None:
    # One plain text file is one document: its last 10% of tokens become the validation split.
    meta = prepare([SHAKESPEARE], tmp_path / "out", val_fraction=0.1)
    whole = prepare([SHAKESPEARE], tmp_path / "whole", val_fraction=0)
    stream = np.fromfile(tmp_path / "whole" / "train.bin", dtype=np.uint16)
    train = np.fromfile(tmp_path / "out" / "train.bin", dtype=np.uint16)
    val = np.fromfile(tmp_path / "out" / "val.bin", dtype=np.uint16)
    assert np.array_equal(np.concatenate([train, val]), stream)
    assert len(val) == round(0.1 * len(stream)) and val[-1] == meta["eot_token"]
    assert meta["val_split"] == {"method": "tail", "fraction": 0.1}
    assert {s: meta["splits"][s]["tokens"] for s in ("train", "val")} == {"train": len(train), "val": len(val)}
    assert meta["splits"]["train"]["documents"] == meta["splits"]["val"]["documents"] == 1  # a part in each
    assert meta["inputs"][0]["tokens"] == whole["inputs"][0]["tokens"] == len(stream)


def test_bad_val_fraction_is_refused_before_the_folder_is_touched(tmp_path: Path) -> None:
    with pytest.raises(KronyptError, match=r"\[0, 1\)"):
        prepare([SHAKESPEARE], tmp_path / "out", val_fraction=1.0)
    assert not (tmp_path / "out").exists()


def test_failed_forced_run_leaves_the_earlier_output_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    prepare([SHAKESPEARE], out, val_fraction=0)
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    original = TokenFolderWriter.write
    calls = []

    def write_then_fail(self, split, tokens):
        calls.append(split)
        if len(calls) == 3:
            raise RuntimeError("simulated interruption")
        original(self, split, tokens)

    monkeypatch.setattr(TokenFolderWriter, "write", write_then_fail)
    with pytest.raises(RuntimeError, match="simulated"):
        prepare([GUTENBERG / "gutenberg_val.txt.gz"], out, val_fraction=0, force=True)
    # the partial files are gone and the earlier folder still opens: it is replaced only at commit
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    assert len(open_tokens(out, "train")) == json.loads(before["meta.json"])["splits"]["train"]["tokens"]


def test_killed_run_leaves_only_partial_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = f"""
import os, signal
from kronypt.data.writer import TokenFolderWriter
from tests.test_data_prepare import GUTENBERG, prepare
original = TokenFolderWriter.write
def write_then_die(self, split, tokens):
    original(self, split, tokens)
    if self.tokens["train"] > 100_000:
        os.kill(os.getpid(), signal.SIGKILL)
TokenFolderWriter.write = write_then_die
prepare([GUTENBERG / "gutenberg_val.txt.gz"], {str(out)!r}, val_fraction=0)
"""
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", script], cwd=repo, capture_output=True)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    assert sorted(os.listdir(out)) == ["train.bin.partial", "val.bin.partial"]
    with pytest.raises(KronyptError, match="no meta.json"):
        open_tokens(out, "train")
    with pytest.raises(FileExistsError, match="--force"):
        prepare([SHAKESPEARE], out, val_fraction=0)
    prepare([SHAKESPEARE], out, val_fraction=0, force=True)
    assert sorted(os.listdir(out)) == ["meta.json", "train.bin", "val.bin"]


def test_force_keeps_other_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        prepare([SHAKESPEARE], out, val_fraction=0)
    prepare([SHAKESPEARE], out, val_fraction=0, force=True)
    assert (out / "notes.txt").read_text() == "mine"


class FakeDataset:
    """Just the part of `datasets.Dataset` that HFDatasetSource uses."""

    column_names = ["text", "url"]
    _fingerprint = "abc123"

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    def __len__(self) -> int:
        return len(self.texts)

    def iter(self, batch_size: int):
        for start in range(0, len(self.texts), batch_size):
            yield {"text": self.texts[start: start + batch_size]}


def test_hf_dataset_rows_are_documents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = [f"row {i} " + "word " * (i % 7) for i in range(2500)] + [""]
    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return FakeDataset(texts)

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    meta = prepare_tokens([HFDatasetSource.parse("openwebtext:plain")], tmp_path / "out",
                          tokenizer=str(TOKENIZER_DIR), val_fraction=0.01, progress=False)
    assert calls[0] == ("openwebtext", "plain", "train")
    assert meta["splits"]["val"]["documents"] == 25 and meta["splits"]["train"]["documents"] == 2475
    decoded = [doc for split in ("train", "val") for doc in decode(tmp_path / "out" / f"{split}.bin").split(EOT)[:-1]]
    assert sorted(decoded) == sorted(t for t in texts if t)
    assert meta["inputs"][0] | {"documents": 0, "tokens": 0} == {
        "hf_dataset": "openwebtext", "config": "plain", "split": "train", "rows": 2501, "fingerprint": "abc123",
        "role": "input", "documents": 0, "tokens": 0}


def test_hf_dataset_without_datasets_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if not installed
    with pytest.raises(KronyptError, match=r"kronypt\[data\]"):
        prepare_tokens([HFDatasetSource.parse("openwebtext")], tmp_path / "out", tokenizer=str(TOKENIZER_DIR),
                       progress=False)


def test_empty_inputs_are_named_as_such(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(KronyptError, match="the training inputs hold no documents"):
        prepare([empty], tmp_path / "out")  # the default --val-fraction, which used to hide the cause


def test_a_relative_tokenizer_folder_is_recorded_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Training reads meta.json from wherever it runs and copies the tokenizer into its checkpoints.
    monkeypatch.chdir(TOKENIZER_DIR.parent)
    meta = prepare_tokens(resolve_inputs([str(SHAKESPEARE)]), tmp_path / "out", tokenizer=TOKENIZER_DIR.name,
                          val_fraction=0, progress=False)
    assert Path(meta["tokenizer"]["folder"]) == TOKENIZER_DIR.resolve()


def test_hf_dataset_hub_failures_and_missing_text_column_are_one_line_errors(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(path, name=None, *, split=None):
        raise ConnectionError("Couldn't reach 'someone/corpus' on the Hub (LocalEntryNotFoundError)\nmore detail")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=unreachable))
    with pytest.raises(KronyptError) as caught:
        prepare_tokens([HFDatasetSource.parse("someone/corpus:en")], tmp_path / "out", tokenizer=str(TOKENIZER_DIR),
                       progress=False)
    assert str(caught.value) == ("cannot load Hugging Face dataset 'someone/corpus': Couldn't reach "
                                 "'someone/corpus' on the Hub (LocalEntryNotFoundError)")
    untitled = FakeDataset(["x"])
    untitled.column_names = ["content"]
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=lambda *a, **k: untitled))
    with pytest.raises(KronyptError, match="dataset 'someone/corpus' has no 'text' column; its columns: content"):
        HFDatasetSource.parse("someone/corpus").describe()
    assert not (tmp_path / "out").exists()


# A Ctrl-C delivered while the worker processes are forked (the at-fork hook stands in for the unlucky moment).
CTRL_C_DURING_FORK = """
import os, signal, sys
fired = []

def ctrl_c_now():
    if not fired:
        fired.append(True)
        os.kill(os.getpid(), signal.SIGINT)

os.register_at_fork(after_in_parent=ctrl_c_now)
from kronypt.cli.main import main
main(["data", "prepare", "--input", sys.argv[1], "--tokenizer", sys.argv[2], "--out", sys.argv[3],
      "--workers", "2", "--json"])
"""


@pytest.mark.parametrize(("sig", "code", "said"), [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")])
def test_a_signal_while_the_workers_start_stops_the_run(tmp_path: Path, sig: str, code: int, said: str) -> None:
    """Arriving inside a fork, the KeyboardInterrupt used to be swallowed by Python's at-fork machinery (the
    run finished with exit 0) or to kill a starting worker (the pool hung); now SIGINT and SIGTERM are held
    back while workers start, and the main process stops: exit 130 / 143, one line, nothing left behind."""
    text = tmp_path / "docs.txt"
    text.write_text(f"\n{EOT}\n".join(f"document {i} " * 50 for i in range(20)))
    out = tmp_path / "out"
    script = CTRL_C_DURING_FORK.replace("signal.SIGINT", f"signal.{sig}")
    done = subprocess.run([sys.executable, "-c", script, str(text), str(TOKENIZER_DIR), str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == code, done.stderr
    assert done.stderr.strip() == f"kronypt: {said}" and done.stdout == ""
    assert os.listdir(out) == []


# SIGTERM to the main process alone (a plain `kill PID`) once the workers are busy; the workers' pids are
# written to a file as they start.
SIGTERM_MID_RUN = """
import os, signal, sys
from kronypt.data.writer import TokenFolderWriter
os.register_at_fork(after_in_child=lambda: open(sys.argv[4], "a").write(f"{os.getpid()}\\n"))
original = TokenFolderWriter.write
def write_then_term(self, split, tokens):
    original(self, split, tokens)
    os.kill(os.getpid(), signal.SIGTERM)
TokenFolderWriter.write = write_then_term
from kronypt.cli.main import main
main(["data", "prepare", "--input", sys.argv[1], "--tokenizer", sys.argv[2], "--out", sys.argv[3],
      "--workers", "2", "--val-fraction", "0"])
"""


def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "\nState:\tZ" in status  # exited, waiting for init to reap it


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads process states from /proc")
def test_sigterm_to_the_main_process_ends_the_workers_too(tmp_path: Path) -> None:
    """A plain `kill PID` used to leave the tokenising workers running forever (orphans blocked on the
    pool's queue, hundreds of MB each) and the partial files on disk."""
    text = tmp_path / "docs.txt"
    text.write_text(f"\n{EOT}\n".join(f"document {i} " * 5000 for i in range(40)))  # several batches
    out, pids = tmp_path / "out", tmp_path / "pids"
    done = subprocess.run([sys.executable, "-c", SIGTERM_MID_RUN, str(text), str(TOKENIZER_DIR), str(out), str(pids)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 143, done.stderr
    assert done.stderr.strip() == "kronypt: terminated"
    assert os.listdir(out) == []
    workers = [int(line) for line in pids.read_text().split()]
    assert workers
    deadline = time.monotonic() + 30
    while not all(map(_gone, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(map(_gone, workers)), [pid for pid in workers if not _gone(pid)]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads process states from /proc")
def test_sigkill_of_the_main_process_ends_the_workers_too(tmp_path: Path) -> None:
    """A SIGKILL runs no cleanup: the workers lived on forever (parent init, blocked on the pool's queue,
    the partial files open). Now each one follows its parent."""
    text = tmp_path / "docs.txt"
    text.write_text(f"\n{EOT}\n".join(f"document {i} " * 5000 for i in range(40)))  # several batches
    out, pids = tmp_path / "out", tmp_path / "pids"
    script = SIGTERM_MID_RUN.replace("signal.SIGTERM", "signal.SIGKILL")
    with open(tmp_path / "output", "w") as output:  # not a pipe: orphans would hold it open
        done = subprocess.run([sys.executable, "-c", script, str(text), str(TOKENIZER_DIR), str(out), str(pids)],
                              stdout=output, stderr=subprocess.STDOUT, timeout=120)
    assert done.returncode == -signal.SIGKILL, (tmp_path / "output").read_text()
    workers = [int(line) for line in pids.read_text().split()]
    assert len(workers) == 2
    deadline = time.monotonic() + 30
    try:
        while not all(map(_gone, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(map(_gone, workers)), [pid for pid in workers if not _gone(pid)]
    finally:
        for pid in workers:  # this test's own orphans, if any
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
    assert sorted(os.listdir(out)) == ["train.bin.partial", "val.bin.partial"]


def test_a_held_back_sigterm_is_delivered_when_sigint_is_ignored() -> None:
    """In a background job SIGINT is ignored; a SIGINT then a SIGTERM inside the window used to drop both."""
    got = []
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        with prepare_module._signals_held_back():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # both arrive (and are only recorded) inside the window
            assert got == []
        assert got == [signal.SIGTERM]
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
