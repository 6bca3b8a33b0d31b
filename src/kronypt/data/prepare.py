"""Tokenise document sources into a token folder (`train.bin`, `val.bin`, `meta.json`; nanoGPT layout).

The pipeline reads documents in input order, assigns each to train or val, encodes batches of them in
worker processes, and appends the tokens in the same order, so the output is byte-identical for any
number of workers. A first pass counts the documents, which fixes the validation split before anything
is encoded and gives the progress bar its total.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import multiprocessing
import os
import signal
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from kronypt.data.sources import DocumentSource, check_disjoint, sha256_file
from kronypt.data.tokenizer import (
    HF_FILES,
    HFEncoding,
    encode_documents,
    eot_token,
    load_encoding,
    token_dtype,
    tokenizer_files,
)
from kronypt.data.writer import SPLITS, TOKENIZER_FOLDER, TokenFolderWriter
from kronypt.errors import KronyptError

FORMAT = "kronypt-tokens/1"
DEFAULT_VAL_FRACTION = 0.0005  # nanoGPT's OpenWebText split
BATCH_CHARS = 1 << 20  # documents are sent to workers in batches of about this many characters
Encoded = tuple[np.ndarray, np.ndarray]  # (tokens, tokens per document), see encode_documents


@dataclass(frozen=True)
class _Batch:
    """Documents to encode together, with where each came from and which split it goes to."""

    texts: list[str]
    inputs: list[int]
    splits: list[str]


@dataclass
class _Counts:
    """Documents per split, and documents and tokens per input, as written so far."""

    split_documents: dict[str, int]
    per_input: list[dict[str, int]]


def prepare_tokens(
    inputs: Sequence[DocumentSource],
    out_dir: str | Path,
    *,
    val_inputs: Sequence[DocumentSource] = (),
    val_fraction: float = DEFAULT_VAL_FRACTION,
    seed: int = 0,
    tokenizer: str = "gpt2",
    tokenizer_label: str | None = None,
    workers: int = 1,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Tokenise `inputs` (and `val_inputs`) into `out_dir`; returns the meta.json contents.

    Validation: every document of `val_inputs` if given; otherwise a seeded random choice of
    round(val_fraction × documents) whole documents of `inputs` (at least one, and at least one left for
    training, when val_fraction > 0), or, when the inputs hold a single document (one plain text file such
    as tiny Shakespeare), its last round(val_fraction × tokens) tokens, as nanoGPT's character-level
    recipes split their one file. `val_fraction=0` without `val_inputs` writes an empty val.bin.
    `tokenizer` is a tokenizer folder or a tiktoken encoding name (see `kronypt.data.tokenizer`); a Hugging Face
    tokenizer (tokenizer.json) is copied into the folder's `tokenizer/`, so the token folder names a tokenizer
    that stays where it is, and meta.json records `tokenizer_label` (what the user named) as its source.
    `progress` shows tqdm bars on stderr when it is a terminal.
    """
    if not inputs:
        raise KronyptError("no inputs: give --input PATH_OR_GLOB or --hf-dataset NAME[:CONFIG]")
    if not 0 <= val_fraction < 1:
        raise KronyptError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if workers < 1:
        raise KronyptError(f"--workers must be at least 1, got {workers}")
    check_disjoint(inputs, val_inputs)
    encoding = load_encoding(tokenizer)
    sources = [*inputs, *val_inputs]
    counts = [_count_documents(source, progress) for source in sources]
    n_train = sum(counts[: len(inputs)])
    if n_train == 0:
        raise KronyptError("the training inputs hold no documents (empty files?)")
    tail = not val_inputs and val_fraction > 0 and n_train == 1  # one document: split it by tokens
    val_docs = set() if val_inputs or tail else _choose_val_documents(n_train, val_fraction, seed)
    if n_train - len(val_docs) == 0:
        raise KronyptError("the training inputs hold no documents")
    if val_inputs and sum(counts[len(inputs):]) == 0:
        raise KronyptError("the validation inputs hold no documents")

    done = _Counts(dict.fromkeys(SPLITS, 0), [{"documents": 0, "tokens": 0} for _ in sources])
    dtype = token_dtype(encoding, tokenizer)
    with _sigterm_exits(), TokenFolderWriter(Path(out_dir), force, dtype) as writer:
        if isinstance(encoding, HFEncoding):
            folder = Path(tokenizer).expanduser()
            writer.add_folder(TOKENIZER_FOLDER, {name: (folder / name).read_bytes() for name in HF_FILES
                                                 if (folder / name).is_file()})
        batches = _batches(sources, len(inputs), val_docs, tail)
        with tqdm(total=sum(counts), unit="doc", desc="tokenising", disable=None if progress else True) as bar:
            for batch, encoded in _encode(batches, tokenizer, workers):
                _write_batch(writer, batch, encoded, done, val_fraction)
                bar.update(len(batch.texts))
                bar.set_postfix(tokens=f"{sum(writer.tokens.values()):,}")
        meta = {
            "format": FORMAT,
            "created_by": f"kronypt {_version()}",
            "dtype": np.dtype(dtype).name,
            "layout": "flat token ids; every document is followed by eot_token",
            "tokenizer": _describe_tokenizer(tokenizer, encoding, tokenizer_label),
            "vocab_size": encoding.n_vocab,
            "eot_token": eot_token(encoding),
            "splits": {split: {"file": f"{split}.bin", "tokens": writer.tokens[split],
                               "documents": done.split_documents[split]} for split in SPLITS},
            "val_split": ({"method": "inputs"} if val_inputs else {"method": "tail", "fraction": val_fraction}
                          if tail else {"method": "documents", "fraction": val_fraction, "seed": seed}),
            "inputs": [{**source.describe(), "role": "input" if i < len(inputs) else "val_input",
                        **done.per_input[i]} for i, source in enumerate(sources)],
        }
        writer.commit(meta)
    return meta


