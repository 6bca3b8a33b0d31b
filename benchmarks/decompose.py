"""Decomposition time: kronypt's initial factors against a full SVD of Van Loan's R(W), in one run.

For every named scheme (README "Schemes") and both MLP matrices of GPT-2 124M (c_fc 3072 x 768, c_proj
768 x 3072 with the transposed A shape), two timings of the same float64 fit on the same matrix:

- `kronypt`: `kronypt.math.decompose.van_loan` (the top k singular triplets of R(W) from the Gram matrix
  of its smaller side) or `prune_init` for the pruning schemes, as `compress` calls them, including the
  reconstruction that measures the error;
- `reference`: the textbook route, `torch.linalg.svd` of the whole R(W), truncated to k terms, the
  factors √σ·u and √σ·v, and the error of Σ kron(A_i, B_i) built with `torch.kron` (pruning schemes have
  no SVD and no reference row).

It prints reference / kronypt (> 1: kronypt is faster) and checks that both reach the same relative error
(the optimum is unique up to signs: |difference| <= 1e-9). Then it times `kronypt.compress` of a whole
GPT-2-124M-config model (random weights; `--model` for a local dense folder) per scheme: what
`kronypt compress` spends between loading and saving.

    python benchmarks/decompose.py --quick                       # 81M and 96M-prune, ~10 s on 2 CPU cores
    python benchmarks/decompose.py --json benchmarks/results/decompose-cpu.json   # every scheme, ~30 s
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, write_json  # noqa: E402

from kronypt import CompressionConfig, compress_  # noqa: E402
from kronypt.errors import KronyptError  # noqa: E402
from kronypt.math.decompose import prune_init, rearrange, relative_error, van_loan  # noqa: E402
from kronypt.math.shapes import kron_shape  # noqa: E402
from kronypt.models.loading import load_model  # noqa: E402
from kronypt.models.schemes import SCHEME_INITS, SCHEMES  # noqa: E402

QUICK_SCHEMES = ("81M", "96M-prune")
AGREEMENT = 1e-9  # |relative error of kronypt - of the full SVD|: both are the exact optimum


def reference_fit(W: torch.Tensor, a_shape: tuple[int, int], k: int) -> float:
    """The textbook Van Loan fit: full SVD of R(W), k terms, error of Σ kron(A_i, B_i). Its relative error."""
    shape = kron_shape(*W.shape, a_shape)
    W64 = W.to(torch.float64)
    U, S, Vh = torch.linalg.svd(rearrange(W64, shape), full_matrices=False)
    W_hat = torch.zeros_like(W64)
    for i in range(k):
        root = S[i].sqrt()
        A = (U[:, i] * root).reshape(shape.m1, shape.n1)
        B = (Vh[i] * root).reshape(shape.m2, shape.n2)
        W_hat += torch.kron(A, B)
    return relative_error(W64, W_hat)


def kronypt_fit(W: torch.Tensor, a_shape: tuple[int, int], k: int, init: str) -> float:
    """What `compress` runs for one matrix; its relative error."""
    if init == "prune":
        return prune_init(W, a_shape, k).rel_error
    return van_loan(W, a_shape, k).rel_error


def median_time(fn: Callable[[], float], repeats: int) -> tuple[float, float]:
    """(result, median seconds) over `repeats` calls after one warm-up call."""
    result = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return result, statistics.median(times)


def mlp_weights(model: GPT2LMHeadModel) -> dict[str, torch.Tensor]:
    """Layer 0's c_fc and c_proj weights in (out, in) orientation (Conv1D stores (in, out))."""
    mlp = model.transformer.h[0].mlp
    return {"c_fc": mlp.c_fc.weight.detach().T.contiguous(), "c_proj": mlp.c_proj.weight.detach().T.contiguous()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemes", default=None, help="comma-separated scheme names (default: all)")
    parser.add_argument("--model", default=None,
                        help="local dense GPT-2 folder whose weights to fit (default: GPT-2-124M config, random)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per fit (median)")
    parser.add_argument("--quick", action="store_true", help=f"{', '.join(QUICK_SCHEMES)} only, 1 timed call")
    parser.add_argument("--no-model", action="store_true", help="skip the whole-model compress timings")
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args()
    names = args.schemes.split(",") if args.schemes else list(QUICK_SCHEMES if args.quick else SCHEMES)
    unknown = [n for n in names if n not in SCHEMES]
    if unknown:
        parser.error(f"unknown schemes {unknown}; choose from {', '.join(SCHEMES)}")
    repeats = 1 if args.quick else args.repeats

    torch.manual_seed(0)
    if args.model:
        try:
            model = load_model(args.model, dtype=torch.float32)
        except (OSError, ValueError, KronyptError) as exc:
            parser.error(str(exc).splitlines()[0])
    else:
        model = GPT2LMHeadModel(GPT2Config())
    model.eval()
    if not isinstance(model, GPT2LMHeadModel) or not all(
            isinstance(m, Conv1D) for block in model.transformer.h for m in (block.mlp.c_fc, block.mlp.c_proj)):
        parser.error(f"{args.model} is not a dense GPT-2 model (some MLP matrix is already compressed, or the "
                     "model is not GPT-2)")
    weights = mlp_weights(model)
    inner, embd = weights["c_fc"].shape
    if (inner, embd) != (3072, 768):
        parser.error(f"the named schemes need GPT-2 124M's MLP (3072 x 768), this model has {inner} x {embd}")
    print(f"{torch.get_num_threads()} threads; layer 0 MLP weights of "
          f"{args.model or 'a GPT-2-124M config (random)'}")

    rows = []
    print(f"{'scheme':10} {'matrix':7} {'R(W)':>15} {'kronypt s':>10} {'reference s':>12} {'ratio':>7} "
          f"{'rel error':>10} {'agree':>6}")
    for name in names:
        a_shape, k = SCHEMES[name]
        init = SCHEME_INITS.get(name, "van-loan")
        for matrix, W in weights.items():
            shape = a_shape if matrix == "c_fc" else a_shape[::-1]
            ks = kron_shape(*W.shape, shape)
            error, seconds = median_time(functools.partial(kronypt_fit, W, shape, k, init), repeats)
            row = {"scheme": name, "matrix": matrix, "a_shape": list(shape), "b_shape": [ks.m2, ks.n2],
                   "factors": k, "init": init, "r_shape": [ks.m1 * ks.n1, ks.m2 * ks.n2],
                   "kronypt_s": seconds, "rel_error": error}
            if init == "van-loan":
                ref_error, ref_seconds = median_time(functools.partial(reference_fit, W, shape, k), repeats)
                row.update(reference_s=ref_seconds, reference_rel_error=ref_error,
                           speedup=ref_seconds / seconds, agrees=abs(error - ref_error) <= AGREEMENT)
            rows.append(row)
            ratio = f"{row['speedup']:.2f}x" if "speedup" in row else "-"
            ref = f"{row['reference_s']:.3f}" if "reference_s" in row else "-"
            agree = {True: "yes", False: "NO"}.get(row.get("agrees"), "-")
            print(f"{name:10} {matrix:7} {'x'.join(map(str, row['r_shape'])):>15} {seconds:10.3f} {ref:>12} "
                  f"{ratio:>7} {error:10.6f} {agree:>6}")

    models = []
    if not args.no_model:
        print(f"\nwhole model: kronypt.compress of {len(model.transformer.h) * 2} MLP matrices")
        for name in names:
            target = copy.deepcopy(model)
            t0 = time.perf_counter()
            report = compress_(target, CompressionConfig.from_scheme(name), progress=False)
            seconds = time.perf_counter() - t0
            models.append({"scheme": name, "seconds": seconds, "matrices": len(report.matrices),
                           "params_after": report.params_after, "mean_rel_error": report.mean_rel_error})
            print(f"{name:10} {seconds:7.2f} s  {report.params_after:,} params  "
                  f"mean rel error {report.mean_rel_error:.4f}")
            del target

    timed = [r for r in rows if "speedup" in r]
    results = {"rows": rows, "models": models, "all_agree": all(r["agrees"] for r in timed),
               "min_speedup": min((r["speedup"] for r in timed), default=None),
               "repeats": repeats, "model": args.model or "gpt2-124M-config-random",
               "environment": environment(torch.device("cpu"))}
    if timed:
        print(f"\nkronypt vs full SVD: {results['min_speedup']:.2f}x at worst; errors "
              f"{'agree' if results['all_agree'] else 'DISAGREE'} (|difference| <= {AGREEMENT:g})")
    write_json(args.json, results)
    if not results["all_agree"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
