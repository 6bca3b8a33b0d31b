"""GPU speed of the fused Kronecker kernels against dense cuBLAS, all measured in one run (≤ 4 min, H100).

Layer cases (bf16 unless named): forward and forward+backward of dense `F.linear`, the materialised path,
the factored path and the fused kernels (`kronypt.kernels`), timed with CUDA events (median of repeats
after warm-up; each repeat uses the next of several input/parameter sets, ≥ 3× the L2 cache in all, so
no repeat finds its operands in L2), each with its max relative error against a float64 dense reference.
Decode (1 token) is also timed inside a CUDA graph. Then a GPT-2-124M-config model (random weights):
dense, compressed to 81M with the layer's own automatic path, and compressed with every Kronecker layer on
the fused path (GELU fused into c_fc's kernel by the model's MLP): training-step tokens/s (bf16 autocast,
AdamW), prefill tokens/s, and per-token decode latency, eager and graphed. Ratios are against dense in the
same run (> 1 = faster than dense).

    PYTHONUNBUFFERED=1 python benchmarks/gpu.py --quick --json $OUT/gpu.json   # core cases, ~2 min
    PYTHONUNBUFFERED=1 python benchmarks/gpu.py --fast --json $OUT/gpu.json    # the short set, < 200 s
    PYTHONUNBUFFERED=1 python benchmarks/gpu.py --json $OUT/gpu.json           # everything, ≤ 4 min
    python benchmarks/gpu.py --dry-run                         # CPU: case list, predictions, tiny run
    TRITON_INTERPRET=1 python benchmarks/gpu.py --dry-run      # ... with the fused path interpreted

A case that fails is recorded with its error and the run goes on; past `--budget` seconds the remaining
cases are skipped. The JSON is rewritten after every case, so a killed run still leaves its results.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import math
import statistics
import sys
import time
import types
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, write_json  # noqa: E402
from kernel_tools.roofline import predict  # noqa: E402

from kronypt import CompressionConfig, KroneckerLinear, compress_  # noqa: E402
from kronypt.kernels import fused_available, kron_linear_fused  # noqa: E402
from kronypt.kernels.availability import vector_b_supports  # noqa: E402
from kronypt.math.decompose import kron_reconstruct  # noqa: E402
from kronypt.math.shapes import kron_shape  # noqa: E402
from kronypt.nn.functional import kron_linear_factored, kron_linear_materialised  # noqa: E402


@dataclass(frozen=True)
class LayerCase:
    name: str
    out_features: int
    in_features: int
    a_shape: tuple[int, int]
    k: int
    tokens: int
    dtype: str = "bfloat16"
    backward: bool = True
    graph: bool = False
    quick: bool = False


CASES = [
    LayerCase("81M c_fc", 3072, 768, (768, 768), 1, 8192, quick=True),
    LayerCase("81M c_fc", 3072, 768, (768, 768), 1, 65536, quick=True),
    LayerCase("81M c_fc decode", 3072, 768, (768, 768), 1, 1, backward=False, graph=True, quick=True),
    LayerCase("81M c_proj", 768, 3072, (768, 768), 1, 8192),
    LayerCase("MF1 c_fc", 3072, 768, (256, 64), 1, 8192),
    LayerCase("MF1 c_fc", 3072, 768, (256, 64), 1, 65536),
    LayerCase("67M c_fc", 3072, 768, (64, 32), 1, 8192),
    LayerCase("67M c_fc", 3072, 768, (64, 32), 1, 65536),
    LayerCase("92M-4 c_fc", 3072, 768, (1024, 256), 4, 65536),
    LayerCase("81M c_fc fp32", 3072, 768, (768, 768), 1, 8192, dtype="float32", backward=False),
]
# --fast: what a second short device call needs (81M both layers fwd and fwd+bwd at 8192/65536, the
# large-B and k = 4 forwards, graphed decode), with the 8192-token forwards also timed inside a CUDA graph
# (the kernels' own time, without the eager launch cost).
FAST_CASES = [
    LayerCase("81M c_fc", 3072, 768, (768, 768), 1, 8192, graph=True),
    LayerCase("81M c_fc", 3072, 768, (768, 768), 1, 65536),
    LayerCase("81M c_proj", 768, 3072, (768, 768), 1, 8192, graph=True),
    LayerCase("81M c_proj", 768, 3072, (768, 768), 1, 65536),
    LayerCase("81M c_fc decode", 3072, 768, (768, 768), 1, 1, backward=False, graph=True),
    LayerCase("67M c_fc", 3072, 768, (64, 32), 1, 65536, backward=False),
    LayerCase("MF1 c_fc", 3072, 768, (256, 64), 1, 65536, backward=False),
    LayerCase("92M-4 c_fc", 3072, 768, (1024, 256), 4, 65536, backward=False),
    LayerCase("86M c_fc", 3072, 768, (1024, 768), 1, 65536),  # B 3 x 1: the gathered vector-B epilogue
]
# The same structure at interpreter-friendly sizes, for --dry-run on a CPU.
DRY_CASES = [
    LayerCase("dry c_fc", 96, 40, (24, 40), 1, 33, quick=True),
    LayerCase("dry c_proj", 40, 96, (40, 24), 1, 33, quick=True),
    LayerCase("dry decode", 96, 40, (24, 40), 1, 1, backward=False, graph=True, quick=True),
]
# fused: `kron_linear_fused` as the layer runs it (the vector-B kernels where they apply, else the general
# ones); fused_general: the general kernels forced (impl="general"), timed only where "auto" runs others.
PATHS = ("dense", "materialised", "factored", "fused_general", "fused")
IMPL_OF_PATH = {"fused_general": "general", "fused": "auto"}


class Clock:
    """Median milliseconds of a call: CUDA events on a GPU (no host sync inside), perf_counter on a CPU."""

    def __init__(self, device: torch.device, reps: int, warmup: int = 3) -> None:
        self.device, self.reps, self.warmup = device, reps, warmup

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def median_ms(self, fn, args: list, between=None) -> float:
        for i in range(max(self.warmup, len(args))):  # warm-up: compile, autotune, first touch of every set
            fn(args[i % len(args)])
            if between:
                between()
        self.sync()
        times = []
        cuda = self.device.type == "cuda"
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(self.reps)] if cuda else []
        for r in range(self.reps):
            if cuda:
                events[r][0].record()
                fn(args[r % len(args)])
                events[r][1].record()
            else:
                t0 = time.perf_counter()
                fn(args[r % len(args)])
                times.append((time.perf_counter() - t0) * 1e3)
            if between:
                between()
        self.sync()
        return statistics.median([a.elapsed_time(b) for a, b in events] if cuda else times)

    def graph_ms(self, fn, args: list) -> float:
        """Per-call milliseconds of `fn` over all sets, captured once in a CUDA graph and replayed."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for a in args:
                fn(a)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            for a in args:
                fn(a)
        return self.median_ms(lambda _: graph.replay(), [None]) / len(args)


