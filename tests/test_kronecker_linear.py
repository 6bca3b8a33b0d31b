import copy
import os
import pickle
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from kronypt.errors import KronyptError
from kronypt.math.decompose import kron_reconstruct
from kronypt.nn import KroneckerLinear
from kronypt.nn.cost import choose_path

PATHS = ["factored_a_first", "factored_b_first", "materialised", "auto", "factored"]
# (in, out, A shape): the 81M structure (B 4x1), c_proj's (1x4), 3x3 blocks, and a balanced split.
SHAPES = [(16, 64, (16, 16)), (64, 16, (16, 16)), (24, 36, (12, 8)), (32, 48, (8, 4))]


def make_layer(in_f, out_f, a_shape, k, scalars, bias, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    layer = KroneckerLinear(in_f, out_f, a_shape, k, scalars=scalars, bias=bias, dtype=dtype)
    with torch.no_grad():  # non-trivial scalars and bias so that their gradients matter
        if scalars:
            layer.scalars.copy_(torch.linspace(0.5, 2.0, k))
        if bias:
            layer.bias.normal_()
    return layer


def reference(layer, x):
    """float64 dense F.linear on the reconstructed weight, with gradients for every input."""
    leaves = {n: p.detach().double().requires_grad_() for n, p in layer.named_parameters()}
    x64 = x.detach().double().requires_grad_()
    W = kron_reconstruct(leaves["A"], leaves["B"], leaves.get("scalars"))
    y = F.linear(x64, W, leaves.get("bias"))
    return y, x64, leaves


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k,scalars,bias", [(1, False, True), (1, True, False), (3, True, True), (2, False, False)])
def test_every_path_matches_dense_values_and_gradients_float32(path, shape, k, scalars, bias):
    in_f, out_f, a_shape = shape
    layer = make_layer(in_f, out_f, a_shape, k, scalars, bias)
    layer.path = path
    x = torch.randn(3, 5, in_f, requires_grad=True)
    y = layer(x)
    y_ref, x64, leaves = reference(layer, x)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(y_ref)
    y.backward(grad.float())
    y_ref.backward(grad)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-5)
    for name, p in layer.named_parameters():
        torch.testing.assert_close(p.grad.double(), leaves[name].grad, rtol=1e-4, atol=1e-5)


# The activations `forward` takes, as plain PyTorch computes them (GPT-2's "gelu_new" is the tanh GELU).
DENSE_ACTIVATIONS = {"gelu_new": lambda y: F.gelu(y, approximate="tanh"),
                     "gelu_pytorch_tanh": lambda y: F.gelu(y, approximate="tanh"),
                     "gelu": F.gelu, "relu": F.relu, "silu": F.silu}


