"""Block-size sweep and per-kernel profile of the fused kernels on a GPU, in one call (≈ 2 min on an H100).

H100 runs 1-3 timed each fused path as a whole; this script answers the two questions those runs left:

1. Which block sizes make each kernel fastest? Every candidate in `kronypt.kernels.v3.SWEEP` (the one-
   kernel forward, both 81M orientations) and `kronypt.kernels.gemm_path.SWEEP` (version 2's expand and
   reduce passes) is timed against dense cuBLAS in the same run, with its max relative error against a
   float64 reference and the bytes it must move (`roofline.v3_traffic`: HBM and L2), so the winner can
   become the default without another device call.
2. Where does the time of a fused forward + backward go? `torch.profiler` per-kernel GPU times of the
   81M c_fc (+GELU) and c_proj layer calls at 16384 tokens (one GPT-2 training micro-batch of 16 x 1024),
   dense and fused (impl "auto", which runs version 3 there, and "v2").

    PYTHONUNBUFFERED=1 python benchmarks/sweep.py --json $OUT/sweep.json        # GPU
    TRITON_INTERPRET=1 python benchmarks/sweep.py --dry-run                     # CPU: tiny shapes
    python benchmarks/sweep.py --sass                                           # CPU: sm_90 builds only

Every result is written to the JSON as soon as it exists; past `--budget` seconds the rest is skipped.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
import types
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, write_json  # noqa: E402
from gpu import Clock, LayerCase, _operand_sets, _version, measure_ceilings  # noqa: E402

from kronypt.kernels import fused_available, kron_linear_fused  # noqa: E402
from kronypt.kernels.overrides import config_dict  # noqa: E402
from kronypt.kernels.roofline import v3_traffic  # noqa: E402
from kronypt.math.shapes import kron_shape  # noqa: E402

START = time.perf_counter()

# (label, orientation, layer case, activation, timed inside a CUDA graph, top). The 8192-token cases are
# graphed: their kernels take ~20-60 µs, about the eager launch cost, which would otherwise hide them.
# `top` = N: only the default and the N fastest candidates of the plain 65536-token case of the same
# orientation (each candidate is a separate compile: this keeps the whole sweep inside one device call).
V3_CASES = [
    ("81M c_fc", "column", LayerCase("81M c_fc", 3072, 768, (768, 768), 1, 65536, backward=False), None, False,
     None),
    ("81M c_proj", "row", LayerCase("81M c_proj", 768, 3072, (768, 768), 1, 65536, backward=False), None, False,
     None),
    ("86M c_fc", "column3", LayerCase("86M c_fc", 3072, 768, (1024, 768), 1, 65536, backward=False), None,
     False, None),
    ("81M c_fc gelu", "column", LayerCase("81M c_fc", 3072, 768, (768, 768), 1, 65536, backward=False),
     "gelu_new", False, 5),
    ("81M c_fc", "column", LayerCase("81M c_fc", 3072, 768, (768, 768), 1, 8192, backward=False), None, True, 5),
    ("81M c_proj", "row", LayerCase("81M c_proj", 768, 3072, (768, 768), 1, 8192, backward=False), None, True,
     5),
]
DRY_V3_CASES = [
    ("dry c_fc", "column", LayerCase("dry c_fc", 96, 40, (24, 40), 1, 150, backward=False), None, False, None),
    ("dry c_proj", "row", LayerCase("dry c_proj", 40, 96, (40, 24), 1, 150, backward=False), None, False, None),
    ("dry c_fc gelu", "column", LayerCase("dry c_fc", 96, 40, (24, 40), 1, 150, backward=False), "gelu_new",
     False, 3),
    ("dry c_fc m2=3", "column3", LayerCase("dry c_fc", 72, 40, (24, 40), 1, 150, backward=False), None, False,
     None),
]


def _candidates(configs: list, orientation: str, top: int | None, report: dict) -> list:
    """All of `configs`, or the default and the `top` fastest of the first plain (no activation, not
    graphed) case of this orientation already timed."""
    first = next((row for row in report["v3"] if row.get("orientation") == orientation and "configs" in row
                  and not row["activation"] and not row["graph"]), None)
    if top is None or first is None:
        return configs
    timed = sorted((c for c in first["configs"] if "ms" in c), key=lambda c: c["ms"])
    wanted = [c["config"] for c in timed[:top]]
    return [configs[0]] + [c for c in configs[1:] if _config_dict(c) in wanted]


def _config_dict(config) -> dict:
    return config_dict(config)  # the kernel-configs file's form (`kronypt.kernels.overrides`)


def _max_rel_diff(got, ref) -> float:
    """The largest `_rel_error` over a pass's outputs (a tensor or a tuple of them; None entries skipped)."""
    pairs = zip(got, ref, strict=True) if isinstance(got, tuple) else [(got, ref)]
    return max(_rel_error(a, b.double()) for a, b in pairs if a is not None)