def _operand_sets(case: LayerCase, device: torch.device, l2_bytes: int) -> list[types.SimpleNamespace]:
    """Independent (x, W, A, B, bias, grad) sets, enough of them to total ≥ 3× L2."""
    shape = kron_shape(case.out_features, case.in_features, case.a_shape)
    dtype = getattr(torch, case.dtype)

    def one(seed: int) -> types.SimpleNamespace:
        g = torch.Generator(device=device).manual_seed(seed)

        def rnd(*size: int, scale: float) -> torch.Tensor:
            return (torch.randn(*size, generator=g, device=device) * scale).to(dtype)

        A = rnd(case.k, *shape.a_shape, scale=shape.n1**-0.5)
        B = rnd(case.k, *shape.b_shape, scale=(shape.n2 * case.k) ** -0.5)
        s = types.SimpleNamespace(x=rnd(case.tokens, case.in_features, scale=1.0), A=A, B=B,
                                  W=kron_reconstruct(A, B), bias=rnd(case.out_features, scale=0.1),
                                  grad=rnd(case.tokens, case.out_features, scale=1.0))
        for t in (s.x, s.A, s.B, s.W, s.bias):
            t.requires_grad_(case.backward)
        return s

    first = one(0)
    size = sum(t.numel() * t.element_size() for t in vars(first).values())
    count = min(64, max(2, math.ceil(3 * l2_bytes / size)))
    return [first] + [one(i) for i in range(1, count)]