def _count_documents(source: DocumentSource, progress: bool) -> int:
    documents = tqdm(source.documents(), desc=f"scanning {source.label}", unit="doc", leave=False,
                     disable=None if progress else True)
    return sum(1 for _ in documents)


def _choose_val_documents(n_documents: int, fraction: float, seed: int) -> set[int]:
    """Indices of the validation documents: round(fraction × n), at least 1 and at most n - 1."""
    if fraction == 0:
        return set()
    if n_documents < 2:
        raise KronyptError(f"--val-fraction splits whole documents, but the inputs hold {n_documents} "
                           "document(s); add inputs, give --val-input PATH, or pass --val-fraction 0")
    size = min(max(round(fraction * n_documents), 1), n_documents - 1)
    rng = np.random.default_rng(seed)
    return set(rng.choice(n_documents, size=size, replace=False).tolist())


def _batches(sources: Sequence[DocumentSource], n_train_sources: int, val_docs: set[int],
             tail: bool = False) -> Iterator[_Batch]:
    """All documents in input order, grouped into batches of about BATCH_CHARS characters; with `tail`,
    the training documents (there is one) go to split "tail", cut between train and val when written."""
    batch = _Batch([], [], [])
    size = 0
    train_index = 0
    for source_index, source in enumerate(sources):
        for text in source.documents():
            if source_index < n_train_sources:
                split = "tail" if tail else "val" if train_index in val_docs else "train"
                train_index += 1
            else:
                split = "val"
            batch.texts.append(text)
            batch.inputs.append(source_index)
            batch.splits.append(split)
            size += len(text)
            if size >= BATCH_CHARS:
                yield batch
                batch, size = _Batch([], [], []), 0
    if batch.texts:
        yield batch


def _encode(batches: Iterator[_Batch], tokenizer: str, workers: int) -> Iterator[tuple[_Batch, Encoded]]:
    """Encode batches in order; with workers > 1, in a process pool with a bounded number in flight."""
    if workers == 1:
        for batch in batches:
            yield batch, _encode_batch(tokenizer, batch.texts)
        return
    pool = ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(tokenizer,))
    pending: deque[tuple[_Batch, Future[Encoded]]] = deque()
    try:
        for batch in batches:
            with _signals_held_back():  # a submit may start (fork) the workers
                pending.append((batch, pool.submit(_encode_batch, tokenizer, batch.texts)))
            if len(pending) >= 2 * workers:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
    finally:
        pool.shutdown(cancel_futures=True)


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """Turn SIGTERM into SystemExit(143) while tokenising, so that a plain `kill` stops the run the way
    Ctrl-C does: the worker pool shuts down (its workers would otherwise outlive the main process, blocked
    forever on the pool's queue) and the partial files are removed. Only from the main thread, where
    Python delivers signals."""
    # Not from another thread, and not over a host program's own handler (kronypt as a library).
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


