"""Evaluation throughput: `krony-pt` WikiText-2 windows, dense GPT-2-124M vs compressed to 81M, in one run.

Three measurements over the same 1024-token windows of the WikiText-2 test set (GPT-2-124M config, random
weights: speed does not depend on the weights):

- `plain-hf`: the Hugging Face guide's loop, one window at a time, `model(input_ids, labels=...)`.
- `dense`: kronypt's evaluator (`kronypt.eval.run_plan`: batched windows, inference mode) on the dense model.
- `kronypt-81M`: the same evaluator on the model compressed with `compress_(..., from_scheme("81M"))`.

Ratios (tokens/s): kronypt-81M / dense (target >= 1.25) and dense / plain-hf (target >= 0.9: batching must not
make the evaluator slower than the plain loop). Each measurement is the best of `--repeats` interleaved
rounds, so a burst of load from other processes hits all three alike; CPU time of the process is reported
beside wall time, as the steadier measure on a shared machine. It also checks that the evaluator's dense
perplexity equals the plain loop's.

    python benchmarks/eval.py --quick                # 2 windows, 1 round, ~1 min on 2 CPU cores
    python benchmarks/eval.py --json out/eval.json   # 8 windows, 3 rounds
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, write_json  # noqa: E402

from kronypt import CompressionConfig, compress_  # noqa: E402
from kronypt.eval import plan_eval, run_plan  # noqa: E402
from kronypt.eval.protocols import Plan  # noqa: E402
from kronypt.eval.scoring import auto_batch_size  # noqa: E402
from kronypt.models.tokenizers import load_tokenizer  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def plain_hf_loop(model: GPT2LMHeadModel, plan: Plan) -> float:
    """The guide's loop (stride = context) over the plan's windows, one window per call; the perplexity."""
    ids = plan.sequences[0]
    nlls = []
    with torch.no_grad():
        for request in plan.requests:
            input_ids = ids[request.span.begin:request.span.end][None]
            nlls.append(model(input_ids, labels=input_ids).loss)
    return math.exp(torch.stack(nlls).double().mean())


def timed(fn: Callable[[], float]) -> tuple[float, float, float]:
    """(result, wall seconds, CPU seconds of this process). On a shared machine CPU time is the steadier
    measure of the work done; wall time is what a user waits."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="shared/data layout")
    parser.add_argument("--windows", type=int, default=8, help="1024-token windows per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the best one counts")
    parser.add_argument("--batch-size", type=int, default=None, help="windows per pass (default: automatic)")
    parser.add_argument("--quick", action="store_true", help="2 windows, 1 round")
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args()
    if args.quick:
        args.windows, args.repeats = 2, 1

    torch.manual_seed(0)
    dense = GPT2LMHeadModel(GPT2Config()).eval()
    krony = copy.deepcopy(dense)
    compress_(krony, CompressionConfig.from_scheme("81M", init="random"), progress=False)
    krony.eval()
    tokenizer = load_tokenizer(str(args.data_dir / "gpt2-tokenizer"))
    context = dense.config.n_positions
    plan = plan_eval(tokenizer, "wikitext2", "krony-pt", context, data_dir=args.data_dir,
                     max_tokens=args.windows * context)
    tokens = sum(r.span.input_len + 1 for r in plan.requests)  # window tokens, as the plain loop feeds them
    batch = args.batch_size or auto_batch_size(context, torch.device("cpu"))
    print(f"{len(plan.requests)} windows x {context} tokens, batch {batch}, "
          f"{torch.get_num_threads()} threads; dense {sum(p.numel() for p in dense.parameters()):,} params, "
          f"81M {sum(p.numel() for p in krony.parameters()):,} params")

    first = plan.requests[0].span
    with torch.inference_mode():  # warm-up: allocator, thread pool, the layers' first-call paths
        for model in (dense, krony):
            model(plan.sequences[0][first.begin:first.end][None])
    runs = {
        "plain-hf": lambda: plain_hf_loop(dense, plan),
        "dense": lambda: run_plan(dense, plan, batch_size=batch, progress=False)[0]["perplexity"],
        "kronypt-81M": lambda: run_plan(krony, plan, batch_size=batch, progress=False)[0]["perplexity"],
    }
    wall = dict.fromkeys(runs, math.inf)
    cpu = dict.fromkeys(runs, math.inf)
    ppl = {}
    for round_ in range(args.repeats):
        for name, fn in runs.items():
            ppl[name], seconds, cpu_seconds = timed(fn)
            wall[name], cpu[name] = min(wall[name], seconds), min(cpu[name], cpu_seconds)
        print(f"round {round_ + 1}: " + ", ".join(f"{k} {tokens / wall[k]:,.0f} tok/s ({tokens / cpu[k]:,.0f} "
                                                  f"per CPU-s)" for k in runs))

    rate = {k: tokens / v for k, v in wall.items()}
    cpu_rate = {k: tokens / v for k, v in cpu.items()}
    results = {
        "windows": len(plan.requests), "context": context, "batch_size": batch, "tokens": tokens,
        "tokens_per_s": rate, "tokens_per_cpu_s": cpu_rate, "perplexity": ppl,
        "ratio_81M_vs_dense": rate["kronypt-81M"] / rate["dense"],
        "ratio_dense_vs_plain_hf": rate["dense"] / rate["plain-hf"],
        "cpu_ratio_81M_vs_dense": cpu_rate["kronypt-81M"] / cpu_rate["dense"],
        "cpu_ratio_dense_vs_plain_hf": cpu_rate["dense"] / cpu_rate["plain-hf"],
        "dense_ppl_matches_plain_hf": math.isclose(ppl["dense"], ppl["plain-hf"], rel_tol=1e-4),
        "environment": environment(torch.device("cpu")),
    }
    print(f"kronypt-81M / dense: {results['ratio_81M_vs_dense']:.2f}x wall, "
          f"{results['cpu_ratio_81M_vs_dense']:.2f}x CPU time (target >= 1.25)")
    print(f"dense evaluator / plain HF loop: {results['ratio_dense_vs_plain_hf']:.2f}x wall, "
          f"{results['cpu_ratio_dense_vs_plain_hf']:.2f}x CPU time (target >= 0.90)")
    print(f"dense perplexity {ppl['dense']:.6g} vs plain loop {ppl['plain-hf']:.6g}: "
          f"{'same' if results['dense_ppl_matches_plain_hf'] else 'DIFFERENT'}")
    write_json(args.json, results)


if __name__ == "__main__":
    main()