def _rel_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.double() - ref).abs().max() / ref.abs().max()).item()


def _dense_ref(s: types.SimpleNamespace, act: str | None, rows: int = 1024) -> torch.Tensor:
    y = F.linear(s.x[:rows].double(), s.W.double(), s.bias.double())
    return F.gelu(y, approximate="tanh") if act else y


def _time(clock: Clock, fn, sets: list, graph: bool) -> float:
    with torch.no_grad():
        return clock.graph_ms(fn, sets) if graph and clock.device.type == "cuda" else clock.median_ms(fn, sets)


def sweep_v3(cases: list, clock: Clock, l2: int, deadline: float, report: dict, path: str | None) -> None:
    """Every `v3.SWEEP` candidate on every case, against dense in the same run."""
    from kronypt.kernels import v3

    for label, orientation, case, act, graph, top in cases:
        if time.perf_counter() > deadline:
            report["v3"].append({"case": label, "tokens": case.tokens, "skipped": "time budget"})
            continue
        shape = kron_shape(case.out_features, case.in_features, case.a_shape)
        sets = _operand_sets(case, clock.device, l2)
        code = 1 if act else 0
        def dense(s, act=act):
            y = F.linear(s.x, s.W, s.bias)
            return F.gelu(y, approximate="tanh") if act else y

        dense_ms = _time(clock, dense, sets, graph)
        row = {"case": label, "orientation": orientation, "tokens": case.tokens, "activation": act,
               "graph": graph, "dense_ms": dense_ms, "configs": []}
        ref = _dense_ref(sets[0], act)
        for config in _candidates(v3.SWEEP[orientation], orientation, top, report):
            cfg = {"config": _config_dict(config)}
            k = config.kwargs
            traffic = v3_traffic(shape, case.tokens, k["BLOCK_T"], k["BLOCK_A"], split=k["SPLIT"])
            cfg.update(hbm_mb=traffic["hbm"] / 1e6, l2_mb=traffic["l2"] / 1e6)
            try:
                def run(s, config=config, code=code):
                    return v3.v3_forward(s.x, s.A, s.B, None, s.bias, code, False, config=config)[0]

                cfg["ms"] = _time(clock, run, sets, graph)
                cfg["speedup"] = dense_ms / cfg["ms"]
                cfg["hbm_tb_per_s"] = traffic["hbm"] / (cfg["ms"] / 1e3) / 1e12
                with torch.no_grad():
                    cfg["max_rel_err"] = _rel_error(run(types.SimpleNamespace(**{**vars(sets[0]),
                                                                                 "x": sets[0].x[:1024]})), ref)
            except Exception as exc:  # record and go on
                cfg["error"] = f"{type(exc).__name__}: {exc}"[:300]
            row["configs"].append(cfg)
        timed = [c for c in row["configs"] if "ms" in c]
        if timed:
            row["best"] = min(timed, key=lambda c: c["ms"])
        report["v3"].append(row)
        best = row.get("best", {})
        print(f"[{time.perf_counter() - START:6.1f}s] v3 {label} T={case.tokens}: dense {dense_ms:.4f} ms, best "
              f"{best.get('ms', float('nan')):.4f} ms = {best.get('speedup', float('nan')):.2f}x "
              f"{best.get('config')}", flush=True)
        write_json(path, report, quiet=True)
        del sets
        _free(clock.device)


