"""Fused Kronecker kernels (`kronypt.kernels`) against the float64 dense reference.

On the CPU the kernels run under Triton's interpreter. `TRITON_INTERPRET=1` must be set before the
kernels are first imported, and it would also switch `fused_available` on for CPU tensors in every later
test module, so the interpreter checks run in one subprocess: this file run as a script (`--worker`),
which prints one JSON line per case. The tests assert on those lines.

Reference: `kron_linear_materialised` in float64 on the same (bf16-rounded) inputs, then gelu_new.
Tolerances on ‖got − ref‖ / ‖ref‖ for the output and every gradient: float32 1e-5 (the interpreter
multiplies in fp32, the GPU kernels in IEEE fp32); bfloat16 3e-2 (bf16 operands and outputs; the
interpreter also truncates fp32 → bf16 instead of rounding, about doubling the error seen on a GPU).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from kronypt.errors import KronyptError  # noqa: E402
from kronypt.kernels import fused_available, fused_wins  # noqa: E402
from kronypt.math.decompose import kron_reconstruct  # noqa: E402
from kronypt.math.shapes import KronShape, kron_shape  # noqa: E402
from kronypt.nn.functional import kron_linear_materialised  # noqa: E402
from tests.conftest import benchmark_module  # noqa: E402

TOLERANCE = {"float32": 1e-5, "bfloat16": 3e-2}
REPO = Path(__file__).resolve().parents[1]


def kernel_tools(name: str):
    """A module of benchmarks/kernel_tools (the sweep's candidates, the sm_90 build reports)."""
    return benchmark_module(f"kernel_tools.{name}")


@dataclass(frozen=True)
class Case:
    """One layer call: A (k, m1, n1), B (k, m2, n2), x with `tokens` rows (or `lead` leading dims)."""

    m1: int
    n1: int
    m2: int
    n2: int
    k: int
    tokens: int
    dtype: str
    scalars: bool
    bias: bool
    act: bool
    lead: tuple[int, ...] = ()
    impl: str = "auto"

    @property
    def name(self) -> str:
        flags = "".join(f for f, on in (("s", self.scalars), ("b", self.bias), ("g", self.act)) if on)
        return (f"A{self.m1}x{self.n1}-B{self.m2}x{self.n2}-k{self.k}-T{self.tokens}{self.lead or ''}-"
                f"{self.dtype}-{flags or 'plain'}-{self.impl}")


# B shaped like the real schemes: (4,1) c_fc of 81M, (1,4) its c_proj, (3,3) of 92M-4, (2,2), (1,2) of
# 96M-prune, (12,12) of MF1 and a rectangular large B (both go to the large-B kernel); token counts 1
# (decode), 7, 17, 33, 70; A sizes off the block multiples. Above 16 tokens, one factor with B a column or
# row of 1, 2, 3, 4 or 8 runs the vector-B kernels under impl="auto", anything else the general kernels;
# the "general" cases keep the general kernels covered on the vector-B shapes.
CASES = [
    Case(24, 40, 4, 1, 1, 33, "float32", True, True, True),
    Case(24, 40, 4, 1, 1, 33, "bfloat16", False, True, True),
    Case(40, 24, 1, 4, 1, 7, "float32", True, True, False),
    Case(40, 24, 1, 4, 1, 33, "bfloat16", False, False, False),
    Case(20, 12, 3, 3, 4, 7, "float32", True, False, True),
    Case(20, 12, 3, 3, 4, 33, "bfloat16", True, True, False),
    Case(33, 17, 2, 2, 4, 1, "float32", False, True, False),
    Case(33, 17, 2, 2, 1, 7, "bfloat16", True, False, True),
    Case(16, 24, 1, 2, 1, 1, "float32", False, True, True),
    Case(16, 24, 1, 2, 4, 33, "float32", True, True, False),
    Case(16, 8, 12, 12, 1, 17, "float32", True, True, False),
    Case(16, 8, 12, 12, 4, 7, "bfloat16", False, False, True),
    Case(16, 16, 10, 12, 1, 7, "float32", True, True, False),
    Case(24, 40, 4, 1, 4, 1, "bfloat16", True, True, False),
    Case(24, 40, 4, 1, 1, 10, "float32", False, True, False, lead=(2, 5)),
    Case(24, 40, 3, 1, 2, 70, "float32", True, True, True),
    Case(40, 24, 1, 4, 3, 17, "bfloat16", True, True, True),
    Case(24, 40, 4, 1, 2, 17, "float32", True, True, False),
    # the general kernels forced on vector-B shapes
    Case(24, 40, 4, 1, 1, 33, "float32", True, True, True, impl="general"),
    Case(40, 24, 1, 4, 1, 17, "bfloat16", True, True, False, impl="general"),
    Case(24, 40, 2, 1, 1, 19, "bfloat16", False, True, True, impl="general"),
    # the vector-B kernels: both orientations, m2 = 2 and 1, GELU/bias/scalars on and off; a one-column B
    # of m2 = 3 (86M's c_fc: the gathered epilogue) and 8 (the (.., .., 8) epilogue); m2 = 6, not a
    # vector-B shape (that epilogue would spill), and decode-sized calls run the general kernels
    Case(24, 40, 4, 1, 1, 17, "bfloat16", True, False, False),
    Case(40, 24, 1, 4, 1, 33, "float32", False, False, False),
    Case(24, 40, 2, 1, 1, 19, "float32", True, False, False),
    Case(24, 40, 1, 1, 1, 17, "float32", True, False, False),
    Case(24, 40, 3, 1, 1, 33, "float32", True, True, True),
    Case(24, 40, 3, 1, 1, 19, "bfloat16", False, True, True),
    Case(16, 40, 8, 1, 1, 17, "float32", True, True, False),
    Case(16, 40, 6, 1, 1, 21, "bfloat16", True, False, True),
    Case(40, 24, 1, 3, 1, 9, "bfloat16", True, False, True),
    # a one-row B: grad_x on the vector-B forward kernel (factors Aᵀ, Bᵀ: one column of n2 = 4, 2, 3, 8)
    Case(40, 24, 1, 4, 1, 33, "bfloat16", True, True, False),
    Case(40, 24, 1, 2, 1, 21, "float32", True, True, True),
    Case(40, 24, 1, 3, 1, 19, "bfloat16", True, True, True),
    Case(40, 16, 1, 8, 1, 17, "float32", True, True, False),
]


def _inputs(case: Case, seed: int) -> dict[str, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    dtype = getattr(torch, case.dtype)

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).to(dtype).requires_grad_()

    x_shape = case.lead if case.lead else (case.tokens,)
    return {
        "x": rnd(*x_shape, case.n1 * case.n2),
        "A": rnd(case.k, case.m1, case.n1, scale=case.n1**-0.5),
        "B": rnd(case.k, case.m2, case.n2, scale=case.n2**-0.5),
        "scalars": (torch.rand(case.k, generator=g) + 0.5).requires_grad_() if case.scalars else None,
        "bias": rnd(case.m1 * case.m2) if case.bias else None,
    }


def _reference(inputs: dict, act: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    leaves = {n: t.detach().double().requires_grad_() for n, t in inputs.items() if t is not None}
    y = kron_linear_materialised(leaves["x"], leaves["A"], leaves["B"], leaves.get("scalars"), leaves.get("bias"))
    return (F.gelu(y, approximate="tanh") if act else y), leaves


def _relative(got: torch.Tensor, ref: torch.Tensor) -> float:
    if not torch.isfinite(got).all():
        return float("inf")
    return ((got.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def check_case(case: Case, seed: int = 0) -> dict[str, float]:
    """Relative errors of the fused output and of every gradient (run with the interpreter on)."""
    from kronypt.kernels import kron_linear_fused

    inputs = _inputs(case, seed)
    y = kron_linear_fused(**inputs, activation="gelu_new" if case.act else None, impl=case.impl)
    ref, leaves = _reference(inputs, case.act)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    y.backward(grad.to(y.dtype))
    ref.backward(grad)
    errors = {"y": _relative(y, ref)}
    for name, t in inputs.items():
        if t is not None:
            errors[f"d{name}"] = _relative(t.grad, leaves[name].grad)
    return errors


def check_interfaces() -> dict[str, float]:
    """Custom-operator registration (opcheck), a compiled call, zero tokens, CPU availability."""
    from kronypt.kernels import kron_linear_fused

    case = CASES[0]
    inp = _inputs(case, seed=5)
    args = (inp["x"], inp["A"], inp["B"], inp["scalars"], inp["bias"], 1, True)
    report = torch.library.opcheck(torch.ops.kronypt.kron_linear_forward.default, args)
    compiled = torch.compile(lambda x: kron_linear_fused(x, inp["A"], inp["B"], activation="gelu_new"),
                             backend="aot_eager", fullgraph=True)
    ref, _ = _reference({"x": inp["x"], "A": inp["A"], "B": inp["B"]}, act=True)
    # eager calls with a gradient skip the registered operators (`ops._EagerFused`); compiled ones go
    # through them and their registered backward: both give the same gradients
    grads = {}
    for mode in ("eager", "compiled"):
        leaves = {n: inp[n].detach().clone().requires_grad_() for n in ("x", "A", "B", "scalars", "bias")}
        fn = functools.partial(kron_linear_fused, activation="gelu_new")
        out = (torch.compile(fn, backend="aot_eager", fullgraph=True) if mode == "compiled" else fn)(**leaves)
        out.backward(torch.ones_like(out))
        grads[mode] = {n: t.grad for n, t in leaves.items()}
    compiled_grad_errors = [_relative(grads["compiled"][n], grads["eager"][n].double()) for n in grads["eager"]]
    # fake-tensor tracing outside Dynamo (make_fx) records the operator instead of launching kernels
    from torch.fx.experimental.proxy_tensor import make_fx

    traced = make_fx(lambda x, A, B: kron_linear_fused(x, A, B, activation="gelu_new"), tracing_mode="fake")(
        inp["x"].detach(), inp["A"].detach(), inp["B"].detach())
    traced_ops = {str(node.target) for node in traced.graph.nodes}
    # a second derivative is refused (the kernels have none), not silently wrong
    x_2 = inp["x"].detach().requires_grad_()
    (g_x,) = torch.autograd.grad(kron_linear_fused(x_2, inp["A"], inp["B"]).square().sum(), x_2, create_graph=True)
    try:
        g_x.sum().backward()
        double_backward_refused = 0.0
    except RuntimeError as error:
        double_backward_refused = float("differentiate twice" in str(error) or "once_differentiable" in str(error))
    empty = kron_linear_fused(inp["x"][:0], inp["A"], inp["B"], bias=inp["bias"])
    # training under bf16 autocast: float32 parameters (the bias stays float32), both orientations
    autocast_errors = []
    for proj in (Case(24, 40, 4, 1, 1, 33, "float32", True, True, False),
                 Case(40, 24, 1, 4, 1, 33, "float32", True, True, False)):
        p = _inputs(proj, seed=6)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = kron_linear_fused(**p)
        out.float().sum().backward()
        autocast_errors.append(_relative(out, _reference(p, act=False)[0]))
        autocast_errors += [float(p[n].grad is None or p[n].grad.dtype != torch.float32) for n in p]
    # training on the vector-B kernels with a B of one column keeps P = x·Aᵀ (T, m1), not the pre-activation
    x2 = inp["x"].detach()
    y, saved = torch.ops.kronypt.kron_linear_forward(x2, inp["A"].detach(), inp["B"].detach(), None,
                                                     inp["bias"].detach(), 1, True, "auto")
    p_ref = x2.double() @ inp["A"].detach().double()[0].t()
    saved_errors = [_relative(saved, p_ref) if saved.shape == p_ref.shape else float("inf")]
    # float32 B given as a strided view (every other row / column of a larger tensor), no scalars
    strided_errors = []
    for m1, n1, m2, n2, view in ((24, 40, 4, 1, (slice(None), slice(None, None, 2))),
                                 (40, 24, 1, 4, (slice(None), slice(None), slice(None, None, 2)))):
        big = torch.randn(1, m2 * (2 if n2 == 1 else 1), n2 * (2 if m2 == 1 else 1))
        B_view, A_s = big[view], torch.randn(1, m1, n1) / n1**0.5
        x_s = torch.randn(33, n1 * n2)
        for impl in ("auto", "general"):
            got = kron_linear_fused(x_s, A_s, B_view, impl=impl)
            strided_errors.append(_relative(got, kron_linear_materialised(x_s.double(), A_s.double(),
                                                                          B_view.double())))
    # torch.use_deterministic_algorithms: the fused backward (float atomics) raises, or warns if warn_only
    flags = {}
    for warn_only in (False, True):
        x_d = inp["x"].detach().requires_grad_()
        y_d = kron_linear_fused(x_d, inp["A"].detach(), inp["B"].detach())
        torch.use_deterministic_algorithms(True, warn_only=warn_only)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                y_d.sum().backward()
            flags[warn_only] = float(any("not deterministic" in str(w.message) for w in caught))
        except RuntimeError as error:
            flags[warn_only] = 2.0 * ("not deterministic" in str(error))
        finally:
            torch.use_deterministic_algorithms(False)
    return {
        "strided_b_worst": max(strided_errors),
        "deterministic_raises": flags[False],
        "deterministic_warns": flags[True],
        "saved_p_worst": max(saved_errors),
        "opcheck_failures": float(sum(v != "SUCCESS" for v in report.values())),
        "compiled_error": _relative(compiled(inp["x"]), ref),
        "compiled_grad_worst": max(compiled_grad_errors),
        "make_fx_records_op": float(any("kron_linear_forward" in name for name in traced_ops)),
        "double_backward_refused": double_backward_refused,
        "empty_shape_ok": float(tuple(empty.shape) == (0, case.m1 * case.m2)),
        "cpu_available": float(fused_available(torch.zeros(1))),
        "autocast_worst": max(autocast_errors),
    }


def check_sweeps() -> dict[str, float]:
    """Every block-size candidate of `benchmarks/sweep.py` (the GPU tile sizes, interpreted) against
    the float64 reference: the vector-B forward in all three orientations, and `reduce`."""
    from kronypt.kernels.vector_b_backward import reduce
    from kronypt.kernels.vector_b_forward import tile_config, vector_b_forward

    candidates = kernel_tools("candidates")
    errors = {}
    g = torch.Generator().manual_seed(11)
    for orientation, (m1, n1, m2, n2) in (("column", (160, 96, 4, 1)), ("row", (96, 160, 1, 4)),
                                          ("column3", (160, 96, 3, 1))):
        x = torch.randn(150, n1 * n2, generator=g)
        A, B = torch.randn(1, m1, n1, generator=g) / n1**0.5, torch.randn(1, m2, n2, generator=g)
        bias, s = torch.randn(m1 * m2, generator=g), torch.tensor([1.5])
        ref = F.gelu(kron_linear_materialised(x.double(), A.double(), B.double(), s.double(), bias.double()),
                     approximate="tanh")
        for i, config in enumerate(candidates.FORWARD[orientation]):
            y, _ = vector_b_forward(x, A, B, s, bias, 1, False, config=config)
            errors[f"forward-{orientation}-{i}"] = _relative(y, ref)
        # SPLIT accumulators per program, with small tiles (a partial last group: SPLIT 3 and 4 at m1 = 160,
        # 4 at m1 = 96)
        for split in (2, 3, 4):
            y, _ = vector_b_forward(x, A, B, s, bias, 1, False, config=tile_config(16, 16, 16, 2, 4, 2, split))
            errors[f"forward-{orientation}-split-{split}"] = _relative(y, ref)
    k, m1, m2, T = 2, 80, 4, 150
    p, w = torch.randn(T, k * m1, generator=g), torch.randn(k, m2, generator=g)
    bias, grad = torch.randn(m1 * m2, generator=g), torch.randn(T, m1 * m2, generator=g)
    pre = torch.einsum("tia,ib->tab", p.double().view(T, k, m1), w.double()).reshape(T, -1) + bias.double()
    pre.requires_grad_()
    F.gelu(pre, approximate="tanh").backward(grad.double())
    g_pre = pre.grad.view(T, m1, m2)
    h_ref = torch.einsum("tab,ib->tia", g_pre, w.double()).reshape(T, -1)
    m_ref = torch.einsum("tab,tia->ib", g_pre, p.double().view(T, k, m1))
    for i, config in enumerate(candidates.REDUCE):
        h, m, cols = reduce(grad, p, w, m1, colsum=True, act=1, bias=bias, config=config)
        errors[f"reduce-{i}"] = max(_relative(h, h_ref), _relative(m, m_ref),
                                    _relative(cols, g_pre.reshape(T, -1).sum(0)))
    # k = 1 (every 81M layer): M is summed in its own accumulator (per tile with SUM_EACH), no GELU here
    p1, w1 = p[:, :m1].contiguous(), w[:1]
    g1 = grad.double().view(T, m1, m2)
    h1_ref, m1_ref = torch.einsum("tab,b->ta", g1, w1.double()[0]), torch.einsum("tab,ta->b", g1, p1.double())
    for i, config in enumerate(candidates.REDUCE):
        h, m, cols = reduce(grad, p1, w1, m1, colsum=True, config=config)
        errors[f"reduce-k1-{i}"] = max(_relative(h, h1_ref), _relative(m[0], m1_ref),
                                       _relative(cols, grad.double().sum(0)))
    return errors


def check_layer_activations() -> dict[str, float]:
    """`KroneckerLinear(..., activation=...)` on the fused path against dense F.linear + the activation
    (float32, values and gradients): GPT-2's tanh GELU inside the kernel, other activations after it."""
    import kronypt.nn.kronecker_linear as kl
    from kronypt.nn import KroneckerLinear

    dense = {"gelu_new": functools.partial(F.gelu, approximate="tanh"), "relu": F.relu, "gelu": F.gelu}
    asked: list[str | None] = []
    fused = kl.kron_linear_fused
    kl.kron_linear_fused = lambda *a, **k: asked.append(k.get("activation")) or fused(*a, **k)
    errors = {}
    try:
        for (in_f, out_f, a_shape), impl in (((40, 96, (24, 40)), "auto"), ((96, 40, (40, 24)), "auto"),
                                             ((40, 96, (24, 40)), "general")):
            torch.manual_seed(3)
            layer = KroneckerLinear(in_f, out_f, a_shape, scalars=True)
            torch.nn.init.normal_(layer.bias)
            layer.path, layer.fused_impl = "fused", impl
            for activation, act in dense.items():
                x = torch.randn(2, 17, in_f, requires_grad=True)
                y = layer(x, activation=activation)
                x64 = x.detach().double().requires_grad_()
                params = {n: t.detach().double().requires_grad_() for n, t in layer.named_parameters()}
                W = kron_reconstruct(params["A"], params["B"], params["scalars"])
                ref = act(F.linear(x64, W, params["bias"]))
                grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
                layer.zero_grad()
                y.backward(grad.float())
                ref.backward(grad)
                name = f"{out_f}x{in_f}-{impl}-{activation}"
                errors[name] = max(_relative(y, ref.detach()), _relative(x.grad, x64.grad),
                                   *(_relative(t.grad, params[n].grad) for n, t in layer.named_parameters()))
    finally:
        kl.kron_linear_fused = fused
    # in the kernel for GPT-2's GELU, after it (the kernel asked for none) for the others
    errors["kernel_activations_wrong"] = float(asked != [a if a == "gelu_new" else None for a in dense] * 3)
    return errors


def _worker() -> None:
    for case in CASES:
        try:
            print(json.dumps({"case": case.name, "errors": check_case(case)}), flush=True)
        except Exception:  # report and go on: one failing case must not hide the others
            print(json.dumps({"case": case.name, "failure": traceback.format_exc()}), flush=True)
    for name, check in (("interfaces", check_interfaces), ("sweeps", check_sweeps),
                        ("layer_activations", check_layer_activations)):
        try:
            print(json.dumps({"case": name, "errors": check()}), flush=True)
        except Exception:
            print(json.dumps({"case": name, "failure": traceback.format_exc()}), flush=True)


@pytest.fixture(scope="module")
def interpreted() -> dict[str, dict]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))  # tests.conftest too
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": path}
    # ~80 s alone on a 2-core machine; a loaded one can take several times that. On a timeout the cases
    # already printed still count, and each missing one fails with the reason.
    timeout = 1200
    try:
        proc = subprocess.run([sys.executable, __file__, "--worker"], env=env, cwd=REPO, capture_output=True,
                              text=True, timeout=timeout)
        stdout, stderr, ended = proc.stdout, proc.stderr, f"exit {proc.returncode}"
    except subprocess.TimeoutExpired as e:
        stdout, stderr = (_text(out) for out in (e.stdout, e.stderr))
        ended = f"stopped after {timeout} s"
    results: dict[str, dict] = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            results[row["case"]] = row
    if not results:
        pytest.fail(f"interpreter worker printed nothing ({ended}):\n{stderr[-3000:]}")
    results["_ended"] = {"how": ended}
    return results


def _text(out: bytes | str | None) -> str:
    """A TimeoutExpired's partial output (bytes even with text=True) as text."""
    return out.decode(errors="replace") if isinstance(out, bytes) else (out or "")


def _row(interpreted: dict, name: str) -> dict:
    """The worker's row for one case; a missing one fails with how the worker ended."""
    row = interpreted.get(name)
    assert row is not None, f"case {name} missing from the worker's output ({interpreted['_ended']['how']})"
    assert "failure" not in row, row.get("failure")
    return row


def _assert_within(row: dict, tolerance: float) -> None:
    bad = {name: err for name, err in row["errors"].items() if not err <= tolerance}
    assert not bad, f"relative errors above {tolerance}: {bad}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_values_and_gradients_match_reference(interpreted: dict, case: Case) -> None:
    _assert_within(_row(interpreted, case.name), TOLERANCE[case.dtype])


def test_operator_registration_compile_and_empty_input(interpreted: dict) -> None:
    errors = _row(interpreted, "interfaces")["errors"]
    assert errors["opcheck_failures"] == 0
    assert errors["compiled_error"] <= TOLERANCE["float32"]
    assert errors["compiled_grad_worst"] <= TOLERANCE["float32"]
    assert errors["make_fx_records_op"] == 1.0
    assert errors["double_backward_refused"] == 1.0
    assert errors["empty_shape_ok"] == 1.0
    assert errors["cpu_available"] == 1.0  # the interpreter runs on CPU tensors
    assert errors["autocast_worst"] <= TOLERANCE["bfloat16"]  # bf16 values, float32 gradients everywhere
    assert errors["saved_p_worst"] <= TOLERANCE["float32"]  # training keeps P = x·Aᵀ, not T x 3072 values
    assert errors["strided_b_worst"] <= TOLERANCE["float32"]  # a strided float32 B is read by its strides
    assert errors["deterministic_raises"] == 2.0  # as PyTorch's own non-deterministic kernels do
    assert errors["deterministic_warns"] == 1.0


def test_sweep_candidates_match_reference(interpreted: dict) -> None:
    """Every tile-size candidate the GPU sweep times computes the right values (masks at 150 tokens, A
    blocks wider than m1), so a sweep winner can become the default without a second correctness run."""
    candidates = kernel_tools("candidates")
    row = _row(interpreted, "sweeps")
    _assert_within(row, TOLERANCE["float32"])
    forward = sum(map(len, candidates.FORWARD.values())) + 3 * len(candidates.FORWARD)  # + SPLIT 2, 3, 4
    assert len(row["errors"]) == forward + 2 * len(candidates.REDUCE)  # reduce: k = 2 with GELU, and k = 1


def test_layer_applies_the_activation_in_the_kernel_or_after_it(interpreted: dict) -> None:
    """On the fused path `KroneckerLinear.forward(x, activation)` is dense F.linear + the activation, with
    GPT-2's tanh GELU applied by the kernel and the others by the layer."""
    row = _row(interpreted, "layer_activations")
    assert row["errors"].pop("kernel_activations_wrong") == 0.0
    assert len(row["errors"]) == 9
    _assert_within(row, TOLERANCE["float32"])


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available(),
                    reason="only meaningful on a plain CPU process")
def test_not_available_on_plain_cpu() -> None:
    assert not fused_available(torch.zeros(1))


def test_bad_inputs_raise_kronypt_error() -> None:
    from kronypt.kernels import kron_linear_fused as public
    from kronypt.kernels.ops import kron_linear_fused

    x, A, B = torch.randn(3, 8), torch.randn(1, 4, 4), torch.randn(1, 2, 2)
    with pytest.raises(KronyptError, match="needs a CUDA GPU .* x is on cpu"):  # not Triton's "0 active drivers"
        public(x, A, B)
    with pytest.raises(KronyptError, match="gelu_new"):
        kron_linear_fused(x, A, B, activation="relu")
    with pytest.raises(KronyptError, match="Kronecker layer"):
        kron_linear_fused(torch.randn(3, 9), A, B)
    with pytest.raises(KronyptError, match="share a dtype"):
        kron_linear_fused(x.double(), A, B)
    with pytest.raises(KronyptError, match="share a dtype"):
        kron_linear_fused(x.half(), A.half(), B.half())
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(KronyptError, match="share a dtype"):
        kron_linear_fused(x.double(), A.double(), B.double())  # autocast leaves float64 alone, as elsewhere
    with pytest.raises(KronyptError, match="unknown impl 'v3'; choose one of auto, general"):
        kron_linear_fused(x, A, B, impl="v3")


def test_fused_wins_only_where_measured() -> None:
    tokens = 65536
    # 81M (the vector-B kernels, with GELU fused at the MLP level): faster than materialising in the whole
    # model on an H100 from 1024 tokens per call; decode-sized calls and other k keep the plain paths
    for shape in (kron_shape(3072, 768, (768, 768)), kron_shape(768, 3072, (768, 768))):
        for training in (False, True):
            assert fused_wins(shape, 1, tokens, training)
            assert not fused_wins(shape, 1, 1, training)
        assert not fused_wins(shape, 2, tokens, training=True)
    assert not fused_wins(KronShape(1024, 256, 3, 3), 4, tokens, training=False)
    # 67M c_fc forward at 65536 tokens (the large-B kernel): 1.48x dense, materialised 0.98x
    large_b = kron_shape(3072, 768, (64, 32))
    assert fused_wins(large_b, 1, tokens, training=False)
    assert not fused_wins(large_b, 1, 8192, training=False)
    assert not fused_wins(large_b, 1, tokens, training=True)


def _launched(shape: KronShape, k: int, impl: str, tokens: int = 8192) -> list[str]:
    """The kernels one training call with GELU launches, in order (recorded on meta tensors, not run)."""
    launches = kernel_tools("sass").recorded_launches(shape, k, tokens, True, torch.bfloat16, activation="gelu_new",
                                                      impl=impl)
    return [getattr(kernel, "fn", kernel).__name__ for kernel, _, _ in launches]  # jit or autotuner


def test_auto_runs_the_vector_b_kernels_where_they_apply() -> None:
    """"auto" launches the vector-B forward for 81M (one factor, B one column or row) and its backward:
    `reduce` and cuBLAS GEMMs, and for c_proj's grad_x (a layer with the factors Aᵀ, Bᵀ: B one column) the
    same forward kernel; decode-sized calls, k > 1, other B and impl="general" run the general kernels."""
    c_fc, c_proj = kron_shape(3072, 768, (768, 768)), kron_shape(768, 3072, (768, 768))
    vector_b, general = "_vector_b_forward_kernel", "_forward_kernel"
    assert _launched(c_fc, 1, "auto") == [vector_b, "_reduce_kernel"]
    assert _launched(c_proj, 1, "auto") == [vector_b, "_gelu_backward_kernel", vector_b, "_reduce_kernel"]
    assert _launched(c_fc, 1, "general") == [general, "_gelu_backward_kernel", general, "_grad_a_kernel",
                                             "_grad_m_kernel"]
    for shape in (c_fc, c_proj):
        assert _launched(shape, 1, "auto", tokens=16) == _launched(shape, 1, "general", tokens=16)
        assert _launched(shape, 2, "auto") == _launched(shape, 2, "general")
    assert vector_b not in _launched(kron_shape(3072, 512, (512, 512)), 1, "auto")  # B 6 x 1


def _vector_b_hopper_reports(shape: KronShape) -> list[dict]:
    """sm_90 compile reports of the vector-B forward in training with GELU (its largest epilogue)."""
    sass = kernel_tools("sass")
    launches = sass.recorded_launches(shape, 1, 8192, True, torch.bfloat16, activation="gelu_new")
    return [sass.compile_report(kernel, args, configs[0]) for kernel, configs, args in launches
            if kernel.__name__ == "_vector_b_forward_kernel"]


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="compiles real kernels")
def test_vector_b_forward_compiles_for_hopper_with_large_tiles_and_no_spills() -> None:
    """The default tiles (c_fc 128 x 128 with 16 warps, c_proj 64 x 256) build for sm_90 with wgmma, 16-byte
    copies and stores, and no spills."""
    for shape in (kron_shape(3072, 768, (768, 768)), kron_shape(768, 3072, (768, 768))):
        try:
            rows = _vector_b_hopper_reports(shape)
        except FileNotFoundError as exc:  # a triton build without its bundled CUDA tools
            pytest.skip(str(exc))
        assert len(rows) == (1 if shape.n2 == 1 else 2)  # c_proj: the forward and grad_x
        for row in rows:
            ops = row["instructions"]
            assert row["config"]["BLOCK_T"] * row["config"]["BLOCK_A"] == 128 * 128, row
            assert row["stack_bytes"] == 0, row  # no register spills
            assert any(name.startswith("HGMMA.64x") for name in ops), row  # wgmma
            assert ops.get("LDGSTS.E.BYPASS.128", 0) > 0, row
            assert not any(n.startswith("LDGSTS.E.64") for n in ops), row
            assert ops.get("STG.E.128", 0) > 0 and not any(n.startswith("STG.E.U16") for n in ops), row


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="compiles real kernels")
def test_vector_b_forward_of_86m_c_fc_compiles_with_whole_stores_and_no_spills() -> None:
    """86M's c_fc (B 3 x 1): the three copies are gathered into contiguous columns, so the epilogue still
    stores 16 bytes at a time (a padded (.., .., 4) tile would store 2 bytes at a time), without spills."""
    try:
        rows = _vector_b_hopper_reports(kron_shape(3072, 768, (1024, 768)))
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    assert len(rows) == 1
    ops = rows[0]["instructions"]
    assert rows[0]["stack_bytes"] == 0, rows[0]
    assert ops.get("STG.E.128", 0) > 0 and not any(n.startswith("STG.E.U16") for n in ops), rows[0]


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="compiles real kernels")
def test_three_accumulators_of_c_proj_compile_without_spills() -> None:
    """The first SPLIT = 3 candidate of c_proj (all 768 outputs of 64 tokens in one program: 3 accumulators
    of 64 x 256) builds for sm_90 within the register file: wgmma, 16-byte copies, no spills."""
    sass = kernel_tools("sass")
    config = next(c for c in kernel_tools("candidates").FORWARD["row"] if c.kwargs["SPLIT"] == 3)
    try:
        kernel, _, args = sass.recorded_launches(kron_shape(768, 3072, (768, 768)), 1, 65536, False,
                                                 torch.bfloat16)[0]
        row = sass.compile_report(kernel, args, config)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    ops = row["instructions"]
    assert row["stack_bytes"] == 0, row
    assert sum(n.startswith("HGMMA.64x") for n in ops) >= 1 and ops.get("LDGSTS.E.BYPASS.128", 0) > 0, row


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="compiles real kernels")
def test_vector_b_float32_fits_hopper_shared_memory() -> None:
    """float32 tiles are twice as large: 4 pipeline stages would need 256 KB for c_proj (an H100 block
    gets at most 227 KB), so float32 runs with 2."""
    sass = kernel_tools("sass")
    for shape in (kron_shape(3072, 768, (768, 768)), kron_shape(768, 3072, (768, 768))):
        try:
            launches = sass.recorded_launches(shape, 1, 8192, True, torch.float32)
            rows = [sass.compile_report(kernel, args, configs[0]) for kernel, configs, args in launches
                    if kernel.__name__ == "_vector_b_forward_kernel"]
        except FileNotFoundError as exc:
            pytest.skip(str(exc))
        assert rows
        for row in rows:
            assert row["shared_bytes"] <= 227 * 1024, row
            assert row["stack_bytes"] <= 64, row  # at most a few spilled registers


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="compiles real kernels")
def test_81m_kernels_compile_for_hopper_with_tensor_cores_and_no_spills() -> None:
    """Compile (no GPU needed) what an 81M c_fc call would launch on an H100 and read the machine code: the
    general forward kernel, and the vector-B backward's `reduce` pass with GELU in training."""
    sass = kernel_tools("sass")
    shape = kron_shape(3072, 768, (768, 768))
    try:
        rows = sass.layer_report(shape, k=1, tokens=8192, training=False, impl="general")
    except FileNotFoundError as exc:  # a triton build without its bundled CUDA tools
        pytest.skip(str(exc))
    assert rows
    for row in rows:
        ops = row["instructions"]
        assert row["stack_bytes"] == 0, row  # no register spills
        assert any(name.startswith("HGMMA") for name in ops), row  # Hopper wgmma tensor cores
        assert ops.get("LDGSTS.E.BYPASS.128", 0) > 0, row  # 16-byte asynchronous copies of x and A
    rows = [r for r in sass.layer_report(shape, k=1, tokens=8192, training=True, activation="gelu_new")
            if r["kernel"] == "_reduce_kernel"]
    assert len(rows) == 1
    assert rows[0]["stack_bytes"] == 0, rows[0]
    assert rows[0]["instructions"].get("LDG.E.128", 0) > 0, rows[0]  # 16-byte loads of G and P


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize(("b_shape", "dtype", "impl"), [  # "auto" (the vector-B kernels here) first: a GPU
    ((4, 1), "bfloat16", "auto"), ((1, 4), "bfloat16", "auto"), ((4, 1), "float32", "auto"),  # call's time
    ((1, 4), "float32", "auto"), ((4, 1), "bfloat16", "general"), ((4, 1), "float32", "general"),  # limit may
    ((3, 1), "bfloat16", "auto"),  # 86M's c_fc B: the gathered epilogue                            # cut the rest
])
def test_cuda_81m_shape_matches_reference(b_shape: tuple[int, int], dtype: str, impl: str) -> None:
    from kronypt.kernels import kron_linear_fused

    case = Case(768, 768, *b_shape, 1, 257, dtype, True, True, True, impl=impl)
    inputs = {n: (t.detach().cuda().requires_grad_() if t is not None else None)
              for n, t in _inputs(case, seed=3).items()}
    y = kron_linear_fused(**inputs, activation="gelu_new", impl=impl)
    ref, leaves = _reference({n: (t.cpu() if t is not None else None) for n, t in inputs.items()}, act=True)
    grad = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    y.backward(grad.to(y.device, y.dtype))
    ref.backward(grad)
    tol = {"bfloat16": 1e-2, "float32": 1e-5}[dtype]
    assert _relative(y.cpu(), ref) <= tol
    for name, t in inputs.items():
        if t is None:
            continue
        if name == "scalars":
            # ds = ⟨B, M⟩ (M = dB / s) sums k·m2·n2 terms of either sign that can cancel (on an H100, bf16
            # general kernels, an unseeded gradient gave -6.5 against -3.1 while dB, from the same M, passed):
            # its error is measured against Σ|B ⊙ M|, the sum's own scale, not against the (possibly small) sum.
            M = leaves["B"].grad / leaves["scalars"].detach().view(-1, 1, 1)
            scale = (M * leaves["B"].detach()).abs().sum((1, 2))
            error = ((t.grad.cpu().double() - leaves["scalars"].grad).abs() / scale).max().item()
            assert error <= (3e-2 if dtype == "bfloat16" else tol), (name, error)
        else:
            assert _relative(t.grad.cpu(), leaves[name].grad) <= tol, name


