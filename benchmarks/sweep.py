"""Block-size sweep and per-kernel profile of the fused kernels on a GPU, in one call (≈ 2 min on an H100).

1. Which block sizes make each vector-B kernel fastest? Every candidate in `kernel_tools.candidates`
   (`FORWARD`: the one-kernel forward, both 81M orientations and 86M's c_fc; `REDUCE`: the backward's
   memory-bound pass) is timed against dense cuBLAS in the same run, with its max relative error against
   a float64 reference and the bytes it must move (`roofline.vector_b_traffic`: HBM and L2), so the winner
   can become the default without another device call; `--write-configs` writes the winners as a
   kernel-configs file (`kronypt.kernels.overrides`).
2. Where does the time of a fused forward + backward go? `torch.profiler` per-kernel GPU times of the
   81M c_fc (+GELU) and c_proj layer calls at 16384 tokens (one GPT-2 training micro-batch of 16 x 1024),
   dense and fused (impl "auto", the vector-B kernels there, and "general").

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
from kernel_tools.candidates import FORWARD, REDUCE  # noqa: E402
from kernel_tools.roofline import vector_b_traffic  # noqa: E402

from kronypt.kernels import fused_available, kron_linear_fused, overrides  # noqa: E402
from kronypt.kernels.overrides import config_dict  # noqa: E402
from kronypt.kernels.vector_b_backward import reduce  # noqa: E402
from kronypt.kernels.vector_b_forward import vector_b_forward  # noqa: E402
from kronypt.math.shapes import kron_shape  # noqa: E402

START = time.perf_counter()

# (label, orientation, layer case, activation, timed inside a CUDA graph, top). The 8192-token cases are
# graphed: their kernels take ~20-60 µs, about the eager launch cost, which would otherwise hide them.
# `top` = N: only the default and the N fastest candidates of the plain 65536-token case of the same
# orientation (each candidate is a separate compile: this keeps the whole sweep inside one device call).
FORWARD_CASES = [
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
DRY_FORWARD_CASES = [
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
    first = next((row for row in report["forward"] if row.get("orientation") == orientation and "configs" in row
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


def sweep_forward(cases: list, clock: Clock, l2: int, deadline: float, report: dict, path: str | None) -> None:
    """Every `FORWARD` candidate on every case, against dense in the same run."""
    for label, orientation, case, act, graph, top in cases:
        if time.perf_counter() > deadline:
            report["forward"].append({"case": label, "tokens": case.tokens, "skipped": "time budget"})
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
        for config in _candidates(FORWARD[orientation], orientation, top, report):
            cfg = {"config": _config_dict(config)}
            k = config.kwargs
            traffic = vector_b_traffic(shape, case.tokens, k["BLOCK_T"], k["BLOCK_A"], split=k["SPLIT"])
            cfg.update(hbm_mb=traffic["hbm"] / 1e6, l2_mb=traffic["l2"] / 1e6)
            try:
                def run(s, config=config, code=code):
                    return vector_b_forward(s.x, s.A, s.B, None, s.bias, code, False, config=config)[0]

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
        report["forward"].append(row)
        best = row.get("best", {})
        print(f"[{time.perf_counter() - START:6.1f}s] forward {label} T={case.tokens}: dense {dense_ms:.4f} ms, best "
              f"{best.get('ms', float('nan')):.4f} ms = {best.get('speedup', float('nan')):.2f}x "
              f"{best.get('config')}", flush=True)
        write_json(path, report, quiet=True)
        del sets
        _free(clock.device)


def sweep_reduce(tokens: int, clock: Clock, deadline: float, report: dict, path: str | None,
                 m1: int = 768, m2: int = 4) -> None:
    """The vector-B backward's memory-bound pass, `reduce` (G, P → H, M, Σ_t G with GELU's backward): each
    `REDUCE` candidate's time and the bandwidth it reaches, against a plain copy of G."""
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
           "copy_tb_per_s": 2 * nbytes * tokens * m1 * m2 / (copy_ms / 1e3) / 1e12, "configs": []}
    moved = nbytes * tokens * (m1 * m2 + 2 * m1)

    def call(s, config):
        return reduce(s.g, s.p, w, m1, True, act=1, bias=bias, config=config)

    with torch.no_grad():  # each candidate's outputs against the default's on the first operand set
        reference = call(sets[0], REDUCE[0])
    for config in REDUCE:
        if time.perf_counter() > deadline:
            out["configs"].append({"config": _config_dict(config), "skipped": "time budget"})
            continue
        row = {"config": _config_dict(config)}
        try:
            row["ms"] = clock.median_ms(lambda s, c=config: call(s, c), sets)
            row["tb_per_s"] = moved / (row["ms"] / 1e3) / 1e12
            with torch.no_grad():
                row["max_rel_diff"] = _max_rel_diff(call(sets[0], config), reference)
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
        out["configs"].append(row)
    timed = [r for r in out["configs"] if "ms" in r]
    if timed:
        out["best"] = b = min(timed, key=lambda r: r["ms"])
        print(f"[{time.perf_counter() - START:6.1f}s] reduce T={tokens}: default {timed[0]['ms']:.4f} ms "
              f"({timed[0]['tb_per_s']:.2f} TB/s), best {b['ms']:.4f} ms ({b['tb_per_s']:.2f} TB/s) "
              f"{b['config']}; copy {out['copy_tb_per_s']:.2f} TB/s", flush=True)
    report["reduce"] = out
    write_json(path, report, quiet=True)
    del sets
    _free(dev)


