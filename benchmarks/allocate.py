"""Factors per matrix (`compress --allocate`) against one k everywhere, at the same parameter count.

For each A shape and uniform k, the model is compressed twice: with k factors in every MLP matrix, and with
`allocate_factors` spending the same parameter budget (the uniform model's count) where the Van Loan
spectra say terms remove the most error. Both are scored right after compression, before any healing: the
weight error (summed squared and mean relative Frobenius error) and the `krony-pt` perplexity on the first
`--max-tokens` of WikiText-2 (valid split by default), beside the dense model's.

There are no pretrained GPT-2 weights offline: give a dense model you trained, e.g. the offline teacher
(configs/offline-teacher.yaml: 4 blocks, 128 wide; c_fc is 512 x 128; docs/benchmarks.md used 240 steps):

    python benchmarks/allocate.py --model runs/offline-teacher/best/model --shapes 128x32,256x64,64x64 \
        --factors 1,2 --json benchmarks/results/allocate-cpu.json
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, write_json  # noqa: E402

from kronypt import CompressionConfig, allocate_factors, compress_, load_model, load_tokenizer  # noqa: E402
from kronypt.eval import evaluate  # noqa: E402
from kronypt.math.shapes import parse_shape  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def perplexity(model, tokenizer, args: argparse.Namespace) -> float:
    records = evaluate(model.eval(), tokenizer, tasks=[args.task], protocols=["krony-pt"], split=args.split,
                       data_dir=args.data_dir, max_tokens=args.max_tokens, progress=False)
    return next(r.value for r in records if r.metric == "perplexity")


def summary(report, ppl: float) -> dict:
    errors = [m.rel_error for m in report.matrices]
    return {"params": report.params_after, "sum_sq_rel_error": sum(e * e for e in errors),
            "mean_rel_error": sum(errors) / len(errors), "perplexity": ppl,
            "factors": dict(sorted(Counter(m.factors for m in report.matrices).items()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="A dense GPT-2 folder (with its tokenizer files).")
    parser.add_argument("--shapes", default="128x32,256x64", help="A shapes of c_fc, comma-separated.")
    parser.add_argument("--factors", default="1,2", help="Uniform k to compare against, comma-separated.")
    parser.add_argument("--task", default="wikitext2")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--max-tokens", type=int, default=65_536)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA))
    parser.add_argument("--json")
    args = parser.parse_args()

    torch.manual_seed(0)
    dense = load_model(args.model, dtype=torch.float32)
    tokenizer = load_tokenizer(args.model)
    start = time.perf_counter()
    result = {"environment": environment(torch.device("cpu")), "model": args.model, "task": args.task,
              "split": args.split, "protocol": "krony-pt", "max_tokens": args.max_tokens,
              "dense_perplexity": perplexity(dense, tokenizer, args), "rows": []}
    print(f"dense: ppl {result['dense_perplexity']:.2f}")
    print(f"{'A (c_fc)':>9} {'k':>2} | {'params':>10} | {'uniform err²':>12} {'ppl':>8} | "
          f"{'allocated err²':>14} {'ppl':>8} | allocated k (count)")
    for shape in args.shapes.split(","):
        a_shape = parse_shape(shape)
        for k in map(int, args.factors.split(",")):
            uniform = copy.deepcopy(dense)
            uniform_report = compress_(uniform, CompressionConfig(a_shape=a_shape, factors=k), progress=False)
            mixed = copy.deepcopy(dense)
            budget = uniform_report.params_after
            config = allocate_factors(mixed, CompressionConfig(a_shape=a_shape, target_params=budget, allocate=True))
            mixed_report = compress_(mixed, config, progress=False)
            row = {"a_shape": list(a_shape), "factors": k,
                   "uniform": summary(uniform_report, perplexity(uniform, tokenizer, args)),
                   "allocated": summary(mixed_report, perplexity(mixed, tokenizer, args))}
            row["perplexity_ratio"] = row["allocated"]["perplexity"] / row["uniform"]["perplexity"]
            result["rows"].append(row)
            u, a = row["uniform"], row["allocated"]
            print(f"{shape:>9} {k:>2} | {u['params']:>10,} | {u['sum_sq_rel_error']:>12.4f} {u['perplexity']:>8.2f} | "
                  f"{a['sum_sq_rel_error']:>14.4f} {a['perplexity']:>8.2f} | {a['factors']}")
            write_json(args.json, {**result, "seconds": time.perf_counter() - start}, quiet=True)
    write_json(args.json, {**result, "seconds": time.perf_counter() - start})


if __name__ == "__main__":
    main()