@pytest.mark.cuda
@cuda
def test_cuda_graph_decode_replays_eager_result() -> None:
    from kronypt.kernels import kron_linear_fused

    dev = torch.device("cuda")
    A = torch.randn(1, 768, 768, device=dev, dtype=torch.bfloat16) * 0.03
    B = torch.randn(1, 4, 1, device=dev, dtype=torch.bfloat16)
    bias = torch.randn(3072, device=dev, dtype=torch.bfloat16)
    static_x = torch.randn(1, 768, device=dev, dtype=torch.bfloat16)
    with torch.no_grad():
        kron_linear_fused(static_x, A, B, bias=bias, activation="gelu_new")  # tune and compile first
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_y = kron_linear_fused(static_x, A, B, bias=bias, activation="gelu_new")
        fresh = torch.randn(1, 768, device=dev, dtype=torch.bfloat16)
        static_x.copy_(fresh)
        graph.replay()
        eager = kron_linear_fused(fresh, A, B, bias=bias, activation="gelu_new")
    torch.testing.assert_close(static_y, eager, rtol=0, atol=0)


@pytest.mark.cuda
@cuda
def test_cuda_compiled_training_with_cuda_graphs_matches_eager() -> None:
    """torch.compile with CUDA graphs (mode="reduce-overhead", as `gpu.py --compile-mode` times training)
    captures the registered operators, forward and backward, and replays the eager values and gradients."""
    from kronypt.kernels import kron_linear_fused

    case = Case(768, 768, 4, 1, 1, 512, "bfloat16", True, True, True)
    base = {n: t.detach().cuda() for n, t in _inputs(case, seed=7).items() if t is not None}
    grad = torch.randn(512, 3072, device="cuda", dtype=torch.bfloat16)
    fn = functools.partial(kron_linear_fused, activation="gelu_new")
    compiled = torch.compile(fn, mode="reduce-overhead", fullgraph=True)
    results = {}
    for name, f in (("eager", fn), ("compiled", compiled)):
        leaves = {n: t.clone().requires_grad_() for n, t in base.items()}
        for _ in range(3):  # warm-up, recording, replay
            torch.compiler.cudagraph_mark_step_begin()
            for t in leaves.values():
                t.grad = None
            y = f(**leaves)
            y.backward(grad)
        results[name] = {"y": y.detach().clone(), **{n: t.grad.clone() for n, t in leaves.items()}}
    for key, ref in results["eager"].items():
        assert _relative(results["compiled"][key].cpu(), ref.cpu().double()) <= 1e-2, key


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_cuda_kernels_run_on_the_inputs_device_not_the_current_one() -> None:
    from kronypt.kernels import kron_linear_fused

    case = Case(768, 768, 4, 1, 1, 257, "bfloat16", True, True, True)
    inputs = {n: (t.detach().to("cuda:1").requires_grad_() if t is not None else None)
              for n, t in _inputs(case, seed=4).items()}
    with torch.cuda.device(0):
        y = kron_linear_fused(**inputs, activation="gelu_new")
        y.float().sum().backward()
    ref, _ = _reference({n: (t.cpu() if t is not None else None) for n, t in inputs.items()}, act=True)
    assert y.device == torch.device("cuda:1") and _relative(y.cpu(), ref) <= 1e-2
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in inputs.values() if t is not None)


