"""Kronecker layer speed against a dense layer of the same (out, in), measured in one run.

For each scheme shape (67M, 81M, 96M, 92M-4 of GPT-2's c_fc, 768 -> 3072) and token count it times the
forward and forward+backward of: dense F.linear, the factored path (cheaper contraction order), the
materialised path and the automatic choice, and prints each as a speed-up over dense (higher is faster)
next to the FLOP-ideal ratio. It also times a whole GPT-2-124M-config model (random weights) compressed
to 81M against the dense model on one 1024-token forward.

    python benchmarks/layer.py --quick
    python benchmarks/layer.py --json benchmarks/results/layer-cpu.json
    python benchmarks/layer.py --device cuda --dtype bfloat16,float32 --json gpu-layer.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, median_seconds, write_json  # noqa: E402

from kronypt import CompressionConfig, KroneckerLinear, compress  # noqa: E402
from kronypt.plan import resolve_scheme  # noqa: E402

SCHEMES = ("67M", "81M", "96M", "92M-4")
PATHS = ("factored", "materialised", "auto")


def layer_case(scheme: str, tokens: int, device: torch.device, dtype: torch.dtype, backward: bool,
               budget: float) -> dict:
    a_shape, k = resolve_scheme(scheme)
    torch.manual_seed(0)
    layer = KroneckerLinear(768, 3072, a_shape, k, device=device, dtype=dtype)
    weight = torch.randn(3072, 768, device=device, dtype=dtype) * 0.02
    bias = torch.zeros(3072, device=device, dtype=dtype)
    x = torch.randn(tokens, 768, device=device, dtype=dtype, requires_grad=backward)
    layer.requires_grad_(backward)
    weight.requires_grad_(backward)

    def timed(fn):
        def step():
            y = fn()
            if backward:
                y.backward(torch.ones_like(y))
        if backward:
            return median_seconds(step, device, budget_s=budget)
        with torch.inference_mode():
            return median_seconds(step, device, budget_s=budget)

    dense = timed(lambda: F.linear(x, weight, bias))
    result = {"scheme": scheme, "a_shape": list(a_shape), "factors": k, "tokens": tokens,
              "pass": "fwd+bwd" if backward else "fwd", "dtype": str(dtype).removeprefix("torch."),
              "dense_ms": dense * 1e3}
    for path in PATHS:
        layer.path = path
        result[f"{path}_ms"] = timed(lambda: layer(x)) * 1e3
        result[f"{path}_speedup"] = dense * 1e3 / result[f"{path}_ms"]
    layer.path = "auto"
    with torch.inference_mode(not backward):
        result["auto_choice"] = layer.path_for(x)
    macs = min(layer.shape.macs_per_token(k))
    result["flop_ideal_speedup"] = layer.shape.dense_macs_per_token() / macs
    best = min(result["factored_ms"], result["materialised_ms"])
    result["auto_vs_best"] = result["auto_ms"] / best
    return result


def model_case(device: torch.device, dtype: torch.dtype, tokens: int, budget: float) -> dict:
    torch.manual_seed(0)
    dense = GPT2LMHeadModel(GPT2Config()).to(device=device, dtype=dtype).eval()
    kron = GPT2LMHeadModel(GPT2Config()).to(device=device, dtype=dtype).eval()
    compress(kron, CompressionConfig.from_scheme("81M", init="random"), progress=False)
    ids = torch.randint(0, 50257, (1, tokens), device=device)
    with torch.inference_mode():
        t_dense = median_seconds(lambda: dense(ids), device, budget_s=budget * 4)
        t_kron = median_seconds(lambda: kron(ids), device, budget_s=budget * 4)
    # FLOP ideal: MLP matmuls shrink to 1/4, attention, embeddings-free matmuls and the LM head stay.
    return {"case": "gpt2-124M forward, 81M vs dense", "tokens": tokens, "dtype": str(dtype).removeprefix("torch."),
            "dense_ms": t_dense * 1e3, "kron_ms": t_kron * 1e3, "speedup": t_dense / t_kron}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tokens 1 and 1024 only, shorter timing budget")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="comma-separated: float32, bfloat16")
    parser.add_argument("--tokens", default=None, help="comma-separated token counts (default 1,64,1024,8192)")
    parser.add_argument("--schemes", default=",".join(SCHEMES), help="comma-separated scheme names")
    parser.add_argument("--no-model", action="store_true", help="skip the whole-model forward")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    tokens = [int(t) for t in args.tokens.split(",")] if args.tokens else ([1, 1024] if args.quick else
                                                                          [1, 64, 1024, 8192])
    budget = 0.2 if args.quick else 1.0
    dtypes = [getattr(torch, d) for d in args.dtype.split(",")]
    results, models = [], []
    header = (f"{'scheme':7} {'dtype':8} {'pass':7} {'tokens':>6} {'dense ms':>9} {'factored':>8} {'mater.':>8} "
              f"{'auto':>8} {'ideal':>6}  auto choice (auto/best)")
    print(header)
    for dtype in dtypes:
        for backward in (False, True):
            for scheme in args.schemes.split(","):
                for t in tokens:
                    r = layer_case(scheme, t, device, dtype, backward, budget)
                    results.append(r)
                    print(f"{scheme:7} {r['dtype']:8} {r['pass']:7} {t:>6} {r['dense_ms']:>9.3f} "
                          f"{r['factored_speedup']:>7.2f}x {r['materialised_speedup']:>7.2f}x "
                          f"{r['auto_speedup']:>7.2f}x {r['flop_ideal_speedup']:>5.2f}x  {r['auto_choice']} "
                          f"({r['auto_vs_best']:.2f})", flush=True)
                    write_json(args.json, {"environment": environment(device), "layers": results, "models": models},
                               quiet=True)  # keep what was measured if the run is cut short
        if not args.no_model:
            m = model_case(device, dtype, 1024, budget)
            models.append(m)
            print(f"whole model {m['dtype']}, 1x1024 forward: dense {m['dense_ms']:.1f} ms, 81M {m['kron_ms']:.1f} ms,"
                  f" speed-up {m['speedup']:.2f}x", flush=True)
    write_json(args.json, {"environment": environment(device), "layers": results, "models": models})


if __name__ == "__main__":
    main()