def _vector_b_case(case: LayerCase) -> bool:
    """Whether "auto" runs the vector-B kernels on this case (else `fused_general` would repeat `fused`)."""
    shape = kron_shape(case.out_features, case.in_features, case.a_shape)
    return case.tokens > 16 and vector_b_supports(case.k, *shape.b_shape)


def _paths(case: LayerCase, device: torch.device) -> dict:
    shape = kron_shape(case.out_features, case.in_features, case.a_shape)
    a_first, b_first = shape.macs_per_token(case.k)
    order = "a_first" if a_first <= b_first else "b_first"
    paths = {
        "dense": lambda s: F.linear(s.x, s.W, s.bias),
        "materialised": lambda s: kron_linear_materialised(s.x, s.A, s.B, None, s.bias),
        "factored": lambda s: kron_linear_factored(s.x, s.A, s.B, None, s.bias, order=order),
    }
    if fused_available(torch.empty(0, device=device)):
        if _vector_b_case(case):
            paths["fused_general"] = lambda s: kron_linear_fused(s.x, s.A, s.B, None, s.bias, impl="general")
        paths["fused"] = lambda s: kron_linear_fused(s.x, s.A, s.B, None, s.bias)
    return paths


def _fwd_bwd(path):
    def step(s: types.SimpleNamespace) -> None:
        for t in (s.x, s.A, s.B, s.W, s.bias):
            t.grad = None
        path(s).backward(s.grad)
    return step


def _max_rel_error(path, s: types.SimpleNamespace, rows: int = 1024) -> float:
    """max |y − ref| / max |ref| on the first `rows` tokens, ref = float64 dense."""
    part = replace_ns(s, x=s.x[:rows].detach())
    with torch.no_grad():
        got = path(part).double()
        ref = F.linear(part.x.double(), s.W.double(), s.bias.double())
    return ((got - ref).abs().max() / ref.abs().max()).item()


def replace_ns(s: types.SimpleNamespace, **changes) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{**vars(s), **changes})


def _fused_grad_errors(s: types.SimpleNamespace, impl: str, rows: int = 1024) -> dict[str, float]:
    """‖grad_fused − grad_ref‖ / ‖grad_ref‖ for x, A, B, bias against float64 autograd."""
    leaves = {n: getattr(s, n)[:rows] if n == "x" else getattr(s, n) for n in ("x", "A", "B", "bias")}
    fused = {n: t.detach().clone().requires_grad_() for n, t in leaves.items()}
    ref = {n: t.detach().double().requires_grad_() for n, t in leaves.items()}
    grad = s.grad[:rows]
    kron_linear_fused(fused["x"], fused["A"], fused["B"], None, fused["bias"], impl=impl).backward(grad)
    kron_linear_materialised(ref["x"], ref["A"], ref["B"], None, ref["bias"]).backward(grad.double())
    return {n: ((fused[n].grad.double() - ref[n].grad).norm() / ref[n].grad.norm()).item() for n in leaves}


