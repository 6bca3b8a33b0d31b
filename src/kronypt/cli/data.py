"""`kronypt data prepare`: text corpora to token folders for training, with any model's tokenizer."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from kronypt.cli.app import app, console, print_json
from kronypt.cli.options import check_out_path, check_writable
from kronypt.data.prepare import DEFAULT_VAL_FRACTION, prepare_tokens
from kronypt.data.sources import DocumentSource, HFDatasetSource, resolve_inputs
from kronypt.errors import KronyptError

data_app = typer.Typer(help="Prepare token data for `kronypt train`.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command(context_settings={"allow_extra_args": True})
def prepare(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", help="Output folder for train.bin, val.bin and meta.json.")],
    inputs: Annotated[list[str] | None, typer.Option(
        "--input", help="A .txt, .txt.gz, .jsonl or .jsonl.gz file or a quoted glob ('corpus/*.txt.gz'); "
                        "repeat for more.")] = None,
    hf_dataset: Annotated[str | None, typer.Option(
        "--hf-dataset", help="A Hugging Face dataset NAME[:CONFIG] (train split, column 'text'); needs the "
                             "`data` extra.")] = None,
    val_fraction: Annotated[float | None, typer.Option(
        "--val-fraction", help="Share of whole documents held out for validation, chosen with --seed "
                               f"(default {DEFAULT_VAL_FRACTION}); from a single document (one plain text "
                               "file), that share of its tokens, taken from the end.")] = None,
    val_inputs: Annotated[list[str] | None, typer.Option(
        "--val-input", help="Validation file or quoted glob (instead of --val-fraction); repeat for more.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the --val-fraction document choice.")] = 0,
    workers: Annotated[int, typer.Option(help="Tokenising processes; the output does not depend on it.")] = (
        os.cpu_count() or 1),
    tokenizer: Annotated[str, typer.Option(
        help="GPT-2's BPE (a folder with encoder.json+vocab.bpe or vocab.json+merges.txt, offline; or a tiktoken "
             "encoding name, downloads once), or any Hugging Face tokenizer: a folder with tokenizer.json, a hub "
             "id, a .gguf file or a packaged model (smollm2-135m), copied into OUT/tokenizer.")] = "gpt2",
    force: Annotated[bool, typer.Option(help="Replace train.bin, val.bin and meta.json in a non-empty --out.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print meta.json instead of the summary table.")] = False,
) -> None:
    """Tokenise text into DIR/train.bin and DIR/val.bin (nanoGPT layout: uint16 ids, uint32 for vocabularies
    beyond 65,536) plus DIR/meta.json.

    Each document is followed by the end-of-text token (<|endoftext|>, or the tokenizer's eos_token). A .txt
    file is one document unless lines holding only <|endoftext|> separate documents (as in the Gutenberg
    shards); each JSON line or dataset row is one document. Output is written under temporary names and renamed
    at the end, meta.json last.

    Example: kronypt data prepare --input 'corpus/gutenberg/gutenberg_train_*.txt.gz'
    --val-input corpus/gutenberg/gutenberg_val.txt.gz --tokenizer gpt2-tokenizer --out data/gutenberg
    (or --tokenizer smollm2-135m --out data/gutenberg-smollm2 for SmolLM2's)
    """
    if ctx.args:
        raise KronyptError(f"unexpected arguments {' '.join(ctx.args)}: quote globs (--input 'dir/*.txt') or "
                           "repeat --input / --val-input for each path")
    if bool(inputs) == bool(hf_dataset):
        raise KronyptError("give either --input PATH_OR_GLOB (repeatable) or --hf-dataset NAME[:CONFIG]")
    if val_inputs and val_fraction is not None:
        raise KronyptError("give either --val-fraction or --val-input, not both")
    out = out.expanduser()
    check_out_path(out)
    check_writable(out.resolve(), f"--out {out}")
    sources: list[DocumentSource] = (
        [HFDatasetSource.parse(hf_dataset)] if hf_dataset else list(resolve_inputs(inputs or []))
    )
    with contextlib.ExitStack() as stack:
        folder = _tokenizer_folder(tokenizer, stack)
        meta = prepare_tokens(sources, out, val_inputs=resolve_inputs(val_inputs or []),
                              val_fraction=DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction, seed=seed,
                              tokenizer=folder, tokenizer_label=tokenizer, workers=workers, force=force,
                              progress=not as_json)
    for warning in _split_warnings(meta):
        sys.stderr.write(f"kronypt: warning: {warning}\n")
    if as_json:
        print_json(meta)
    else:
        console.print(_summary(out, meta))


def _tokenizer_folder(name: str, stack: contextlib.ExitStack) -> str:
    """What `prepare_tokens` reads: a local folder or tiktoken name as given; a model's tokenizer (hub id,
    .gguf file, packaged model) saved to a temporary folder in Hugging Face's layout."""
    import tiktoken

    if Path(name).expanduser().is_dir() or name in tiktoken.list_encoding_names():
        return name
    from kronypt.models.tokenizers import load_tokenizer

    try:
        loaded = load_tokenizer(name)
    except KronyptError as exc:
        known = ", ".join(tiktoken.list_encoding_names())
        raise KronyptError(f"unknown tokenizer {name!r}: not a folder or a tiktoken encoding ({known}), and as a "
                           f"model's tokenizer: {exc}") from None
    folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="kronypt-tokenizer-"))
    loaded.save_pretrained(folder)
    return folder


def _split_warnings(meta: dict[str, Any]) -> list[str]:
    """Splits that are legal but unlikely to be what was meant (the run would fail or mislead later)."""
    train, val = (meta["splits"].get(name, {}).get("tokens", 0) for name in ("train", "val"))
    warnings = []
    whole_documents = meta.get("val_split", {}).get("method") == "documents"
    if 0 < train < val:
        hint = ("--val-fraction picks whole documents (at least one); give --val-input, or more documents"
                if whole_documents else "check --val-fraction / --val-input")
        warnings.append(f"the validation split holds more tokens ({val:,}) than the training split ({train:,}): "
                        + hint)
    if 0 < val <= 1024:
        warnings.append(f"val.bin holds only {val:,} token{'s' if val > 1 else ''}: `kronypt train` needs seq_len + 1 "
                        "of them for one validation window (1,025 for GPT-2's 1024); raise --val-fraction or give "
                        "--val-input")
    if train <= 1024:
        warnings.append(f"train.bin holds only {train:,} token{'s' if train != 1 else ''}: `kronypt train` needs "
                        "seq_len + 1 of them for one training window (1,025 for GPT-2's 1024); add inputs")
    return warnings


def _summary(out: Path, meta: dict[str, Any]) -> Table:
    table = Table(title=f"{out}: {meta['vocab_size']:,}-token vocabulary, end-of-text {meta['eot_token']}, "
                        f"{meta['dtype']} ids")
    for header in ("split", "documents", "tokens", "file"):
        table.add_column(header, justify="left" if header in ("split", "file") else "right")
    for split, info in meta["splits"].items():
        table.add_row(split, f"{info['documents']:,}", f"{info['tokens']:,}", str(out / info["file"]))
    return table
