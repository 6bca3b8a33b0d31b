"""Kronecker layer speed against a dense layer of the same (out, in), and whole models, measured in one run.

Layers: GPT-2 124M's c_fc (768 -> 3072) under the 67M, 81M, 96M and 92M-4 schemes, and SmolLM2-135M's MLP
matrices at half their parameters with one factor (gate/up 576 -> 1536 with A 768x576, B 2x1; down
1536 -> 576 with A 576x768, B 1x2). For each token count it times the forward and forward+backward of: dense
F.linear, the factored path (cheaper contraction order), the materialised path and the automatic choice, and
prints each as a speed-up over dense (higher is faster) next to the FLOP-ideal ratio.

Models (random weights: speed does not depend on the values): one 1x1024 forward with logits at every
position (what evaluation and training run) of GPT-2 124M compressed to 81M, and of SmolLM2-135M with every
MLP matrix at half its parameters, each against its dense model, alternating the two.

    python benchmarks/layer.py --quick
    python benchmarks/layer.py --json benchmarks/results/layer-cpu.json
    python benchmarks/layer.py --sets smollm2 --tokens 1,64,1024
    python benchmarks/layer.py --device cuda --dtype bfloat16,float32 --json gpu-layer.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, median_seconds, sync, write_json  # noqa: E402

from kronypt import CompressionConfig, KroneckerLinear, compress_  # noqa: E402
from kronypt.models.schemes import resolve_scheme  # noqa: E402

PATHS = ("factored", "materialised", "auto")
# name -> (in, out, A shape, k): the layers each set times
GPT2_LAYERS = {scheme: (768, 3072, *resolve_scheme(scheme)) for scheme in ("67M", "81M", "96M", "92M-4")}
SMOLLM2_LAYERS = {"gate/up": (576, 1536, (768, 576), 1), "down": (1536, 576, (576, 768), 1)}
SMOLLM2 = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                      num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, tie_word_embeddings=True,
                      head_dim=64, rms_norm_eps=1e-5)


def layer_case(name: str, shape: tuple, tokens: int, device: torch.device, dtype: torch.dtype, backward: bool,
               budget: float) -> dict:
    in_features, out_features, a_shape, k = shape
    torch.manual_seed(0)
    layer = KroneckerLinear(in_features, out_features, a_shape, k, device=device, dtype=dtype)
    weight = torch.randn(out_features, in_features, device=device, dtype=dtype) * 0.02
    bias = torch.zeros(out_features, device=device, dtype=dtype)
    x = torch.randn(tokens, in_features, device=device, dtype=dtype, requires_grad=backward)
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
    result = {"layer": name, "in": in_features, "out": out_features, "a_shape": list(a_shape), "factors": k,
              "tokens": tokens, "pass": "fwd+bwd" if backward else "fwd", "dtype": str(dtype).removeprefix("torch."),
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


def model_pair(which: str, device: torch.device, dtype: torch.dtype) -> tuple[torch.nn.Module, torch.nn.Module,
                                                                                 str, int]:
    """(dense, compressed, description, vocabulary) of a whole-model case."""
    torch.manual_seed(0)
    if which == "gpt2":
        dense, kron = GPT2LMHeadModel(GPT2Config()), GPT2LMHeadModel(GPT2Config())
        config, what = CompressionConfig(scheme="81M", init="random"), "gpt2-124M forward, 81M vs dense"
    else:
        dense, kron = LlamaForCausalLM(SMOLLM2), LlamaForCausalLM(SMOLLM2)
        config = CompressionConfig(a_shape=(768, 576), init="random")
        what = "smollm2-135M forward, MLPs at 1/2 (A 768x576, k=1) vs dense"
    compress_(kron, config, progress=False)
    return (dense.to(device=device, dtype=dtype).eval(), kron.to(device=device, dtype=dtype).eval(), what,
            dense.config.vocab_size)


def model_case(which: str, device: torch.device, dtype: torch.dtype, tokens: int, rounds: int) -> dict:
    """Both models in memory, alternating (dense, compressed, then compressed, dense, ...) so background load
    hits both alike; the speed-up is the median of the per-round ratios, with their lowest and highest."""
    dense, kron, what, vocab = model_pair(which, device, dtype)
    ids = torch.randint(0, vocab, (1, tokens), device=device)

    def seconds(model: torch.nn.Module) -> float:
        sync(device)
        start = time.perf_counter()
        model(ids)
        sync(device)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"dense": [], "kron": []}
    with torch.inference_mode():
        seconds(dense), seconds(kron)  # warm-up
        for r in range(rounds):
            for name in (("dense", "kron") if r % 2 == 0 else ("kron", "dense")):
                times[name].append(seconds(dense if name == "dense" else kron))
    ratios = sorted(d / k for d, k in zip(times["dense"], times["kron"], strict=True))
    flops = {name: _forward_macs(model, tokens) for name, model in (("dense", dense), ("kron", kron))}
    return {"case": what, "tokens": tokens, "dtype": str(dtype).removeprefix("torch."), "rounds": rounds,
            "dense_ms": statistics.median(times["dense"]) * 1e3, "kron_ms": statistics.median(times["kron"]) * 1e3,
            "speedup": statistics.median(ratios), "speedup_min": ratios[0], "speedup_max": ratios[-1],
            "flop_ideal_speedup": flops["dense"] / flops["kron"]}


def _forward_macs(model: torch.nn.Module, tokens: int) -> int:
    """Multiply-adds of the matrix products of one forward over `tokens` positions: every linear layer (the LM
    head included), Kronecker layers at their cheaper contraction order, attention scores and values."""
    macs = 0
    for module in model.modules():
        if isinstance(module, KroneckerLinear):
            macs += tokens * min(module.shape.macs_per_token(module.factors))
        elif isinstance(module, torch.nn.Linear):
            macs += tokens * module.in_features * module.out_features
        elif type(module).__name__ == "Conv1D":
            macs += tokens * module.nx * module.nf
    config = model.config
    width = getattr(config, "hidden_size", None) or config.n_embd
    blocks = getattr(config, "num_hidden_layers", None) or config.n_layer
    return macs + blocks * 2 * tokens * tokens * width // 2  # causal QK^T and PV: half the square


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tokens 1 and 1024 only, shorter timing budget")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="comma-separated: float32, bfloat16")
    parser.add_argument("--tokens", default=None, help="comma-separated token counts (default 1,64,1024,8192)")
    parser.add_argument("--sets", default="gpt2,smollm2", help="comma-separated: gpt2 (c_fc under the paper's "
                                                               "schemes), smollm2 (its MLP at half)")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds of each whole-model forward")
    parser.add_argument("--no-model", action="store_true", help="skip the whole-model forwards")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    tokens = [int(t) for t in args.tokens.split(",")] if args.tokens else ([1, 1024] if args.quick else
                                                                          [1, 64, 1024, 8192])
    budget = 0.2 if args.quick else 1.0
    dtypes = [getattr(torch, d) for d in args.dtype.split(",")]
    sets = args.sets.split(",")
    unknown = set(sets) - {"gpt2", "smollm2"}
    if unknown:
        parser.error(f"unknown sets {sorted(unknown)}; choose gpt2, smollm2")
    layers = {**({f"gpt2 {k}": v for k, v in GPT2_LAYERS.items()} if "gpt2" in sets else {}),
              **({f"smollm2 {k}": v for k, v in SMOLLM2_LAYERS.items()} if "smollm2" in sets else {})}
    results, models = [], []
    print(f"{'layer':16} {'dtype':8} {'pass':7} {'tokens':>6} {'dense ms':>9} {'factored':>8} {'mater.':>8} "
          f"{'auto':>8} {'ideal':>6}  auto choice (auto/best)")
    for dtype in dtypes:
        for backward in (False, True):
            for name, shape in layers.items():
                for t in tokens:
                    r = layer_case(name, shape, t, device, dtype, backward, budget)
                    results.append(r)
                    print(f"{name:16} {r['dtype']:8} {r['pass']:7} {t:>6} {r['dense_ms']:>9.3f} "
                          f"{r['factored_speedup']:>7.2f}x {r['materialised_speedup']:>7.2f}x "
                          f"{r['auto_speedup']:>7.2f}x {r['flop_ideal_speedup']:>5.2f}x  {r['auto_choice']} "
                          f"({r['auto_vs_best']:.2f})", flush=True)
                    write_json(args.json, {"environment": environment(device), "layers": results, "models": models},
                               quiet=True)  # keep what was measured if the run is cut short
        for which in ([] if args.no_model else sets):
            m = model_case(which, device, dtype, 1024, 3 if args.quick else args.rounds)
            models.append(m)
            print(f"{m['case']}, {m['dtype']}, 1x1024: dense {m['dense_ms']:.1f} ms, compressed {m['kron_ms']:.1f} ms, "
                  f"speed-up {m['speedup']:.2f}x (rounds {m['speedup_min']:.2f}-{m['speedup_max']:.2f}; FLOP ideal "
                  f"{m['flop_ideal_speedup']:.2f}x)", flush=True)
            write_json(args.json, {"environment": environment(device), "layers": results, "models": models},
                       quiet=True)
    write_json(args.json, {"environment": environment(device), "layers": results, "models": models})


if __name__ == "__main__":
    main()