def run_layer(case: LayerCase, device: torch.device, clock: Clock, l2_bytes: int) -> dict:
    shape = kron_shape(case.out_features, case.in_features, case.a_shape)
    nbytes = 4 if case.dtype == "float32" else 2
    result = {**asdict(case), "b_shape": list(shape.b_shape), "paths": {}, "predicted_ms": {
        label: {k: v * 1e3 for k, v in predict(shape, case.k, case.tokens, training, nbytes).items()}
        for label, training in (("fwd", False), ("fwdbwd", True))}}
    sets = _operand_sets(case, device, l2_bytes)
    result["operand_sets"] = len(sets)
    for name, path in _paths(case, device).items():
        row: dict = {}
        try:
            with torch.no_grad():
                row["fwd_ms"] = clock.median_ms(path, sets)
            if case.backward:
                row["fwdbwd_ms"] = clock.median_ms(_fwd_bwd(path), sets)
            if case.graph and device.type == "cuda":
                row["graph_ms"] = clock.graph_ms(path, sets)
            row["max_rel_err"] = _max_rel_error(path, sets[0])
            if name.startswith("fused") and case.backward:
                row["grad_rel_err"] = _fused_grad_errors(sets[0], IMPL_OF_PATH[name])
        except Exception as exc:  # record and go on: one failing path must not hide the others
            row["error"] = f"{type(exc).__name__}: {exc}"[:400]
        result["paths"][name] = row
    dense = result["paths"]["dense"]
    for row in result["paths"].values():
        for key in ("fwd_ms", "fwdbwd_ms", "graph_ms"):
            if key in row and key in dense:
                row[key.replace("_ms", "_speedup")] = dense[key] / row[key]
    result["auto"] = _auto_choice(case, shape, result["paths"], device)
    del sets
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def _auto_choice(case: LayerCase, shape, paths: dict, device: torch.device) -> dict:
    """What `KroneckerLinear`'s automatic path runs for this case, and its speed-up (the timing of that
    path in this run; factored is timed in its cheaper order, as the layer would pick it)."""
    layer = KroneckerLinear(case.in_features, case.out_features, case.a_shape, case.k, device="meta")
    fused = fused_available(torch.empty(0, device=device)) and case.dtype == "bfloat16"  # as `path_for` decides
    cuda = device.type == "cuda" and (case.dtype != "float32" or torch.backends.cuda.matmul.allow_tf32)
    out = {}
    for label, training, key in (("fwd", False, "fwd_speedup"), ("fwdbwd", True, "fwdbwd_speedup")):
        if label == "fwdbwd" and not case.backward:
            continue
        path = layer.resolved_path(case.tokens, training, tensor_cores=cuda, fused=fused)
        column = "factored" if path.startswith("factored") else path
        out[label] = {"path": path, "speedup": paths.get(column, {}).get(key)}
    return out


# ---- whole model ---------------------------------------------------------------------------------------


def on_fused_path(model: GPT2LMHeadModel) -> GPT2LMHeadModel:
    """Every Kronecker layer of `model` on the fused path, whatever its shape and token count (the model's
    MLP then has c_fc apply GELU inside its kernel)."""
    for module in model.modules():
        if isinstance(module, KroneckerLinear):
            module.path = "fused"
    return model


def _model_variants(dry: bool, device: torch.device) -> dict:
    """Factories of the models (fp32 weights), built lazily so only one lives at a time: dense; compressed
    to 81M on the layer's automatic path (`kron_auto`); and with every Kronecker layer on the fused path
    (`kron_fused`, GELU in c_fc's kernel)."""
    if dry:
        cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=128, vocab_size=1000)
        scheme = CompressionConfig(a_shape=(64, 64), init="random")
    else:
        cfg = GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257)
        scheme = CompressionConfig.from_scheme("81M", init="random")
    cfg.resid_pdrop = cfg.embd_pdrop = cfg.attn_pdrop = 0.0

    def dense() -> GPT2LMHeadModel:
        torch.manual_seed(0)
        return GPT2LMHeadModel(cfg).to(device)

    def kron() -> GPT2LMHeadModel:
        model = dense()
        compress_(model, copy.deepcopy(scheme), progress=False)
        return model.to(device)

    variants = {"dense": dense, "kron_auto": kron}
    if fused_available(torch.empty(0, device=device)):
        variants["kron_fused"] = lambda: on_fused_path(kron())
    return variants