def sweep_passes(tokens: int, clock: Clock, deadline: float, report: dict, path: str | None,
                 m1: int = 768, m2: int = 4) -> None:
    """Version 2's memory-bound passes: `expand` (P → y, + bias), its 16-byte-store alternative
    `expand_joined`, and `reduce` (G, P → H, M, Σ_t G with GELU's backward): each candidate's time and the
    bandwidth it reaches, against a plain copy of y."""
    from kronypt.kernels import gemm_path

    dev, dtype = clock.device, torch.bfloat16
    count = 2 if dev.type == "cpu" else 3
    sets = [types.SimpleNamespace(p=torch.randn(tokens, m1, device=dev, dtype=dtype),
                                  g=torch.randn(tokens, m1 * m2, device=dev, dtype=dtype),
                                  y=torch.empty(tokens, m1 * m2, device=dev, dtype=dtype))
            for _ in range(count)]
    w = torch.randn(1, m2, device=dev)
    bias = torch.randn(m1 * m2, device=dev, dtype=dtype)
    nbytes = 2
    copy_ms = clock.median_ms(lambda s: s.y.copy_(s.g), sets)
    out = {"tokens": tokens, "m1": m1, "m2": m2, "copy_ms": copy_ms,
           "copy_tb_per_s": 2 * nbytes * tokens * m1 * m2 / (copy_ms / 1e3) / 1e12,
           **{kind: [] for kind in gemm_path.SWEEP}}
    expanded = nbytes * tokens * (m1 + m1 * m2)
    moved = {"expand": expanded, "expand_joined": expanded, "reduce": nbytes * tokens * (m1 * m2 + 2 * m1)}
    calls = {"expand": lambda s, c: gemm_path.expand(s.p, w, m1, bias, 0, config=c),
             "expand_joined": lambda s, c: gemm_path.expand_joined(s.p, w, m1, bias, 0, config=c),
             "reduce": lambda s, c: gemm_path.reduce(s.g, s.p, w, m1, True, act=1, bias=bias, config=c)}
    for kind in gemm_path.SWEEP:
        with torch.no_grad():  # each candidate's outputs against the default's on the first operand set
            reference = calls[kind](sets[0], gemm_path.SWEEP[kind][0])
        for config in gemm_path.SWEEP[kind]:
            if time.perf_counter() > deadline:
                out[kind].append({"config": _config_dict(config), "skipped": "time budget"})
                continue
            row = {"config": _config_dict(config)}
            try:
                row["ms"] = clock.median_ms(lambda s, c=config, call=calls[kind]: call(s, c), sets)
                row["tb_per_s"] = moved[kind] / (row["ms"] / 1e3) / 1e12
                with torch.no_grad():
                    row["max_rel_diff"] = _max_rel_diff(calls[kind](sets[0], config), reference)
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            out[kind].append(row)
        timed = [r for r in out[kind] if "ms" in r]
        if timed:
            out[f"best_{kind}"] = min(timed, key=lambda r: r["ms"])
            b = out[f"best_{kind}"]
            print(f"[{time.perf_counter() - START:6.1f}s] {kind} T={tokens}: default {timed[0]['ms']:.4f} ms "
                  f"({timed[0]['tb_per_s']:.2f} TB/s), best {b['ms']:.4f} ms ({b['tb_per_s']:.2f} TB/s) "
                  f"{b['config']}; copy {out['copy_tb_per_s']:.2f} TB/s", flush=True)
    report["passes"] = out
    write_json(path, report, quiet=True)
    del sets
    _free(dev)


