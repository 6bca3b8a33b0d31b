"""`kronypt eval`: perplexity and LAMBADA accuracy of one or more models under named protocols."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kronypt.cli.app import app, console, print_json
from kronypt.errors import KronyptError
from kronypt.eval import TASKS, comparison_table, evaluate_models, write_json
from kronypt.models.loading import check_device

PROTOCOL_HELP = (
    "Comma-separated protocols; each task runs under those defined on it. "
    "krony-pt: the paper's numbers (non-raw WikiText / LAMBADA passages, disjoint windows, mean of window "
    "means); hf-strided: HF guide on raw WikiText, token-weighted, --stride; lambada-openai: last-word "
    "accuracy and perplexity; word: lm-eval's word/byte perplexity on raw WikiText articles."
)


@app.command(name="eval")
def eval_command(
    models: Annotated[list[str], typer.Argument(help="Hub ids (gpt2, distilgpt2) or local model folders.")],
    tasks: Annotated[str, typer.Option(help=f"Comma-separated tasks: {', '.join(TASKS)}.")] = "wikitext2",
    protocol: Annotated[str, typer.Option(help=PROTOCOL_HELP)] = "hf-strided",
    split: Annotated[str, typer.Option(help="test, or validation for model selection.")] = "test",
    stride: Annotated[int | None, typer.Option(min=1, help="hf-strided stride in tokens (default: half "
                                                           "the context length, 512 for GPT-2).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Read local files laid out like shared/data instead "
                                                       "of the hub (e.g. ../shared/data).")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Windows per forward pass (default: 2048 "
                                                                "tokens' worth on CPU, 16384 on CUDA).")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda (cuda:N).")] = "cpu",
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

    Every number is reported with its protocol, split, scored tokens and tokens/s. Test splits are for
    reporting; select checkpoints with --split validation.

    Example (the paper's table): kronypt eval gpt2 distilgpt2 --tasks wikitext103,wikitext2,lambada
    --protocol krony-pt
    """
    task_list = _split_list(tasks)
    protocol_list = _split_list(protocol)
    check_device(device)  # tasks, protocols, split and data files are checked before any model loads
    if stride is not None and "hf-strided" not in protocol_list:
        raise KronyptError(f"--stride applies to the hf-strided protocol only, not {', '.join(protocol_list)}")
    to_file = json_path is not None and str(json_path) != "-"
    if to_file:
        if json_path.is_dir():
            raise KronyptError(f"cannot write --json {json_path}: it is a folder; give a file name")
        if not json_path.resolve().parent.is_dir():
            raise KronyptError(f"cannot write --json {json_path}: folder {json_path.resolve().parent} does not exist")
    records = evaluate_models(models, task_list, protocol_list, tokenizer=tokenizer, dtype=dtype, device=device,
                              split=split, data_dir=data_dir, stride=stride, batch_size=batch_size,
                              max_tokens=max_tokens, progress=progress,
                              # saved after every model: an interrupted run keeps the models already done
                              on_model_done=(lambda done: write_json(done, json_path)) if to_file else None)
    if json_path is not None and str(json_path) == "-":
        print_json([r.to_dict() for r in records])
        return
    console.print(comparison_table(records))
    if json_path is not None:
        write_json(records, json_path)
        console.print(f"wrote {len(records)} records to {json_path}")


def _split_list(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise KronyptError(f"expected a comma-separated list, got {value!r}")
    return items