def _train_tokens_per_s(model, clock: Clock, batch: torch.Tensor, compiled: bool, mode: str = "default") -> float:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), fused=batch.is_cuda)
    forward = torch.compile(model, mode=mode) if compiled else model
    graphed = compiled and mode == "reduce-overhead"

    def step(_) -> None:
        if graphed:  # a new iteration: the graphs' outputs of the last one may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(batch.device.type, dtype=torch.bfloat16):
            loss = forward(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return batch.numel() / (clock.median_ms(step, [None]) / 1e3)


def _cache_kwarg(model) -> str:
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _prefill_tokens_per_s(model, clock: Clock, batch: torch.Tensor, graphed: bool = False) -> float:
    """Tokens/s of one forward over the batch (logits of the last position only, as `generate` asks).
    `graphed`: the same forward captured in a CUDA graph, i.e. GPU time without the host's launch cost;
    eager well below graphed means the eager model is host-bound."""
    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}

    def forward(_) -> None:
        model(input_ids=batch, use_cache=False, **keep)

    with torch.no_grad():
        ms = clock.graph_ms(forward, [None]) if graphed else clock.median_ms(forward, [None])
    return batch.numel() / (ms / 1e3)


def _decode_ms(model, clock: Clock, context: int, graphed: bool) -> float:
    """One token at a fixed context length; the cache is cut back after each step so shapes never change."""
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    name = _cache_kwarg(model)
    with torch.no_grad():
        out = model(input_ids=torch.randint(vocab, (1, context), device=device), use_cache=True)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        token = torch.randint(vocab, (1, 1), device=device)

        def step(_) -> None:
            model(input_ids=token, use_cache=True, **{name: cache})

        if not graphed:
            return clock.median_ms(step, [None], between=lambda: cache.crop(-1))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm up (tuning, library handles) outside the capture
            for _ in range(3):
                step(None)
                cache.crop(-1)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # replays recompute the same step at the same context length
            step(None)
        return clock.median_ms(lambda _: graph.replay(), [None])


def _measure_model(key: str, model, clock: Clock, batch: torch.Tensor, context: int, compiled: bool,
                   mode: str = "default") -> float:
    if key == "train_tokens_per_s":
        return _train_tokens_per_s(model, clock, batch, compiled, mode)
    if key.startswith("prefill"):
        return _prefill_tokens_per_s(model, clock, batch, graphed=key == "prefill_graph_tokens_per_s")
    return _decode_ms(model, clock, context, graphed=key == "decode_graph_ms")


