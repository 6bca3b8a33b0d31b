"""Where documents come from: text and JSON-lines files (optionally gzipped) and Hugging Face datasets.

What a document is (the unit that gets an end-of-text token after it and that the validation split
assigns whole):

- `.txt` / `.txt.gz`: the whole file is one document, unless it holds separator lines: a line that is
  exactly `<|endoftext|>` ends the document before it, and the separator line itself belongs to no
  document (the end-of-text token replaces it). The Gutenberg shards in `shared/data/corpus` are written
  this way, one book per document. Text is kept byte for byte (line endings are not translated).
- `.jsonl` / `.jsonl.gz`: one document per line, the string field `text` of a JSON object; blank lines
  are skipped.
- Hugging Face datasets (`NAME[:CONFIG]`, split `train`): one document per row, column `text`.

Empty documents are skipped everywhere: they would add nothing but an end-of-text token.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from kronypt.errors import KronyptError

SEPARATOR_LINES = ("<|endoftext|>", "<|endoftext|>\n", "<|endoftext|>\r\n")
TEXT_SUFFIXES = (".txt", ".txt.gz")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES


class DocumentSource(Protocol):
    """Anything that yields documents in a fixed order and describes itself for meta.json."""

    @property
    def label(self) -> str: ...

    def documents(self) -> Iterator[str]: ...

    def describe(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class FileSource:
    """One `.txt`, `.txt.gz`, `.jsonl` or `.jsonl.gz` file."""

    path: Path

    @property
    def label(self) -> str:
        """The file name, for progress bars."""
        return self.path.name

    def documents(self) -> Iterator[str]:
        """Yield the file's documents (see the module docstring); bad encodings raise one-line errors."""
        try:
            with _open_text(self.path) as handle:
                if self.path.name.endswith(TEXT_SUFFIXES):
                    yield from _text_documents(handle)
                else:
                    yield from _jsonl_documents(handle, self.path)
        except UnicodeDecodeError as exc:
            raise KronyptError(f"{self.path} is not UTF-8 text: {exc.reason}") from None
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise KronyptError(f"{self.path} is not a complete gzip file ({exc})") from None

    def describe(self) -> dict[str, Any]:
        """Path, size in bytes and SHA-256 of the file as stored (compressed bytes for .gz)."""
        return {"path": str(self.path), "bytes": self.path.stat().st_size, "sha256": sha256_file(self.path)}


@dataclass
class HFDatasetSource:
    """The `train` split of a Hugging Face dataset, column `text`; needs the optional `datasets` package."""

    name: str
    config: str | None = None
    split: str = "train"
    _dataset: Any = field(default=None, init=False, repr=False)

    @classmethod
    def parse(cls, spec: str) -> HFDatasetSource:
        """'openwebtext' or 'wikitext:wikitext-103-raw-v1' (NAME[:CONFIG])."""
        name, _, config = spec.partition(":")
        if not name:
            raise KronyptError(f"cannot read --hf-dataset {spec!r}: expected NAME or NAME:CONFIG")
        return cls(name, config or None)

    @property
    def label(self) -> str:
        """NAME[:CONFIG], for progress bars."""
        return f"{self.name}:{self.config}" if self.config else self.name

    def documents(self) -> Iterator[str]:
        """Yield the non-empty `text` values in row order, reading the dataset in batches."""
        for batch in self._load().iter(batch_size=1024):
            yield from (text for text in batch["text"] if text)

    def describe(self) -> dict[str, Any]:
        """Name, config, split, row count and the dataset's cache fingerprint."""
        dataset = self._load()
        return {"hf_dataset": self.name, "config": self.config, "split": self.split, "rows": len(dataset),
                "fingerprint": getattr(dataset, "_fingerprint", None)}

    def _load(self) -> Any:
        if self._dataset is None:
            try:
                import datasets
            except ImportError:
                raise KronyptError("--hf-dataset needs the Hugging Face `datasets` package: "
                                   "pip install 'kronypt[data]'") from None
            try:
                dataset = datasets.load_dataset(self.name, self.config, split=self.split)
            except Exception as exc:  # noqa: BLE001  (datasets raises many types for missing or offline data)
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise KronyptError(f"cannot load Hugging Face dataset {self.name!r}: {first}") from None
            if "text" not in dataset.column_names:
                raise KronyptError(f"dataset {self.name!r} has no 'text' column; its columns: "
                                   f"{', '.join(dataset.column_names)}")
            self._dataset = dataset
        return self._dataset


def resolve_inputs(patterns: Sequence[str]) -> list[FileSource]:
    """Expand paths and globs (sorted matches, `**` allowed) to input files, in the given order.

    A missing path, a glob that matches no file, a folder named as an input or an unsupported suffix raises a
    one-line error (folders a glob matches, as `data/**/*` does, are passed over); a file named twice is
    read once.
    """
    paths: list[Path] = []
    seen: set[Path] = set()
    for pattern in patterns:
        if any(char in pattern for char in "*?["):
            matches = [Path(p) for p in sorted(glob.glob(str(Path(pattern).expanduser()), recursive=True))
                       if not Path(p).is_dir()]
            if not matches:
                raise KronyptError(f"input glob {pattern!r} matches no file")
        else:
            matches = [Path(pattern).expanduser()]
        for path in matches:
            _check_input(path)
            if path.resolve() not in seen:
                seen.add(path.resolve())
                paths.append(path)
    return [FileSource(path) for path in paths]


def check_disjoint(train: Sequence[DocumentSource], val: Sequence[DocumentSource]) -> None:
    """Refuse a file that is both a training and a validation input (it would leak into validation)."""
    train_paths = {source.path.resolve() for source in train if isinstance(source, FileSource)}
    for source in val:
        if isinstance(source, FileSource) and source.path.resolve() in train_paths:
            raise KronyptError(f"{source.path} is both a training and a validation input")


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _check_input(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"input file {path} does not exist")
    if path.is_dir():
        raise KronyptError(f"input {path} is a folder; name its files, e.g. '{path}/*.txt.gz'")
    if not path.name.endswith(SUFFIXES):
        raise KronyptError(f"input {path} has an unsupported type; supported: {', '.join(SUFFIXES)}")


def _open_text(path: Path) -> TextIO:
    # newline="" keeps line endings as stored, so decoding the tokens gives back the exact text.
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def _text_documents(handle: TextIO) -> Iterator[str]:
    lines: list[str] = []
    for line in handle:
        if line in SEPARATOR_LINES:
            if lines:
                yield "".join(lines)
            lines = []
        else:
            lines.append(line)
    if lines:
        yield "".join(lines)


def _jsonl_documents(handle: TextIO, path: Path) -> Iterator[str]:
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise KronyptError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise KronyptError(f"{path}:{number}: expected a JSON object with a string field 'text'")
        if text:
            yield text