def sass_table(report: dict, path: str | None) -> None:
    """No GPU needed: compile every `FORWARD` candidate for sm_90 (81M and 86M shapes, bf16) and print
    registers, spills, shared memory and the resident blocks per SM they allow."""
    from kernel_tools import sass

    from kronypt.math.shapes import KronShape

    print("| kernel | variant | tile TxAxC | warps | stages | SPLIT | regs | stack | smem KB | blocks/SM |")
    for orientation, shape in (("column", KronShape(768, 768, 4, 1)), ("row", KronShape(768, 768, 1, 4)),
                               ("column3", KronShape(1024, 768, 3, 1))):
        variants = [("plain", None, False)]
        variants += [("GELU + training", "gelu_new", True)] if orientation != "row" else []
        for label, act, training in variants:
            launches = sass.recorded_launches(shape, 1, 65536, training, torch.bfloat16, activation=act)
            kernel, _, args = launches[0]
            for config in FORWARD[orientation]:
                r = sass.compile_report(kernel, args, config)
                warps, k = config.num_warps, config.kwargs
                regs = -(-r["registers"] // 8) * 8 * 32 * warps
                blocks = min(65536 // regs, (228 << 10) // (r["shared_bytes"] + 1024), 64 // warps)
                report["sass"].append({"orientation": orientation, "variant": label, **r, "blocks_per_sm": blocks})
                print(f"| {orientation} | {label} | {k['BLOCK_T']}x{k['BLOCK_A']}x{k['BLOCK_C']} | {warps} | "
                      f"{config.num_stages} | {k['SPLIT']} | {r['registers']} | {r['stack_bytes']} | "
                      f"{r['shared_bytes'] >> 10} | {blocks} |", flush=True)
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
            for impl in ("auto", "general"):
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
# (the forward, bf16) or of the default's outputs (`reduce`), and no error.
MARGIN = 1.05
MAX_ERROR = 1e-2


def _checked(row: dict, key: str) -> bool:
    return "ms" in row and "error" not in row and row.get(key, float("inf")) <= MAX_ERROR


def tuned_configs(report: dict) -> tuple[dict, dict]:
    """({"vector_b_forward": {orientation: config}, "vector_b_backward": {"reduce": config}}, why): the
    candidates that beat the built-in defaults by `MARGIN` in this report, by the sections of a
    kernel-configs file. The forward: the best geometric mean of default time / candidate time over every
    case of the orientation, among candidates timed in all of them (the plain and GELU 65536-token cases
    and the graphed 8192-token one); `reduce`: its single case. Only candidates whose outputs passed their
    check (`MAX_ERROR`) count."""
    forward, backward = overrides.SECTIONS
    chosen: dict = {forward: {}, backward: {}}
    why: dict = {"rule": f"a candidate replaces the default when it is >= {MARGIN}x as fast", forward: {},
                 backward: {}}
    for orientation, candidates in FORWARD.items():
        rows = [r for r in report.get("forward", []) if r.get("orientation") == orientation and r.get("configs")]
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
        why[forward][orientation] = {"cases": len(rows), "best": _config_dict(candidates[best])
                                     if best is not None else None, "speedup_over_default": scores.get(best)}
        if best is not None and best != 0 and scores[best] >= MARGIN:
            chosen[forward][orientation] = candidates[best]
    rows = (report.get("reduce") or {}).get("configs") or []
    times = {i: r["ms"] for i, r in enumerate(rows) if _checked(r, "max_rel_diff")}
    if 0 in times and len(rows) == len(REDUCE):
        best = min(times, key=times.get)
        why[backward]["reduce"] = {"best": _config_dict(REDUCE[best]), "speedup_over_default": times[0] / times[best]}
        if best != 0 and times[0] / times[best] >= MARGIN:
            chosen[backward]["reduce"] = REDUCE[best]
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
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: forward, reduce, profile")
    parser.add_argument("--write-configs", metavar="PATH",
                        help="write the candidates that beat the defaults (by 5 %%) as a kernel-configs file: "
                             "KRONYPT_KERNEL_CONFIGS=PATH makes the kernels use them")
    parser.add_argument("--sass", action="store_true",
                        help="no timing, no GPU: compile every forward candidate for sm_90 and print a table")
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
    report: dict = {"environment": env, "forward": [], "reduce": None, "profile": []}
    print(f"device: {env['device_name']}  torch {env['torch']}  triton {env['triton']}  "
          f"fused: {env['fused_available']}", flush=True)
    if not env["fused_available"]:
        raise SystemExit("the fused kernels cannot run here (CUDA >= 8.0 and triton, or TRITON_INTERPRET=1)")
    if device.type == "cuda":
        report["ceilings"] = measure_ceilings(device, clock)
        print(f"ceilings: {report['ceilings']}", flush=True)
    skip = set(filter(None, args.skip.split(",")))
    # most informative first: the forward at 65536 tokens, the profile, `reduce`, then the graphed 8192 cases
    forward_cases = DRY_FORWARD_CASES if args.dry_run else FORWARD_CASES
    if "forward" not in skip:
        sweep_forward([c for c in forward_cases if not c[4]], clock, l2, deadline, report, args.json)  # not graphed
    if "profile" not in skip:
        profile_layers(33 if args.dry_run else 16384, clock, deadline, report, args.json, args.dry_run)
    if "reduce" not in skip:
        sweep_reduce(150 if args.dry_run else 65536, clock, deadline, report, args.json,
                     m1=24 if args.dry_run else 768)
    if "forward" not in skip:
        sweep_forward([c for c in forward_cases if c[4]], clock, l2, deadline, report, args.json)
    report["elapsed_s"] = time.perf_counter() - START
    if args.write_configs:
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