def sass_table(report: dict, path: str | None) -> None:
    """No GPU needed: compile every version-3 candidate for sm_90 (81M shapes, bf16) and print registers,
    spills, shared memory and the resident blocks per SM they allow (docs/gpu-notes.md, "Version 3.1")."""
    from kronypt.kernels import sass, v3
    from kronypt.math.shapes import KronShape

    print("| kernel | variant | tile TxAxC | warps | stages | persistent | TMA | regs | stack | smem KB | blocks/SM |")
    for orientation, shape in (("column", KronShape(768, 768, 4, 1)), ("row", KronShape(768, 768, 1, 4)),
                               ("column3", KronShape(1024, 768, 3, 1))):
        variants = [("plain", None, False)]
        variants += [("GELU + training", "gelu_new", True)] if orientation != "row" else []
        for label, act, training in variants:
            launches = sass.recorded_launches(shape, 1, 65536, training, torch.bfloat16, activation=act,
                                              impl="v3")
            kernel, _, args = launches[0]
            for config in v3.SWEEP[orientation]:
                r = sass.compile_report(kernel, v3.descriptors(args, config) if config.kwargs["TMA"] else args,
                                        config)
                warps, k = config.num_warps, config.kwargs
                regs = -(-r["registers"] // 8) * 8 * 32 * warps
                blocks = min(65536 // regs, (228 << 10) // (r["shared_bytes"] + 1024), 64 // warps)
                report["sass"].append({"orientation": orientation, "variant": label, **r, "blocks_per_sm": blocks})
                tma = "yes" if k["TMA"] else "-"
                print(f"| {orientation} | {label} | {k['BLOCK_T']}x{k['BLOCK_A']}x{k['BLOCK_C']} | {warps} | "
                      f"{config.num_stages} | {k.get('PERSIST', 0) or '-'} | {tma} | {r['registers']} | "
                      f"{r['stack_bytes']} | {r['shared_bytes'] >> 10} | {blocks} |", flush=True)
    write_json(path, report, quiet=True)


def _kernel_times(fn, device: torch.device, reps: int = 5) -> dict[str, float]:
    """Per-kernel device microseconds per call of `fn` (CPU operators on a CPU), from torch.profiler."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        fn()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            fn()
        if cuda:
            torch.cuda.synchronize(device)
    times: dict[str, float] = {}
    for event in prof.key_averages():
        if cuda and event.device_type == DeviceType.CPU:  # operators: their kernels are counted themselves
            continue
        total = event.device_time_total if cuda else event.self_cpu_time_total
        if total > 0:
            times[event.key[:120]] = times.get(event.key[:120], 0.0) + total / reps
    return dict(sorted(times.items(), key=lambda kv: -kv[1]))


def profile_layers(tokens: int, clock: Clock, deadline: float, report: dict, path: str | None,
                   dry: bool) -> None:
    """Where a forward + backward of each 81M MLP layer spends its GPU time, dense and fused."""
    dev = clock.device
    dims = [("c_fc", 96, 40, (24, 40), "gelu_new"), ("c_proj", 40, 96, (40, 24), None)] if dry else \
        [("c_fc", 3072, 768, (768, 768), "gelu_new"), ("c_proj", 768, 3072, (768, 768), None)]
    for name, out_f, in_f, a_shape, act in dims:
        case = LayerCase(name, out_f, in_f, a_shape, 1, tokens)
        operands = _operand_sets(case, dev, 0)[0]
        variants = {"dense": functools.partial(_dense_step, operands, act)}
        if fused_available(operands.x):
            for impl in ("auto", "v2"):
                variants[f"fused_{impl}"] = functools.partial(_fused_step, operands, act, impl)
        for label, fn in variants.items():
            if time.perf_counter() > deadline:
                report["profile"].append({"layer": name, "variant": label, "skipped": "time budget"})
                continue
            try:
                kernels = _kernel_times(fn, dev)
                row = {"layer": name, "variant": label, "tokens": tokens, "kernels_us": kernels,
                       "total_us": sum(kernels.values())}
            except Exception as exc:
                row = {"layer": name, "variant": label, "error": f"{type(exc).__name__}: {exc}"[:300]}
            report["profile"].append(row)
            top = ", ".join(f"{k[:40]} {v:.0f}" for k, v in list(row.get("kernels_us", {}).items())[:4])
            print(f"[{time.perf_counter() - START:6.1f}s] profile {name} {label}: "
                  f"{row.get('total_us', float('nan')):.0f} µs ({top})", flush=True)
            write_json(path, report, quiet=True)
        del operands, variants
        _free(dev)


def _dense_step(s: types.SimpleNamespace, act: str | None) -> None:
    for t in (s.x, s.W, s.bias):
        t.grad = None
    y = F.linear(s.x, s.W, s.bias)
    (F.gelu(y, approximate="tanh") if act else y).backward(s.grad)


def _fused_step(s: types.SimpleNamespace, act: str | None, impl: str) -> None:
    for t in (s.x, s.A, s.B, s.bias):
        t.grad = None
    kron_linear_fused(s.x, s.A, s.B, None, s.bias, activation=act, impl=impl).backward(s.grad)


# A candidate replaces a default only when it is this much faster (timing noise between candidates of
# one run is ~1-2 %), and only if its outputs were checked: within MAX_ERROR of the float64 reference
# (version 3, bf16) or of the default's outputs (the passes), and no error.
MARGIN = 1.05
MAX_ERROR = 1e-2


def _checked(row: dict, key: str) -> bool:
    return "ms" in row and "error" not in row and row.get(key, float("inf")) <= MAX_ERROR


def tuned_configs(report: dict) -> tuple[dict, dict]:
    """({"v3": {orientation: config}, "gemm_path": {pass: config}}, why): the candidates that beat the
    built-in defaults by `MARGIN` in this report. Version 3: the best geometric mean of default time /
    candidate time over every case of the orientation, among candidates timed in all of them (the plain and
    GELU 65536-token cases and the graphed 8192-token one); a pass: its single case. Only candidates whose
    outputs passed their check (`MAX_ERROR`) count."""
    from kronypt.kernels import gemm_path, v3

    chosen: dict = {"v3": {}, "gemm_path": {}}
    why: dict = {"rule": f"a candidate replaces the default when it is >= {MARGIN}x as fast", "v3": {},
                 "gemm_path": {}}
    for orientation, candidates in v3.SWEEP.items():
        rows = [r for r in report.get("v3", []) if r.get("orientation") == orientation and r.get("configs")]
        ratios: dict[int, list[float]] = {}
        for row in rows:
            default = next((c for c in row["configs"] if c["config"] == _config_dict(candidates[0])), None)
            for i, config in enumerate(candidates):
                timed = next((c for c in row["configs"] if c["config"] == _config_dict(config)
                              and _checked(c, "max_rel_err")), None)
                if default and "ms" in default and timed:
                    ratios.setdefault(i, []).append(default["ms"] / timed["ms"])
        scores = {i: _geomean(r) for i, r in ratios.items() if len(r) == len(rows)}
        best = max(scores, key=scores.get, default=None)
        why["v3"][orientation] = {"cases": len(rows), "best": _config_dict(candidates[best]) if best is not None
                                  else None, "speedup_over_default": scores.get(best)}
        if best is not None and best != 0 and scores[best] >= MARGIN:
            chosen["v3"][orientation] = candidates[best]
    passes = report.get("passes") or {}
    for kind, candidates in gemm_path.SWEEP.items():
        rows = passes.get(kind) or []
        times = {i: r["ms"] for i, r in enumerate(rows) if _checked(r, "max_rel_diff")}
        if 0 not in times or len(rows) != len(candidates):
            continue
        best = min(times, key=times.get)
        why["gemm_path"][kind] = {"best": _config_dict(candidates[best]),
                                  "speedup_over_default": times[0] / times[best]}
        if best != 0 and times[0] / times[best] >= MARGIN:
            chosen["gemm_path"][kind] = candidates[best]
    return chosen, why


def _geomean(values: list[float]) -> float:
    product = 1.0
    for v in values:
        product *= v
    return product ** (1 / len(values))


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="write all results here (rewritten after every case)")
    parser.add_argument("--budget", type=float, default=150.0, help="seconds after which the rest is skipped")
    parser.add_argument("--reps", type=int, default=20, help="timed repeats per measurement")
    parser.add_argument("--dry-run", action="store_true", help="CPU: tiny shapes (set TRITON_INTERPRET=1)")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: v3, passes, profile")
    parser.add_argument("--write-configs", metavar="PATH",
                        help="write the candidates that beat the defaults (by 5 %%) as a kernel-configs file: "
                             "KRONYPT_KERNEL_CONFIGS=PATH makes the kernels use them")
    parser.add_argument("--sass", action="store_true",
                        help="no timing, no GPU: compile every version-3 candidate for sm_90 and print a table")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.sass:
        report = {"sass": []}
        sass_table(report, args.json)
        return report
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("benchmarks/sweep.py needs a CUDA device (use --dry-run on a CPU)")
    device = torch.device("cpu" if args.dry_run else "cuda")
    clock = Clock(device, 1, warmup=1) if args.dry_run else Clock(device, args.reps)  # dry: each one runs
    deadline = START + args.budget
    env = environment(device)
    env.update(triton=_version("triton"), cuda=torch.version.cuda,
               fused_available=fused_available(torch.empty(0, device=device)))
    l2 = 0 if args.dry_run else getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20)
    report: dict = {"environment": env, "v3": [], "passes": None, "profile": []}
    print(f"device: {env['device_name']}  torch {env['torch']}  triton {env['triton']}  "
          f"fused: {env['fused_available']}", flush=True)
    if not env["fused_available"]:
        raise SystemExit("the fused kernels cannot run here (CUDA >= 8.0 and triton, or TRITON_INTERPRET=1)")
    if device.type == "cuda":
        report["ceilings"] = measure_ceilings(device, clock)
        print(f"ceilings: {report['ceilings']}", flush=True)
    skip = set(filter(None, args.skip.split(",")))
    # most informative first: v3 at 65536 tokens, the profile, the passes, then v3's graphed 8192 cases
    v3_cases = DRY_V3_CASES if args.dry_run else V3_CASES
    if "v3" not in skip:
        sweep_v3([c for c in v3_cases if not c[4]], clock, l2, deadline, report, args.json)  # not graphed
    if "profile" not in skip:
        profile_layers(33 if args.dry_run else 16384, clock, deadline, report, args.json, args.dry_run)
    if "passes" not in skip:
        sweep_passes(150 if args.dry_run else 65536, clock, deadline, report, args.json,
                     m1=24 if args.dry_run else 768)
    if "v3" not in skip:
        sweep_v3([c for c in v3_cases if c[4]], clock, l2, deadline, report, args.json)
    report["elapsed_s"] = time.perf_counter() - START
    if args.write_configs:
        from kronypt.kernels import overrides

        chosen, why = tuned_configs(report)
        report["tuned"] = {s: {k: _config_dict(c) for k, c in d.items()} for s, d in chosen.items()}
        overrides.write(args.write_configs, chosen, {"device": env["device_name"], "torch": env["torch"],
                                                      "triton": env["triton"], **why})
        print(f"wrote {args.write_configs}: {report['tuned']}", flush=True)
    write_json(args.json, report)
    print(f"{env['device_name']}: {report['elapsed_s']:.0f} s", flush=True)
    return report


if __name__ == "__main__":
    main()