def run_model(args: argparse.Namespace, device: torch.device, clock: Clock, deadline: float,
              report: dict) -> dict:
    """Fills and returns report["model"]; the JSON is rewritten after each variant. With --compile only
    the training step is measured (prefill and decode do not use the compiled model)."""
    batch_shape = (2, 32) if args.dry_run else (8, 1024)
    context = 16 if args.dry_run else 128
    results: dict = {"batch": list(batch_shape), "decode_context": context, "compiled": args.compile,
                     "compile_mode": args.compile_mode if args.compile else None, "variants": {}}
    report["model"] = results
    variants = _model_variants(args.dry_run, device)
    wanted = [v for v in args.variants.split(",") if v] if args.variants else list(variants)
    unknown = set(wanted) - set(variants)
    if unknown:
        raise SystemExit(f"unknown or unavailable model variants: {', '.join(sorted(unknown))}")
    for name, build in ((v, variants[v]) for v in wanted):  # in the order asked for
        if time.perf_counter() > deadline:
            results["variants"][name] = {"skipped": "time budget"}
            continue
        row: dict = {}
        results["variants"][name] = row
        model = build()
        row["params"] = sum(p.numel() for p in model.parameters())
        batch = torch.randint(model.config.vocab_size, batch_shape, device=device)
        keys = ["train_tokens_per_s", "prefill_tokens_per_s", "decode_ms"]
        keys += ["prefill_graph_tokens_per_s", "decode_graph_ms"] if device.type == "cuda" else []
        keys = keys[:1] if args.compile else keys
        for key in keys:
            try:
                if key == "prefill_tokens_per_s":  # inference on bf16 weights; training on fp32 + autocast
                    model = model.to(torch.bfloat16).eval()
                row[key] = _measure_model(key, model, clock, batch, context, args.compile, args.compile_mode)
            except Exception as exc:
                row[key + "_error"] = f"{type(exc).__name__}: {exc}"[:400]
        print(f"[{time.perf_counter() - START:6.1f}s] model {name}: {row}", flush=True)
        write_json(args.json, report, quiet=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    dense = results["variants"].get("dense", {})
    for row in results["variants"].values():
        for key in ("train_tokens_per_s", "prefill_tokens_per_s", "prefill_graph_tokens_per_s"):
            if key in row and key in dense:
                row[key.replace("_tokens_per_s", "_speedup")] = row[key] / dense[key]
        for key in ("decode_ms", "decode_graph_ms"):
            if key in row and key in dense:
                row[key.replace("_ms", "_speedup")] = dense[key] / row[key]
    return results


# ---- ceilings, table, main -----------------------------------------------------------------------------


def measure_ceilings(device: torch.device, clock: Clock) -> dict:
    """Device-to-device copy bandwidth and a large bf16 GEMM rate, the two roofline ceilings, plus the copy
    bandwidth of an 8 MiB buffer that stays in L2 (64 copies replayed from one CUDA graph, so launches do
    not count): a lower bound on what the L2 term of `roofline.vector_b_traffic` can be divided by."""
    n = 1 << 28  # 512 MiB of bf16 each way
    src = torch.randn(n, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    copy_ms = clock.median_ms(lambda _: dst.copy_(src), [None])
    small = 1 << 22  # 8 MiB of bf16 each way
    l2_ms = clock.graph_ms(lambda _: dst[:small].copy_(src[:small]), [None] * 64)
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    gemm_ms = clock.median_ms(lambda _: a @ a, [None])
    return {"copy_tb_per_s": 2 * n * 2 / (copy_ms / 1e3) / 1e12,
            "l2_copy_tb_per_s": 2 * small * 2 / (l2_ms / 1e3) / 1e12,
            "bf16_gemm_tflops": 2 * 8192**3 / (gemm_ms / 1e3) / 1e12}


def print_tables(layers: list[dict], model: dict | None) -> None:
    """Speed-ups over dense in the same run (× > 1 is faster), fused errors and predictions."""
    head = f"{'layer':22} {'B':>7} {'tok':>6} {'pass':8} {'dense ms':>9} "
    head += " ".join(f"{p[:8]:>8}" for p in PATHS[1:])
    print("\n" + head + f" {'pred':>6} {'fused err':>9}  auto (the layer's own choice)")
    for r in layers:
        if "paths" not in r:
            print(f"{r['name']:22} {r.get('skipped') or r.get('error', '')[:80]}")
            continue
        passes = [("fwd", "fwd_ms", "fwd_speedup")]
        passes += [("fwd+bwd", "fwdbwd_ms", "fwdbwd_speedup")] if r["backward"] else []
        passes += [("graph", "graph_ms", "graph_speedup")] if "graph_ms" in r["paths"]["dense"] else []
        for label, ms, speed in passes:
            dense = r["paths"]["dense"].get(ms, float("nan"))
            cells = " ".join(f"{r['paths'].get(p, {}).get(speed, float('nan')):7.2f}x" for p in PATHS[1:])
            pred = r["predicted_ms"].get(ms.removesuffix("_ms"))
            pred = pred["dense"] / pred["fused"] if pred else float("nan")
            err = r["paths"].get("fused", {}).get("max_rel_err", float("nan"))
            b = "x".join(map(str, r["b_shape"])) + (f"k{r['k']}" if r["k"] > 1 else "")
            auto = r.get("auto", {}).get(ms.removesuffix("_ms"), {})
            choice = f"{auto['path']} {auto['speedup'] or float('nan'):.2f}x" if auto else ""
            print(f"{r['name']:22} {b:>7} {r['tokens']:>6} {label:8} {dense:9.4f} {cells} {pred:5.2f}x {err:9.1e}"
                  f"  {choice}")
    if model:
        print(f"\n{'model':12} {'train tok/s':>12} {'x':>6} {'prefill tok/s':>14} {'x':>6} {'graphed':>9} "
              f"{'x':>6} {'decode ms':>10} {'x':>6} {'graph ms':>9} {'x':>6}")
        for name, row in model["variants"].items():
            v = {k: row.get(k, float("nan")) for k in (
                "train_tokens_per_s", "train_speedup", "prefill_tokens_per_s", "prefill_speedup",
                "prefill_graph_tokens_per_s", "prefill_graph_speedup", "decode_ms", "decode_speedup",
                "decode_graph_ms", "decode_graph_speedup")}
            print(f"{name:12} {v['train_tokens_per_s']:12.0f} {v['train_speedup']:6.2f} "
                  f"{v['prefill_tokens_per_s']:14.0f} {v['prefill_speedup']:6.2f} "
                  f"{v['prefill_graph_tokens_per_s']:9.0f} {v['prefill_graph_speedup']:6.2f} {v['decode_ms']:10.3f} "
                  f"{v['decode_speedup']:6.2f} {v['decode_graph_ms']:9.3f} {v['decode_graph_speedup']:6.2f}")
            errors = {k: e for k, e in row.items() if k.endswith("_error") or k == "skipped"}
            if errors:
                print(f"{'':12} {errors}")


def sass_reports(cases: list[LayerCase]) -> list[dict]:
    """`kernel_tools.sass.layer_report` of every case, printed one line per compiled candidate."""
    from kernel_tools.sass import layer_report

    out = []
    for case in cases:
        shape = kron_shape(case.out_features, case.in_features, case.a_shape)
        dtype = getattr(torch, case.dtype)
        rows = layer_report(shape, case.k, case.tokens, case.backward, dtype)
        if _vector_b_case(case):  # the vector-B forward with GELU (the MLP's c_fc)
            rows += [r for r in layer_report(shape, case.k, case.tokens, case.backward, dtype,
                                             activation="gelu_new") if r["kernel"] == "_vector_b_forward_kernel"]
        out.append({**asdict(case), "kernels": rows})
        for r in rows:
            c = r["config"]
            blocks = ",".join(str(c.get(k, "-")) for k in ("BLOCK_T", "BLOCK_A", "BLOCK_C"))
            tc = sum(v for k, v in r["instructions"].items() if "MMA" in k)
            print(f"{case.name:18} T={case.tokens:<6} {r['kernel']:22} {blocks:>11} w{c['warps']} "
                  f"regs={r['registers']:3} stack={r['stack_bytes']:4} smem={r['shared_bytes']:6} mma={tc:3} "
                  f"{ {k: v for k, v in r['instructions'].items() if k.startswith(('LD', 'ST'))} }", flush=True)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the core cases (81M layer, decode, model)")
    parser.add_argument("--fast", action="store_true",
                        help="the short set: the whole model first, then FAST_CASES (< 200 s on an H100)")
    parser.add_argument("--dry-run", action="store_true", help="CPU: tiny cases and model, no GPU needed")
    parser.add_argument("--json", help="write all results here (rewritten after every case)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds after which cases are skipped (default 230; 185 with --fast)")
    parser.add_argument("--reps", type=int, default=30, help="timed repeats per measurement")
    parser.add_argument("--compile", action="store_true", help="torch.compile the training step (slow to build)")
    parser.add_argument("--no-model", action="store_true", help="skip the whole-model section")
    parser.add_argument("--no-layers", action="store_true", help="skip the layer cases (model only)")
    parser.add_argument("--variants", default="",
                        help="comma-separated model variants, run in this order (dense, kron_auto, kron_fused)")
    parser.add_argument("--compile-mode", default="default",
                        choices=("default", "reduce-overhead", "max-autotune-no-cudagraphs"),
                        help="torch.compile mode of the training step with --compile (reduce-overhead: CUDA "
                             "graphs, no per-kernel launch cost on the host)")
    parser.add_argument("--sass", action="store_true",
                        help="no timing: compile every case's kernels for sm_90 (works on a CPU) and report "
                             "registers, spills and instruction mix")
    return parser.parse_args(argv)


START = time.perf_counter()


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    if not (args.dry_run or args.sass) and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA device (use --dry-run on a CPU)")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    clock = Clock(device, 1, warmup=1) if args.dry_run else Clock(device, args.reps)  # dry: each path runs
    deadline = START + (args.budget if args.budget is not None else 185.0 if args.fast else 230.0)
    env = environment(device)
    env.update(triton=_version("triton"), transformers=_version("transformers"), cuda=torch.version.cuda,
               fused_available=fused_available(torch.empty(0, device=device)))
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(sms=props.multi_processor_count, l2_bytes=getattr(props, "L2_cache_size", 50 << 20))
    report: dict = {"environment": env, "quick": args.quick, "layers": [], "model": None}
    print(f"device: {env['device_name']}  torch {env['torch']}  triton {env['triton']}  "
          f"fused: {env['fused_available']}")
    if device.type == "cuda":
        report["ceilings"] = measure_ceilings(device, clock)
        print(f"ceilings: {report['ceilings']}", flush=True)
    if args.dry_run:
        cases = DRY_CASES
    elif args.fast:
        cases = FAST_CASES  # not "quick": the whole model runs first, then these, until the budget is spent
    else:
        cases = CASES
    cases = [c for c in cases if c.quick or not args.quick]
    if args.sass:
        report["sass"] = sass_reports(cases)
        write_json(args.json, report)
        return report
    if args.no_layers:
        cases = []
    core, rest = [c for c in cases if c.quick], [c for c in cases if not c.quick]
    l2 = 0 if args.dry_run else env.get("l2_bytes", 50 << 20)  # rotating operand sets only on a GPU
    for case in core:
        _layer_step(report, case, device, clock, l2, deadline, args.json)
    if not args.no_model:
        try:
            run_model(args, device, clock, deadline, report)
        except Exception as exc:
            report["model"] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
        write_json(args.json, report)
    for case in rest:
        _layer_step(report, case, device, clock, l2, deadline, args.json)
    report["elapsed_s"] = time.perf_counter() - START
    print_tables(report["layers"], report["model"] if report["model"] and "variants" in report["model"] else None)
    print(f"\n{env['device_name']}: {report['elapsed_s']:.0f} s; speed-ups are dense time / path time (>1 faster)")
    write_json(args.json, report)
    return report


def _layer_step(report: dict, case: LayerCase, device, clock: Clock, l2: int, deadline: float, path) -> None:
    if time.perf_counter() > deadline:
        report["layers"].append({**asdict(case), "skipped": "time budget"})
        return
    try:
        result = run_layer(case, device, clock, l2)
    except Exception as exc:
        result = {**asdict(case), "error": f"{type(exc).__name__}: {exc}"[:400]}
    report["layers"].append(result)
    brief = {p: {k: round(v, 4) for k, v in row.items() if k.endswith(("_ms", "_speedup"))}
             for p, row in result.get("paths", {}).items()}
    print(f"[{time.perf_counter() - START:6.1f}s] {case.name} T={case.tokens}: {brief or result.get('error')}",
          flush=True)
    write_json(path, report)


def _version(name: str) -> str | None:
    try:
        return __import__(name).__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