if __name__ == "__main__" and "--worker" in sys.argv:
    _worker()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_autotune_candidates_fit_shared_memory(dtype: torch.dtype) -> None:
    """The pruned candidates of every general kernel fit Hopper's shared memory (an estimate above the sm_90
    builds: float32 (128, 64, 64)/3 of 81M c_proj builds at 320 KB, grad_x of 81M c_fc (128, 32, 64) at
    304 KB and 92M-4 (128, 16, 64) at 296 KB, over the 227 KB a block may use)."""
    from kronypt.kernels import tuning

    too_big = {("forward", (768, 768, 1, 4), (128, 64, 64)), ("forward", (768, 768, 1, 4), (128, 32, 64)),
               ("forward", (1024, 256, 3, 3), (128, 16, 64))}
    shapes = [(768, 768, 4, 1), (768, 768, 1, 4), (1024, 256, 3, 3), (256, 64, 12, 12), (1536, 384, 2, 2)]
    kernels = (("forward", tuning.FORWARD_CONFIGS, tuning.prune_forward),
               ("large_b", tuning.LARGE_B_CONFIGS, tuning.prune_large_b),
               ("factor_grads", tuning.FACTOR_GRAD_CONFIGS, tuning.prune_factor_grads))
    for kernel, configs, prune in kernels:
        for m1, n1, m2, n2 in shapes:
            for bucket in tuning.TOKEN_BUCKETS:
                args = {"X": torch.empty(1, dtype=dtype), "T_BUCKET": bucket, "M1": m1, "N1": n1, "M2": m2,
                        "N2": n2, "M2P": 1 << (m2 - 1).bit_length(), "N2P": 1 << (n2 - 1).bit_length(), "ACT": 0}
                kept = prune(configs, args)
                assert kept and all(tuning.shared_bytes(kernel, c, args) <= tuning.SHARED_MEMORY_BYTES
                                    or c is tuning.FALLBACK for c in kept)
                blocks = {(c.kwargs["BLOCK_T"], c.kwargs["BLOCK_A"], c.kwargs["BLOCK_C"]) for c in kept
                          if c.num_stages == 3}
                if dtype == torch.float32:
                    assert not {b for k, s, b in too_big if (k, s) == (kernel, (m1, n1, m2, n2))} & blocks
    # bf16 keeps 81M c_proj's largest forward tile (it fits in bf16)
    args = {"X": torch.empty(1, dtype=torch.bfloat16), "T_BUCKET": 65536, "M1": 768, "N1": 768, "M2": 1,
            "N2": 4, "M2P": 1, "N2P": 4, "ACT": 0}
    assert (128, 64, 64) in {(c.kwargs["BLOCK_T"], c.kwargs["BLOCK_A"], c.kwargs["BLOCK_C"])
                             for c in tuning.prune_forward(tuning.FORWARD_CONFIGS, args)}