@pytest.mark.parametrize("activation", sorted(DENSE_ACTIVATIONS))
@pytest.mark.parametrize("path", ["factored_a_first", "factored_b_first", "materialised", "auto"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_activation_is_applied_after_the_product_on_every_path(activation, path, dtype, tol):
    """forward(x, activation) is activation(F.linear(x, W, b)) in values and gradients, whatever the path
    (the fused path, where the kernel applies GPT-2's GELU, is checked under the interpreter in
    tests/test_kernels.py)."""
    layer = make_layer(16, 64, (16, 16), 2, True, True, dtype=dtype)
    layer.path = path
    x = torch.randn(3, 5, 16, dtype=dtype, requires_grad=True)
    y = layer(x, activation=activation)
    y_lin, x64, leaves = reference(layer, x)
    y_ref = DENSE_ACTIVATIONS[activation](y_lin)
    torch.testing.assert_close(y.double(), y_ref, rtol=tol, atol=tol)
    grad = torch.randn_like(y_ref)
    y.backward(grad.to(dtype))
    y_ref.backward(grad)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(layer.A.grad.double(), leaves["A"].grad, rtol=10 * tol, atol=tol)


def test_unknown_activation_is_refused_with_the_choices():
    layer = make_layer(16, 64, (16, 16), 1, False, True)
    with pytest.raises(KronyptError, match="unknown activation 'tanh'; choose None or one of gelu_new"):
        layer(torch.randn(2, 16), activation="tanh")


@pytest.mark.parametrize("path", ["factored_a_first", "factored_b_first", "materialised"])
def test_bfloat16_paths_match_within_bf16_tolerance(path):
    layer = make_layer(32, 48, (8, 4), 2, True, True, dtype=torch.bfloat16)
    layer.path = path
    x = torch.randn(7, 32, dtype=torch.bfloat16, requires_grad=True)
    y = layer(x)
    y_ref, x64, leaves = reference(layer, x)
    # bf16 keeps 8 bits of mantissa: compare relative to the output's scale.
    assert (y.double() - y_ref).norm() / y_ref.norm() < 2e-2
    grad = torch.randn(y.shape, dtype=torch.bfloat16)  # not all ones: the bias gradient is then not a constant
    y.backward(grad)
    y_ref.backward(grad.double())
    assert (x.grad.double() - x64.grad).norm() / x64.grad.norm() < 2e-2
    params = dict(layer.named_parameters())
    assert set(params) == {"A", "B", "scalars", "bias"}
    for name in ("A", "B", "bias"):  # relative to the gradient's own scale, as for x
        assert params[name].grad is not None and params[name].grad.dtype == torch.bfloat16, name
        error = (params[name].grad.double() - leaves[name].grad).norm() / leaves[name].grad.norm()
        assert error < 2e-2, (name, error.item())
    # d/ds_i is one sum over all 7 x 48 outputs of g * ((A_i ⊗ B_i) x) whose signed terms largely cancel (the sum is
    # ~10% of the sum of their sizes here), so bound its error by one bf16 unit (2^-8) of the sum of |terms|.
    A, B, x_ref = leaves["A"].detach(), leaves["B"].detach(), x64.detach()
    sizes = torch.stack([(grad.double() * (x_ref @ torch.kron(A[i], B[i]).T)).abs().sum() for i in range(2)])
    error = (params["scalars"].grad.double() - leaves["scalars"].grad).abs()
    assert params["scalars"].grad.dtype == torch.bfloat16 and (error <= 2**-8 * sizes).all(), (error, sizes)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from([(12, 18), (18, 12), (16, 16)]), st.integers(1, 9), st.data())
def test_factored_shape_property(dims, tokens, data):
    out_f, in_f = dims
    m1 = data.draw(st.sampled_from([d for d in range(1, out_f + 1) if out_f % d == 0]))
    n1 = data.draw(st.sampled_from([d for d in range(1, in_f + 1) if in_f % d == 0]))
    terms = min(m1 * n1, (out_f // m1) * (in_f // n1))  # more factors than that are refused
    k = data.draw(st.integers(1, min(3, terms)))
    layer = make_layer(in_f, out_f, (m1, n1), k, False, True)
    x = torch.randn(tokens, in_f)
    expected = F.linear(x.double(), layer.dense_weight().double(), layer.bias.double())
    for path in ("factored_a_first", "factored_b_first"):
        layer.path = path
        y = layer(x)
        assert y.shape == (tokens, out_f)
        torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)


def test_from_dense_with_all_terms_reproduces_the_weight():
    W, b = torch.randn(12, 8), torch.randn(12)
    layer, dec = KroneckerLinear.from_dense(W, b, (4, 4), factors=6)  # blocks are 3x2: 6 terms are exact
    assert dec.rel_error < 1e-6
    x = torch.randn(5, 8)
    torch.testing.assert_close(layer(x), F.linear(x, W, b), rtol=1e-5, atol=1e-5)


def test_freeze_scalars():
    layer = make_layer(16, 64, (16, 16), 2, True, True)
    weight = layer.dense_weight()
    layer.freeze_scalars(4.0)
    assert not layer.scalars.requires_grad and torch.equal(layer.scalars, torch.full((2,), 4.0))
    # the factors absorb the change: freezing at the paper's value does not multiply the output by 4
    torch.testing.assert_close(layer.dense_weight(), weight, rtol=1e-6, atol=1e-7)
    with pytest.raises(KronyptError, match="non-zero"):
        layer.freeze_scalars(0.0)
    bf16 = make_layer(16, 64, (16, 16), 2, True, True, dtype=torch.bfloat16)
    bf16.freeze_scalars(3.7)  # not a bfloat16 number
    A = bf16.A.clone()
    bf16.freeze_scalars(3.7)  # as a resumed run applies it again: nothing moves
    assert torch.equal(bf16.A, A)
    no_scalars = make_layer(16, 64, (16, 16), 1, False, True)
    with pytest.raises(KronyptError, match="no learnable scalars"):
        no_scalars.freeze_scalars()


def test_bad_arguments():
    with pytest.raises(KronyptError, match="unknown path"):
        make_layer(16, 64, (16, 16), 1, False, True).path = "dense"
    with pytest.raises(KronyptError, match="does not divide"):
        KroneckerLinear(16, 64, (5, 16))
    with pytest.raises(KronyptError, match="unknown init"):
        KroneckerLinear.from_dense(torch.randn(8, 8), None, (4, 4), init="svd")
    with pytest.raises(KronyptError, match="pair of integers"):
        KroneckerLinear(64, 256, (64, 32, 1))
    with pytest.raises(KronyptError, match="must be an integer"):
        KroneckerLinear(64, 256, (64, 32), 2.0)
    with pytest.raises(KronyptError, match="exceed the 8 independent terms"):  # B is 4 x 2: 8 terms at most
        KroneckerLinear(64, 256, (64, 32), 9)
    with pytest.raises(KronyptError, match=r"must have shape \(256,\), got \(64,\)"):
        KroneckerLinear.from_dense(torch.randn(256, 64), torch.randn(64), (64, 32))
    layer = KroneckerLinear(64, 256, (64, 32), 2)
    with pytest.raises(KronyptError, match=r"KroneckerLinear\(64 -> 256\) .* last dimension is 63"):
        layer(torch.randn(3, 63))


def test_dense_weight_is_rounded_once_in_low_precision():
    """bfloat16/float16 dense_weight (what export --dense and to_dense write) is the float64 sum rounded once:
    summing k rounded terms with the scalars folded into A first differed in a third of the entries."""
    for dtype in (torch.bfloat16, torch.float16):
        layer = make_layer(64, 256, (16, 16), 4, True, True)
        exact = kron_reconstruct(layer.A.double(), layer.B.double(), layer.scalars.double())
        layer.to(dtype)
        wide = kron_reconstruct(layer.A.double(), layer.B.double(), layer.scalars.double())  # rounded factors
        assert layer.dense_weight().dtype == dtype
        assert torch.equal(layer.dense_weight(), wide.to(dtype))
        assert (layer.dense_weight().double() - exact).norm() / exact.norm() < 2 ** -7


def test_cost_model_choices():
    from kronypt.math.shapes import kron_shape

    s81 = kron_shape(3072, 768, (768, 768))
    assert choose_path(s81, 1, 1024, training=False) == "factored_a_first"
    assert choose_path(s81, 1, 1024, training=True) == "factored_a_first"
    s4 = kron_shape(3072, 768, (1024, 256))  # 92M-4: factored costs 1.34x dense per token
    assert choose_path(s4, 4, 1, training=False).startswith("factored")
    assert choose_path(s4, 4, 8192, training=False) == "materialised"
    c_proj = kron_shape(3072, 768, (768, 768)).transposed()  # A (768, 768), B (1, 4) on (768, 3072)
    assert choose_path(kron_shape(768, 3072, (768, 768)), 1, 64, training=False).startswith("factored")
    assert (c_proj.a_shape, c_proj.b_shape, c_proj.out_features, c_proj.in_features) == ((768, 768), (1, 4), 768, 3072)


@pytest.mark.parametrize("out_f,in_f,a_shape", [(48, 32, (8, 4)), (3072, 768, (768, 768)), (36, 24, (12, 8))])
def test_transposed_shape_factors_the_transposed_matrix(out_f, in_f, a_shape):
    """(A ⊗ B)ᵀ = Aᵀ ⊗ Bᵀ checked on real matrices: `transposed()` must name the shapes of Aᵀ and Bᵀ (A and B
    are non-square here, square A with a (4, 1) B for the 81M c_fc), not those of A and B."""
    from kronypt.math.shapes import kron_shape

    shape = kron_shape(out_f, in_f, a_shape)
    A, B = torch.randn(shape.a_shape, dtype=torch.float64), torch.randn(shape.b_shape, dtype=torch.float64)
    t = shape.transposed()
    assert (t.a_shape, t.b_shape) == (tuple(A.T.shape), tuple(B.T.shape))
    assert (t.out_features, t.in_features) == (in_f, out_f)
    if out_f <= 64:  # the dense identity itself, where it is small
        torch.testing.assert_close(torch.kron(A, B).T, torch.kron(A.T, B.T), rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_works_under_torch_compile(backend):
    """The compiled layer's output and every gradient (x, A, B, scalars, bias) match an eager copy's, to float32
    rounding (rtol 1e-5, atol 1e-5: the compiled graph may fuse or reorder the same float32 sums)."""
    layer = make_layer(32, 48, (8, 4), 2, True, True)
    eager = copy.deepcopy(layer)
    compiled = torch.compile(layer, backend=backend, fullgraph=True)
    x = torch.randn(4, 6, 32, requires_grad=True)
    x_eager = x.detach().clone().requires_grad_()
    y, y_eager = compiled(x), eager(x_eager)
    torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(y)  # a non-uniform upstream gradient, so that no term can hide behind a plain sum
    y.backward(grad)
    y_eager.backward(grad)
    torch.testing.assert_close(x.grad, x_eager.grad, rtol=1e-5, atol=1e-5)
    params = dict(layer.named_parameters())
    assert set(params) == {"A", "B", "scalars", "bias"}
    for name, p in eager.named_parameters():
        assert params[name].grad is not None, name
        torch.testing.assert_close(params[name].grad, p.grad, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("path", ["factored_a_first", "factored_b_first", "materialised"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k,scalars", [(1, True), (2, True), (1, False)])
def test_every_path_gives_the_autocast_dtype(path, shape, k, scalars):
    """Under bfloat16 autocast every path returns bfloat16, as nn.Linear does (the factored paths returned
    float32 when a float32 B, scalar or bias entered an elementwise product, so "auto" changed the output dtype
    with the token count), within bfloat16 rounding of the float64 reference; parameter gradients stay float32."""
    in_f, out_f, a_shape = shape
    layer = make_layer(in_f, out_f, a_shape, k, scalars, True)
    layer.path = path
    x = torch.randn(5, in_f)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    expected, _, _ = reference(layer, x)
    assert (y.double() - expected).norm() / expected.norm() < 2e-2
    y.float().square().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in layer.parameters())


@pytest.mark.parametrize("path", ["factored_a_first", "factored_b_first"])
def test_autocast_leaves_a_float64_layer_alone(path):
    """Autocast does not touch float64: neither may the factored paths (they cast B to bfloat16: an error, or
    B silently rounded)."""
    layer = make_layer(64, 256, (16, 16), 2, True, True, dtype=torch.float64)
    layer.path = path
    x = torch.randn(5, 64, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    expected, _, _ = reference(layer, x)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)


def test_numpy_integers_are_factor_counts():
    import numpy as np

    assert KroneckerLinear(64, 256, (16, 16), np.int64(2)).factors == 2


def test_auto_path_compiles_in_one_graph_with_dynamic_shapes():
    """With dynamic shapes the token count is symbolic: the automatic path's cost comparison must trace (it
    was a graph break, an error under fullgraph=True), and choose per length as eager does: 92M-4's shape
    goes factored at 3 tokens and materialised at 1024 on this CPU cost model."""
    torch._dynamo.reset()
    layer = make_layer(768, 3072, (1024, 256), 4, True, True).eval()
    compiled = torch.compile(layer, backend="eager", fullgraph=True, dynamic=True)
    paths = []
    with torch.no_grad():
        for tokens in (3, 1024, 17):
            x = torch.randn(tokens, 768)
            paths.append(layer.path_for(x))
            torch.testing.assert_close(compiled(x), layer(x), rtol=1e-5, atol=1e-5)
    assert paths[0].startswith("factored") and paths[1] == "materialised", paths


def test_tensor_core_choice_materialises_beyond_decode():
    from kronypt.math.shapes import kron_shape

    s81 = kron_shape(3072, 768, (768, 768))
    assert choose_path(s81, 1, 8192, training=True, tensor_cores=True) == "materialised"
    assert choose_path(s81, 1, 1, training=False, tensor_cores=True) == "factored_a_first"
    layer = make_layer(16, 64, (16, 16), 1, False, True)
    assert layer.resolved_path(1024, False, tensor_cores=True) == "materialised"
    assert layer.resolved_path(1024, False) == choose_path(layer.shape, 1, 1024, False)


def test_fused_path_without_a_gpu_is_a_clear_error_and_auto_never_picks_it_on_cpu():
    layer = make_layer(16, 64, (16, 16), 1, False, True)
    x = torch.randn(3, 16)
    assert layer(x).shape == (3, 64)  # auto on CPU: a plain PyTorch path
    layer.path = "fused"
    with pytest.raises(KronyptError, match="needs a CUDA GPU"):
        layer(x)


def test_fused_dtype_is_what_the_kernels_compute_in():
    from kronypt.kernels import fused_dtype

    x, A, B = torch.randn(3, 8), torch.randn(1, 4, 4), torch.randn(1, 2, 2)
    assert fused_dtype(x, A, B) == torch.float32
    assert fused_dtype(x.bfloat16(), A.bfloat16(), B.bfloat16()) == torch.bfloat16
    assert fused_dtype(x.half(), A.half(), B.half()) is None  # the kernels take float32 or bfloat16 only
    assert fused_dtype(x.double(), A.double(), B.double()) is None
    assert fused_dtype(x.bfloat16(), A, B) is None  # mixed, no autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused_dtype(x, A, B) == torch.bfloat16
        assert fused_dtype(x.double(), A, B) is None  # autocast leaves float64 alone
    with torch.autocast("cpu", dtype=torch.float16):
        assert fused_dtype(x, A, B) is None


class _LooksCuda(torch.Tensor):
    """A CPU tensor that says it is on CUDA: exercises the layer's CUDA dispatch without a GPU."""

    @property
    def is_cuda(self) -> bool:
        return True


def test_auto_path_takes_the_fused_kernels_only_in_their_measured_dtype(monkeypatch):
    import kronypt.nn.kronecker_linear as kl

    monkeypatch.setattr(kl, "fused_available", lambda x: True)  # as on a GPU with triton
    layer = KroneckerLinear(768, 3072, (768, 768))  # 81M c_fc: measured to win from 1024 tokens
    x = torch.randn(1024, 768)

    def auto_path(dtype, autocast=None):
        layer.to(dtype)
        with torch.no_grad(), torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
            return layer.path_for(x.to(dtype).as_subclass(_LooksCuda))

    assert auto_path(torch.bfloat16) == "fused"
    assert auto_path(torch.float32, autocast=torch.bfloat16) == "fused"
    # float16 and float64 would be refused by the kernels, float32 was never measured: PyTorch paths
    assert auto_path(torch.float16) != "fused"
    assert auto_path(torch.float32, autocast=torch.float16) != "fused"
    assert auto_path(torch.float64) != "fused"
    assert auto_path(torch.float32) != "fused"


def test_auto_path_counts_a_call_as_training_when_any_parameter_trains(monkeypatch):
    layer = KroneckerLinear(768, 3072, (768, 768), bias=True)
    seen = []
    monkeypatch.setattr(layer, "resolved_path", lambda tokens, training, *a: seen.append(training) or "materialised")
    x = torch.randn(4, 768)
    layer.A.requires_grad_(False)
    for name in ("B", "bias"):
        for p in layer.parameters():
            p.requires_grad_(False)
        getattr(layer, name).requires_grad_(True)
        layer.path_for(x)
    layer.B.requires_grad_(False)
    layer.bias.requires_grad_(False)
    layer.path_for(x)
    assert seen == [True, True, False]


def test_a_triton_that_does_not_import_counts_as_absent(tmp_path):
    """An installed but broken triton must leave the PyTorch paths working and the fused one refused in one
    line, not fail inside Triton on the first call."""
    stub = tmp_path / "triton"
    stub.mkdir()
    (stub / "__init__.py").write_text("raise ImportError('this triton is broken')\n")
    script = (
        "import torch\n"
        "from kronypt.errors import KronyptError\n"
        "from kronypt.kernels import fused_available, kron_linear_fused, triton_available\n"
        "from kronypt.nn import KroneckerLinear\n"
        "assert not triton_available()\n"
        "x = torch.randn(5, 16)\n"
        "assert not fused_available(x)\n"
        "layer = KroneckerLinear(16, 64, (16, 16), bias=True)\n"
        "assert layer(x).shape == (5, 64)\n"
        "layer.path = 'fused'\n"
        "try:\n"
        "    layer(x)\n"
        "except KronyptError as e:\n"
        "    print('refused:', e)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "TRITON_INTERPRET": "1"}  # the interpreter would make CPU tensors eligible, were triton importable
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "refused: the fused path needs a CUDA GPU" in proc.stdout
    assert "triton does not import" in proc.stdout


def test_fused_impl_is_checked_when_set():
    layer = KroneckerLinear(8, 16, (4, 4))
    assert layer.fused_impl == "auto"
    layer.fused_impl = "general"
    assert layer.fused_impl == "general"
    with pytest.raises(KronyptError, match="unknown fused implementation 'v3'; choose one of auto, general"):
        layer.fused_impl = "v3"


class _RecordOps(TorchDispatchMode):
    """The aten operators a call runs, views left out: each is a kernel launch on a GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.kernels: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not func.is_view and name != "_unsafe_view":
            self.kernels.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("shape", [(16, 64, (16, 16)), (64, 16, (16, 16))])  # B a column (c_fc), a row (c_proj)
@pytest.mark.parametrize("scalars", [False, True])
def test_single_term_vector_b_decode_is_two_kernels(shape, scalars):
    # Eager decoding pays per launched operator: the 81M-like shapes run one GEMM against A and one
    # fused broadcast (plus scaling the vector B when there are scalars), as a dense layer runs one GEMM.
    in_f, out_f, a_shape = shape
    layer = make_layer(in_f, out_f, a_shape, 1, scalars, True)
    x = torch.randn(1, 1, in_f)
    with torch.no_grad(), _RecordOps() as record:
        y = layer(x)
    assert layer.path_for(x).startswith("factored")
    assert len(record.kernels) == 2 + scalars, record.kernels
    torch.testing.assert_close(y.double(), reference(layer, x)[0], rtol=1e-5, atol=1e-5)


def test_resolved_paths_are_remembered_per_setting():
    layer = make_layer(16, 64, (16, 16), 1, False, True)
    x = torch.randn(4, 16)
    assert layer.path_for(x) == "factored_a_first"
    layer.path = "materialised"  # the setting is part of what is remembered
    assert layer.path_for(x) == "materialised"
    layer.path = "auto"
    assert layer.path_for(x) == "factored_a_first"
    assert layer.path_for(torch.randn(100_000, 16)) == choose_path(layer.shape, 1, 100_000, training=False)
    assert layer.__dict__["_resolved"]
    copied = copy.deepcopy(layer)  # copies and pickles start without remembered answers
    assert "_resolved" not in copied.__dict__ and copied.path_for(x) == "factored_a_first"
    assert "_resolved" not in pickle.loads(pickle.dumps(layer)).__dict__
