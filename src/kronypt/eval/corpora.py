"""The evaluation texts: WikiText-2/103 and LAMBADA, from the Hugging Face hub or from local files.

A corpus is named by (task, split, form). The form is what a protocol reads:

- `tokens`: non-raw WikiText rows (with `<unk>`), exactly as HF `wikitext` yields them: a text line keeps its
  trailing newline, a blank line becomes "".
- `raw`: the same rows of raw WikiText.
- `pages`: raw WikiText split into articles as `EleutherAI/wikitext_document_level` (lm-eval's `wikitext`).
- `passages`: LAMBADA passages as HF `lambada` yields them (tokenised, lower-cased, one per line).
- `openai`: the detokenised LAMBADA texts of OpenAI's `lambada_test.jsonl` (lm-eval's `lambada_openai`).

With `data_dir`, files are read in the layout of `../shared/data` (`LOCAL_FILES`); without it the `datasets`
package (the `data` extra) downloads them from the hub. Both give the same rows.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from kronypt.errors import KronyptError

TASKS = ("wikitext2", "wikitext103", "lambada")
# The protocol a task runs under when none is named: the Hugging Face guide's for WikiText, lm-eval's
# lambada_openai (last-word accuracy) for LAMBADA. `krony-pt`, the paper's, is asked for by name.
DEFAULT_PROTOCOLS = {"wikitext2": "hf-strided", "wikitext103": "hf-strided", "lambada": "lambada-openai"}
SPLITS = ("test", "validation")
FORMS = ("tokens", "raw", "pages", "passages", "openai")

_WIKI_DIRS = {"wikitext2": "wikitext-2", "wikitext103": "wikitext-103"}
_WIKI_FILES = {("test", "tokens"): "wiki.test.tokens", ("validation", "tokens"): "wiki.valid.tokens",
               ("test", "raw"): "wiki.test.raw", ("validation", "raw"): "wiki.valid.raw"}

# (task, split, form) -> file under --data-dir.
LOCAL_FILES: dict[tuple[str, str, str], str] = {
    **{(task, split, form): f"{folder}/{name}"
       for task, folder in _WIKI_DIRS.items() for (split, form), name in _WIKI_FILES.items()},
    **{(task, split, "pages"): f"{folder}/{_WIKI_FILES[split, 'raw']}"
       for task, folder in _WIKI_DIRS.items() for split in SPLITS},
    ("lambada", "test", "passages"): "lambada/lambada_test_plain_text.txt",
    ("lambada", "validation", "passages"): "lambada/lambada_development_plain_text.txt",
    ("lambada", "test", "openai"): "lambada/lambada_test.jsonl",
}

_WIKI_SIZES = {"wikitext2": "2", "wikitext103": "103"}
# (task, split, form) -> (hub dataset, config or None for its only one, split, text column).
HUB_SOURCES: dict[tuple[str, str, str], tuple[str, str | None, str, str]] = {
    **{(task, split, form): ("Salesforce/wikitext", f"wikitext-{size}-{'raw-' if form == 'raw' else ''}v1",
                             split, "text")
       for task, size in _WIKI_SIZES.items() for split in SPLITS for form in ("tokens", "raw")},
    **{(task, split, "pages"): ("EleutherAI/wikitext_document_level", f"wikitext-{size}-raw-v1", split, "page")
       for task, size in _WIKI_SIZES.items() for split in SPLITS},
    ("lambada", "test", "passages"): ("cimec/lambada", None, "test", "text"),  # its only config, as lm-eval
    ("lambada", "validation", "passages"): ("cimec/lambada", None, "validation", "text"),
    ("lambada", "test", "openai"): ("EleutherAI/lambada_openai", "default", "test", "text"),
}


def load_texts(task: str, split: str, form: str, data_dir: str | Path | None = None) -> list[str]:
    """The rows (or pages, passages) of one corpus, in dataset order."""
    key = _check_key(task, split, form)
    if data_dir is not None:
        return _read_local(key, Path(data_dir).expanduser())
    return _read_hub(key)


def check_available(task: str, split: str, form: str, data_dir: str | Path | None = None) -> None:
    """Raise the error `load_texts` would raise for a missing file or a missing `datasets`, without reading."""
    key = _check_key(task, split, form)
    if data_dir is not None:
        _local_path(key, Path(data_dir).expanduser())
    else:
        _datasets_module()


def available_splits(task: str, form: str) -> list[str]:
    """The splits a corpus form of `task` has (LAMBADA OpenAI: test only)."""
    return [s for s in SPLITS if (task, s, form) in HUB_SOURCES]


def wikitext_rows(text: str) -> list[str]:
    """Rows of a WikiText file as HF `wikitext` yields them: lines with their newline, blank lines as "".

    Lines are split as iterating the opened file splits them (on "\\n" only, after newline translation).
    """
    return [line if line.strip() else "" for line in io.StringIO(text, newline="\n")]


def wikitext_pages(text: str) -> list[str]:
    """Articles of a raw WikiText file as `EleutherAI/wikitext_document_level` yields them.

    A page starts at each top-level heading line (` = Title = `, not ` = = Section = = `) and holds the
    lines up to the next one, joined with "\\n"; text before the first heading is dropped if blank.
    """
    pages: list[str] = []
    lines: list[str] = []
    for line in text.split("\n"):
        if _is_title(line):
            page = "\n".join(lines)
            if page.strip():
                pages.append(page)
            lines = []
        lines.append(line)
    pages.append("\n".join(lines))
    return pages


def _is_title(line: str) -> bool:
    collapsed = line.replace("= = =", "===").replace("= =", "==").strip()
    return collapsed.startswith("= ") and collapsed.endswith(" =")


def _check_key(task: str, split: str, form: str) -> tuple[str, str, str]:
    if task not in TASKS:
        raise KronyptError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    if split not in SPLITS:
        raise KronyptError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if form not in FORMS:
        raise KronyptError(f"unknown corpus form {form!r}; choose from {', '.join(FORMS)}")
    key = (task, split, form)
    if key not in HUB_SOURCES:
        known = available_splits(task, form)
        raise KronyptError(f"{task} has no {split} split in this form ({form}); available: {', '.join(known)}")
    return key


def _local_path(key: tuple[str, str, str], data_dir: Path) -> Path:
    if data_dir.is_file():
        raise KronyptError(f"data folder {data_dir} is a file; --data-dir takes a folder laid out like shared/data")
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data folder {data_dir} does not exist")
    path = data_dir / LOCAL_FILES[key]
    if not path.is_file():
        layout = ", ".join(sorted(set(LOCAL_FILES.values())))
        raise KronyptError(f"missing {path}: --data-dir expects the layout of shared/data ({layout})")
    return path


def _read_local(key: tuple[str, str, str], data_dir: Path) -> list[str]:
    path = _local_path(key, data_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise KronyptError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    form = key[2]
    if form in ("tokens", "raw"):
        return wikitext_rows(text)
    if form == "pages":
        return wikitext_pages(text)
    if form == "passages":
        return text.splitlines()
    return [_lambada_text(path, number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def _lambada_text(path: Path, number: int, line: str) -> str:
    """The passage of one line of lambada_test.jsonl, or a one-line error naming the line."""
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise KronyptError(f"{path}:{number}: not JSON ({exc})") from None
    text = record.get("text") if isinstance(record, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise KronyptError(f'{path}:{number}: expected a JSON object with a non-empty "text" string')
    return text


# How to read the local files instead, for both callers: `kronypt eval` and training's WikiText check.
LOCAL_HINT = "read local files instead (kronypt eval --data-dir DIR; kronypt train --eval-wikitext DIR)"


def _datasets_module():
    try:
        import datasets
    except ModuleNotFoundError:
        raise KronyptError("reading evaluation data from the hub needs the `datasets` package: "
                           f"pip install 'kronypt[data]', or {LOCAL_HINT}") from None
    return datasets


def _read_hub(key: tuple[str, str, str]) -> list[str]:
    datasets = _datasets_module()
    name, config, split, column = HUB_SOURCES[key]
    try:
        return list(datasets.load_dataset(name, config, split=split)[column])
    except (OSError, ConnectionError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KronyptError(f"cannot load {name} ({config}, {split}) from the hub: {first}; "
                           f"{LOCAL_HINT}") from None