HELD_BACK = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _signals_held_back() -> Iterator[None]:
    """Record a SIGINT or SIGTERM that arrives while worker processes may be started, and deliver it
    afterwards.

    A Ctrl-C reaches the whole process group. Raised during a fork, its KeyboardInterrupt could land inside
    the pool's bookkeeping (the executor never learns of its workers, which then wait forever and hang the
    exit) or in an at-fork callback (where Python prints and swallows it: the run went on to the end); in a
    child forked before `_init_worker` ignores SIGINT, it kills a worker. SIGTERM's SystemExit (see
    `_sigterm_exits`) would do the same. Here the handlers only record them, in the parent and in the
    children forked meanwhile (which ignore them), and the parent delivers the first one once the pool is
    consistent, so that its cleanup runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum)) for sig in HELD_BACK}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    due = [sig for sig in received if previous[sig] != signal.SIG_IGN]  # e.g. SIGINT in a background job
    if not due:
        return
    handler = previous[due[0]]
    if callable(handler):  # Python's SIGINT handler raises KeyboardInterrupt, `_sigterm_exits` SystemExit
        handler(due[0], None)
    else:  # SIG_DFL (or a handler set outside Python): the signal's own action, now
        signal.raise_signal(due[0])


def _init_worker(tokenizer: str) -> None:
    """Build the encoding once per worker; leave Ctrl-C to the main process, which cleans up, let a SIGTERM
    end the worker (it may have been forked while `_signals_held_back` recorded it), and end with the main
    process however that ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _exit_with_parent()
    load_encoding(tokenizer)


def _exit_with_parent() -> None:
    """Exit this worker as soon as the process that started it is gone, also after a SIGKILL, which runs no
    cleanup: an orphaned worker would wait forever on the pool's queue, holding its memory and the partial
    token files it inherited. A daemon thread waits on the parent's sentinel (a pipe whose other end only
    the parent holds, on every platform and start method; under fork the workers started later hold it
    too, and each follows the one forked after it)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def wait_then_exit() -> None:
        parent.join()
        os._exit(1)

    threading.Thread(target=wait_then_exit, name="exit-with-parent", daemon=True).start()


def _encode_batch(tokenizer: str, texts: list[str]) -> Encoded:
    return encode_documents(load_encoding(tokenizer), texts)


def _write_batch(writer: TokenFolderWriter, batch: _Batch, encoded: Encoded, done: _Counts,
                 val_fraction: float = 0.0) -> None:
    tokens, lengths = encoded
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    for i, (source_index, split) in enumerate(zip(batch.inputs, batch.splits, strict=True)):
        document = tokens[offsets[i]: offsets[i + 1]]
        if split == "tail":  # the last val_fraction of the tokens (at least one each side) is validation
            cut = len(document) - min(max(round(val_fraction * len(document)), 1), len(document) - 1)
            pieces = {"train": document[:cut], "val": document[cut:]}
        else:
            pieces = {split: document}
        for name, piece in pieces.items():
            writer.write(name, piece)
            done.split_documents[name] += 1  # a split document counts once in each split
        done.per_input[source_index]["documents"] += 1
        done.per_input[source_index]["tokens"] += int(lengths[i])


def _describe_tokenizer(source: str, encoding: object, label: str | None) -> dict[str, Any]:
    if isinstance(encoding, HFEncoding):  # copied into the token folder: a path relative to it
        folder = Path(source).expanduser()
        return {"folder": TOKENIZER_FOLDER, "source": label or source,
                "files": {name: sha256_file(folder / name) for name in HF_FILES if (folder / name).is_file()}}
    files = tokenizer_files(source)
    if files is None:
        return {"tiktoken": encoding.name}
    return {"folder": str(Path(source).expanduser().resolve()),  # absolute: training may run elsewhere
            "files": {path.name: sha256_file(path) for path in files}}


def _version() -> str:
    """kronypt's version, as installed (its package metadata)."""
    try:
        return importlib.metadata.version("kronypt")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