def test_vector_b_defaults_fitted_to_the_shape_spread_a_s_row_blocks_evenly() -> None:
    """A default tile with several accumulators per program (SPLIT) gets no more than A's row blocks need,
    spread evenly over as many program groups as before (few idle, fully masked accumulators), and stages,
    then the reduction block, shrink until the staged tiles fit the shared memory."""
    from kronypt.kernels.vector_b_forward import fitted, tile_config

    config = tile_config(64, 256, 32, 1, 8, 3, split=3)
    kw = lambda m1, limit=227 << 10: fitted(config, m1, 4, 2, limit).kwargs  # noqa: E731
    assert kw(768)["SPLIT"] == 3 and kw(600)["SPLIT"] == 3 and kw(512)["SPLIT"] == 2 and kw(200)["SPLIT"] == 1
    assert kw(1024)["SPLIT"] == 2 and kw(1280)["SPLIT"] == 3 and kw(2048)["SPLIT"] == 3  # 4 = 2 x 2, 5 = 2 x 3
    # per stage: x 64·32·4 and three A tiles 256·32, bf16 = 64 KB; 3 stages fit 227 KB
    assert fitted(config, 768, 4, 2, 227 << 10).num_stages == 3
    assert fitted(config, 768, 4, 2, 150 << 10).num_stages == 2
    small = fitted(config, 768, 4, 2, 100 << 10)
    assert (small.num_stages, small.kwargs["BLOCK_C"]) == (2, 16)
    assert fitted(config, 256, 4, 2, 100 << 10).kwargs["BLOCK_C"] == 32  # one A tile: 3 stages of 32 KB fit
