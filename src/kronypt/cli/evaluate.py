"""`kronypt eval`: perplexity and LAMBADA accuracy of one or more models under named protocols."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from kronypt.cli.app import app, console, print_json
from kronypt.cli.options import check_json_file
from kronypt.errors import KronyptError
from kronypt.eval.corpora import DEFAULT_PROTOCOLS, TASKS

PROTOCOL_HELP = (
    f"Comma-separated protocols (default: each task's own, {DEFAULT_PROTOCOLS['wikitext2']} for WikiText and "
    f"{DEFAULT_PROTOCOLS['lambada']} for LAMBADA); each task runs under those "
    "defined on it, and pairs a task does not define (or whose data lacks --split) are skipped with a "
    "warning. krony-pt: the paper's numbers (non-raw WikiText / LAMBADA passages, disjoint windows, mean of "
    "window means; LAMBADA as token perplexity); hf-strided: HF guide on raw WikiText, token-weighted, "
    "--stride; lambada-openai: last-word accuracy and last-word perplexity (test split only); word: lm-eval's "
    "word/byte perplexity on raw WikiText articles."
)


@app.command(name="eval")
def eval_command(
    models: Annotated[list[str], typer.Argument(help="Hub ids (gpt2, distilgpt2) or local model folders.")],
    tasks: Annotated[str, typer.Option(help=f"Comma-separated tasks: {', '.join(TASKS)}.")] = "wikitext2",
    protocol: Annotated[str | None, typer.Option(help=PROTOCOL_HELP, show_default=False)] = None,
    split: Annotated[str, typer.Option(help="test, or validation for model selection.")] = "test",
    stride: Annotated[int | None, typer.Option(min=1, help="hf-strided stride in tokens (default: half "
                                                           "the window, 512).")] = None,
    context: Annotated[int | None, typer.Option(min=2, help=(
        "Window length in tokens (default: 1024 for krony-pt and hf-strided, as they are defined; the model's "
        "context length for lambada-openai and word); at most every model's context length."))] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Read local files laid out like shared/data instead "
                                                       "of the hub (e.g. ../shared/data).")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Windows per forward pass (default: 2048 "
                                                                "tokens' worth on CPU, 16384 on CUDA).")] = None,
    device: Annotated[str, typer.Option(help="auto (the GPU when there is one), cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    max_tokens: Annotated[int | None, typer.Option(min=2, help="Only the first N tokens of each task "
                                                               "(whole examples/articles): quick checks.")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer hub id or folder (default: each "
                                                       "model's own).")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the records as JSON to this file "
                                                                  "('-' prints them instead of the table).")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Evaluate models on WikiText-2/103 and LAMBADA under named protocols; print one comparison table.

    The table has one row per model and protocol; its title names the split, and each row shows its scored
    tokens and input tokens/s (`ppl` is token perplexity; lambada-openai's `last-word ppl` is per example).
    --json records carry protocol, split, scored tokens and tokens/s for every number. Test splits are for
    reporting; select checkpoints with --split validation.

    Example (the paper's table): kronypt eval gpt2 distilgpt2 --tasks wikitext103,wikitext2,lambada
    --protocol krony-pt
    """
    from kronypt.eval import comparison_table, evaluate_models, select_pairs, write_json
    from kronypt.models.loading import check_device

    task_list = _split_list(tasks)
    protocol_list = _split_list(protocol) if protocol is not None else None
    target = check_device(device)  # tasks, protocols, split, data files, models and tokenizers are checked
    pairs = select_pairs(task_list, protocol_list, split).pairs  # before the first model is evaluated
    if stride is not None and not any(p == "hf-strided" for _, p in pairs):
        raise KronyptError("--stride applies to the hf-strided protocol only, not "
                           f"{', '.join(dict.fromkeys(p for _, p in pairs))}")
    check_json_file(json_path)
    to_file = json_path is not None and str(json_path) != "-"
    records = evaluate_models(models, task_list, protocol_list, tokenizer=tokenizer, dtype=dtype, device=target,
                              split=split, data_dir=data_dir, stride=stride, context=context, batch_size=batch_size,
                              max_tokens=max_tokens, progress=progress, on_skip=_warn,
                              # saved after every model: an interrupted run keeps the models already done
                              on_model_done=(lambda done: write_json(done, json_path)) if to_file else None)
    if json_path is not None and str(json_path) == "-":
        print_json([r.to_dict() for r in records])
        return
    console.print(comparison_table(records))
    if json_path is not None:
        write_json(records, json_path)
        console.print(f"wrote {len(records)} records to {json_path}")


def _warn(message: str) -> None:
    sys.stderr.write(f"kronypt: warning: {message}\n")


def _split_list(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise KronyptError(f"expected a comma-separated list, got {value!r}")
    return items
