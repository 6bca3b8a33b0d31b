"""`kronypt bench`: prefill, decode and training tokens/s of a model against dense (or another model)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from kronypt.cli.app import app, console, print_json
from kronypt.cli.options import check_json_file, run_dtype

DENSE = "dense"


@app.command()
def bench(
    model: Annotated[str, typer.Argument(help="A compressed kronypt folder, or any GPT-2-family folder or hub id "
                                              "(with --against PATH).")],
    against: Annotated[str, typer.Option(help="'dense': MODEL rebuilt as a plain GPT-2 of the same config with "
                                              "the same logits (`to_dense`); or another model folder or hub "
                                              "id, e.g. the original gpt2 (a folder named dense: "
                                              "./dense).")] = DENSE,
    batch: Annotated[int, typer.Option(min=1, help="Sequences per forward: prefill and training batch, and "
                                                   "decode batch.")] = 1,
    prompt_tokens: Annotated[int, typer.Option(min=1, help="Random token ids per sequence: the prefill and "
                                                           "training length, and the decode prompt.")] = 128,
    new_tokens: Annotated[int, typer.Option(min=2, help="Greedy tokens generated per decode run (exactly: "
                                                        "min = max new tokens); prompt + new tokens must fit "
                                                        "the context.")] = 32,
    train: Annotated[bool, typer.Option("--train", help="Also time a training step: forward, backward and "
                                                        "an AdamW step on the prefill batch.")] = False,
    repeats: Annotated[int, typer.Option(min=1, help="Timed rounds per measure; the numbers are medians.")] = 5,
    warmup: Annotated[int, typer.Option(min=0, help="Uncounted rounds before the timed ones.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the random token ids (and of dropout in the "
                                            "training step).")] = 0,
    device: Annotated[str, typer.Option(help="auto (the GPU when there is one), cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[str | None, typer.Option(help="float32, bfloat16 or float16 for both models (default: "
                                                   "bfloat16 on a GPU, float32 on the CPU).")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON to this file "
                                                                  "('-' prints them instead of the table).")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Time MODEL against dense in one run: prefill tokens/s, decode latency per token, and (--train)
    training-step tokens/s, with parameter counts and the ratio MODEL / against (> 1 = faster).

    Both models are in memory together and every measure alternates them (A B, then B A, ...), so background
    load hits both alike; each number is the median of --repeats rounds after --warmup. Decode is timed
    inside one greedy `generate` call with the KV cache: from the first new token (right after the prefill)
    to the last, divided by --new-tokens - 1, so the prefill is excluded exactly. Prefill is one forward over
    --batch x --prompt-tokens random ids without gradients, as `generate` runs it. Compare ratios, not
    absolute numbers, and only within one run.

    Example: kronypt bench gpt2-81M --prompt-tokens 256 --new-tokens 64 --train
    """
    import torch
    from tqdm.auto import tqdm

    from kronypt.bench import (
        BenchSettings,
        bench_pair,
        dense_counterpart,
        max_logit_difference,
        require_compressed,
        steps_per_run,
    )
    from kronypt.models import load_config, load_model
    from kronypt.models.configuration import config_context_length
    from kronypt.models.loading import check_device, parse_dtype

    settings = BenchSettings(batch=batch, prompt_tokens=prompt_tokens, new_tokens=new_tokens, repeats=repeats,
                             warmup=warmup, train=train, seed=seed)
    settings.check()
    target = check_device(device)
    torch_dtype = parse_dtype(run_dtype(dtype, target))
    check_json_file(json_path)
    vs_dense = against == DENSE
    configs = [load_config(model)]
    if vs_dense:
        require_compressed(configs[0], model)
    else:
        configs.append(load_config(against))
    settings.check(min((c for c in map(config_context_length, configs) if c), default=None))

    torch.manual_seed(seed)  # dropout in the training step
    if vs_dense:  # the dense weights are summed in float32, then both models are cast alike
        lm = load_model(model, dtype="float32")
        other = dense_counterpart(lm, model)
        lm, other = lm.to(target, torch_dtype), other.to(target, torch_dtype)
        ids = torch.randint(lm.config.vocab_size, (1, prompt_tokens), device=target)
        logit_diff = max_logit_difference(lm, other, ids)
    else:
        lm = load_model(model, dtype=torch_dtype, device=target)
        other = load_model(against, dtype=torch_dtype, device=target)
    with tqdm(total=steps_per_run(settings), desc="timing", unit="call", leave=False,
              disable=None if progress else True) as bar:
        payload = bench_pair(lm, other, settings, on_step=bar.update)
    payload["model"] = {"name": model, **payload["model"]}
    payload["against"] = {"name": f"{DENSE} (to_dense)" if vs_dense else against, **payload["against"]}
    if vs_dense:
        payload["logits_max_abs_diff"] = logit_diff
    for note in payload["warnings"]:
        sys.stderr.write(f"kronypt: warning: {note}\n")
    if json_path is not None and str(json_path) == "-":
        print_json(payload)
        return
    console.print(_table(payload))
    console.print(_settings_line(payload), highlight=False)
    if json_path is not None:
        json_path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        console.print(f"wrote {json_path}")


def _table(payload: dict) -> Table:
    a, b, ratios = payload["model"], payload["against"], payload["ratios"]
    table = Table(title=f"{a['name']} against {b['name']}")
    for header in ("measure", "model", "against", "ratio", "rounds' ratios"):
        table.add_column(header, justify="left" if header == "measure" else "right")
    table.add_row("parameters", f"{a['params']:,}", f"{b['params']:,}", f"{ratios['params']:.3f}", "")
    table.add_row("compressed layers", str(a["compressed_layers"]), str(b["compressed_layers"]), "", "")
    table.add_row("prefill tokens/s", *_rates(payload, "prefill_tokens_per_s"))
    table.add_row("decode tokens/s (ms/token)",
                  *(f"{_rate(row['decode_tokens_per_s'])} ({row['decode_ms_per_token']:.2f} ms)" for row in (a, b)),
                  f"{ratios['decode_tokens_per_s']:.3f}", _spread(payload, "decode_tokens_per_s"))
    if "train_tokens_per_s" in ratios:
        table.add_row("train step tokens/s", *_rates(payload, "train_tokens_per_s"))
    if "logits_max_abs_diff" in payload:
        table.add_row("max |logit difference|", "", "", f"{payload['logits_max_abs_diff']:.2e}", "")
    return table


def _settings_line(payload: dict) -> str:
    s, env = payload["settings"], payload["environment"]
    return (f"{env['device']} ({env['device_name']}, {env['threads']} threads), {env['dtype']}; batch {s['batch']}, "
            f"{s['prompt_tokens']} prompt + {s['new_tokens']} new tokens; median of {s['repeats']} rounds after "
            f"{s['warmup']} warm-up.\nratio = model / against: > 1 is faster (parameters: < 1 is smaller); the "
            "last column gives the lowest and highest ratio of the rounds. Decode per token excludes the prefill: "
            "first to last new token inside one generate call.")


def _rates(payload: dict, key: str) -> tuple[str, str, str, str]:
    return (_rate(payload["model"][key]), _rate(payload["against"][key]), f"{payload['ratios'][key]:.3f}",
            _spread(payload, key))


def _spread(payload: dict, key: str) -> str:
    """The lowest and highest ratio of the rounds, flagged when they disagree too much to trust the median."""
    from kronypt.bench import NOISY_SPREAD

    s = payload["spread"][key]
    text = f"{s['min']:.2f}-{s['max']:.2f}"
    return f"[red]{text} (noisy)[/red]" if s["rel_spread"] > NOISY_SPREAD else text


def _rate(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
