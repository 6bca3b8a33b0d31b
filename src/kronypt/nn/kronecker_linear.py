"""KroneckerLinear: a drop-in for nn.Linear / GPT-2's Conv1D whose weight is Σ_i s_i · (A_i ⊗ B_i).

The weight is never stored. Each call runs the cheaper of three paths (factored with A first, factored
with B first, or materialise W then a dense matmul), chosen by `kronypt.nn.cost` from the token count, k,
the shapes and whether gradients are needed; set `path` to force one. On CUDA with Triton, the fused
kernels of `kronypt.kernels` (x read once, y written once) join the automatic choice where they were
measured to win (not for training under `torch.use_deterministic_algorithms(True)`: their backward sums
with atomics). `forward(x, activation=...)` also applies an activation, inside the fused kernel's epilogue
where that path runs one, so a model's MLP calls the layer alone on every path.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from kronypt.errors import KronyptError
from kronypt.kernels import (
    FUSED_ACTIVATIONS,
    FUSED_IMPLS,
    fused_available,
    fused_dtype,
    fused_wins,
    kron_linear_fused,
)
from kronypt.math.decompose import (
    Decomposition,
    check_factors,
    kron_reconstruct,
    prune_init,
    random_init,
    van_loan,
)
from kronypt.math.shapes import KronShape, integer_count, kron_shape
from kronypt.nn.cost import choose_path, path_costs
from kronypt.nn.functional import kron_linear_factored, kron_linear_materialised

PathName = Literal["auto", "factored", "factored_a_first", "factored_b_first", "materialised", "fused"]
PATHS = ("auto", "factored", "factored_a_first", "factored_b_first", "materialised", "fused")
INITS = ("van-loan", "prune", "random")
# Activations `forward` applies, by the names of Hugging Face configs' `activation_function`; the ones in
# `FUSED_ACTIVATIONS` (GPT-2's tanh GELU) run inside the fused kernel on the fused path.
ACTIVATIONS = {
    "gelu_new": functools.partial(F.gelu, approximate="tanh"),
    "gelu_pytorch_tanh": functools.partial(F.gelu, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
}


class KroneckerLinear(nn.Module):
    """y = x · Wᵀ + b with W = Σ_{i<k} s_i · kron(A_i, B_i), in nn.Linear's (out, in) orientation.

    Parameters: `A` (k, m1, n1), `B` (k, m2, n2), optional learnable `scalars` (k,) and `bias` (out,).
    Without learnable scalars s_i = 1 and no parameter exists.

    `path` picks how the product is computed ("auto": by the cost model, and on CUDA the fused kernels
    where they were measured to win); `fused_impl` picks which fused kernels run when the path is
    "fused" ("auto", or "general" to force the kernels that take any shape, for comparisons; see
    `kronypt.kernels.dispatch`). Neither is saved with the model.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        a_shape: tuple[int, int],
        factors: int = 1,
        scalars: bool = False,
        bias: bool = True,
        path: PathName = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factors = integer_count(factors, "the number of factors")
        self.shape: KronShape = kron_shape(out_features, in_features, a_shape)
        check_factors(factors, self.shape.terms())
        self.in_features, self.out_features, self.factors = in_features, out_features, factors
        kw = {"device": device, "dtype": dtype}
        self.A = nn.Parameter(torch.empty(factors, *self.shape.a_shape, **kw))
        self.B = nn.Parameter(torch.empty(factors, *self.shape.b_shape, **kw))
        self.scalars = nn.Parameter(torch.ones(factors, **kw)) if scalars else None
        self.bias = nn.Parameter(torch.zeros(out_features, **kw)) if bias else None
        self.path = path
        self.fused_impl = "auto"
        self.reset_parameters()

    @property
    def path(self) -> str:
        return self._path

    @path.setter
    def path(self, value: str) -> None:
        if value not in PATHS:
            raise KronyptError(f"unknown path {value!r}; choose one of {', '.join(PATHS)}")
        self._path = value

    @property
    def fused_impl(self) -> str:
        return self._fused_impl

    @fused_impl.setter
    def fused_impl(self, value: str) -> None:
        if value not in FUSED_IMPLS:
            raise KronyptError(f"unknown fused implementation {value!r}; choose one of {', '.join(FUSED_IMPLS)}")
        self._fused_impl = value

    def reset_parameters(self, initializer_range: float = 0.02) -> None:
        """GPT-2-style random init (see `kronypt.math.random_init`): the entries of W have standard deviation
        `initializer_range` (GPT-2's 0.02; a model passes its config's); zero bias, unit scalars."""
        std = math.sqrt(initializer_range / math.sqrt(self.factors))
        with torch.no_grad():
            nn.init.normal_(self.A, std=std)
            nn.init.normal_(self.B, std=std)
            if self.scalars is not None:
                self.scalars.fill_(1.0)
            if self.bias is not None:
                self.bias.zero_()

    @classmethod
    def from_dense(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        a_shape: tuple[int, int],
        factors: int = 1,
        scalars: bool = False,
        init: str = "van-loan",
        rescale: bool = False,
        prune_fill: float = 0.0,
        init_std: float = 0.02,
    ) -> tuple[KroneckerLinear, Decomposition]:
        """Factor an (out, in) weight into a new layer; also return the decomposition (with its error).
        `init_std`: the spread of W's entries for init="random" (the model's initializer_range)."""
        out_features, in_features = weight.shape
        if bias is not None and tuple(bias.shape) != (out_features,):
            raise KronyptError(f"the bias of a ({out_features}, {in_features}) weight must have shape "
                               f"({out_features},), got {tuple(bias.shape)}")
        if init == "van-loan":
            dec = van_loan(weight, a_shape, factors, rescale=rescale)
        elif init == "prune":
            dec = prune_init(weight, a_shape, factors, fill=prune_fill)
        elif init == "random":
            dec = random_init(out_features, in_features, a_shape, factors, std=init_std, weight=weight)
        else:
            raise KronyptError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
        dtype = weight.dtype if weight.dtype.is_floating_point else torch.float32
        layer = cls(in_features, out_features, a_shape, factors, scalars, bias is not None,
                    device=weight.device, dtype=dtype)
        layer.load_factors(dec)
        if bias is not None:
            with torch.no_grad():
                layer.bias.copy_(bias)
        return layer, dec

    def load_factors(self, dec: Decomposition) -> None:
        """Copy a decomposition's factors into this layer (scalars too when they are learnable)."""
        with torch.no_grad():
            self.A.copy_(dec.A)
            self.B.copy_(dec.B)
            if self.scalars is not None:
                self.scalars.copy_(dec.scalars)

    def freeze_scalars(self, value: float | None = None) -> None:
        """Stop training the scalars, optionally setting them to `value` first.

        Setting them rescales each A_i by s_i / value, so the layer computes what it did before (the paper
        saw trained scalars settle near 4: freezing them there must not multiply the MLP's output by 4).
        Applying the same value again changes nothing, so a resumed run may call this again."""
        if self.scalars is None:
            raise KronyptError("this layer has no learnable scalars to freeze")
        if value is not None:
            if not math.isfinite(value) or value == 0:
                raise KronyptError(f"the scalars' value must be finite and non-zero, got {value}")
            with torch.no_grad():
                target = torch.tensor(value, dtype=self.scalars.dtype).to(torch.float64)  # as it will be stored
                ratio = self.scalars.to(torch.float64) / target
                if not torch.all(ratio == 1):
                    self.A.copy_(self.A.to(torch.float64) * ratio.view(-1, 1, 1))
                self.scalars.fill_(value)
        self.scalars.requires_grad_(False)

    def dense_weight(self) -> torch.Tensor:
        """The (out, in) weight this layer represents, in the parameters' dtype: summed in float64 and rounded
        once, so a bfloat16 or float16 export is the correctly rounded W, not a sum of rounded terms."""
        wide = {n: None if p is None else p.to(torch.float64) for n, p in
                (("A", self.A), ("B", self.B), ("scalars", self.scalars))}
        return kron_reconstruct(wide["A"], wide["B"], wide["scalars"]).to(self.A.dtype)

    def resolved_path(self, tokens: int, training: bool, tensor_cores: bool = False, fused: bool = False) -> str:
        """The concrete path a call with this many tokens takes.

        `tensor_cores`: the matmuls run on CUDA tensor cores; `fused`: the fused Triton kernels can run.
        """
        if self.path not in ("auto", "factored"):
            return self.path
        key = (self.path, tokens, training, tensor_cores, fused)
        if torch.compiler.is_compiling():  # traced once per graph: no cache to mutate inside it
            return self._resolve(*key)
        # Eager decoding asks this once per layer and token: remember the answers (a few per model).
        cache = self.__dict__.setdefault("_resolved", {})
        if key not in cache:
            if len(cache) >= 256:  # many distinct prefill lengths: start over rather than grow
                cache.clear()
            cache[key] = self._resolve(*key)
        return cache[key]

    def __getstate__(self) -> dict:
        """Pickled and deep-copied without the remembered paths: a cache, which the process that loads the
        copy fills from its own cost model and table of measured wins."""
        state = super().__getstate__().copy()
        state.pop("_resolved", None)
        return state

    def _resolve(self, path: str, tokens: int, training: bool, tensor_cores: bool, fused: bool) -> str:
        if path == "auto":
            if fused and fused_wins(self.shape, self.factors, tokens, training):
                return "fused"
            return choose_path(self.shape, self.factors, tokens, training, tensor_cores=tensor_cores)
        costs = path_costs(self.shape, self.factors, tokens, training)
        return "factored_a_first" if costs.factored_a_first <= costs.factored_b_first else "factored_b_first"

    def path_for(self, x: torch.Tensor) -> str:
        """The concrete path a call on `x` takes now (depends on grad mode, device and dtype)."""
        tokens = x.numel() // self.in_features
        training = torch.is_grad_enabled() and (x.requires_grad or self.A.requires_grad or self.B.requires_grad
                                                or (self.scalars is not None and self.scalars.requires_grad)
                                                or (self.bias is not None and self.bias.requires_grad))
        cuda = x.is_cuda
        # The fused kernels were measured in bfloat16 only (`MEASURED_WINS`), and their backward sums with
        # atomics (bitwise run-to-run differences): not under deterministic mode.
        fused = (cuda and fused_available(x) and fused_dtype(x, self.A, self.B) == torch.bfloat16
                 and not (training and torch.are_deterministic_algorithms_enabled()))
        return self.resolved_path(tokens, training, cuda and _on_tensor_cores(x), fused)

    def forward(self, x: torch.Tensor, activation: str | None = None) -> torch.Tensor:
        """activation(x · Wᵀ + b) on the path `path_for(x)` names; `activation` is None or a name in
        `ACTIVATIONS`. The fused path applies GPT-2's tanh GELU in its kernel's epilogue (one read and
        write of the output saved, forward and backward); every other case applies it after the product."""
        if x.shape[-1] != self.in_features:
            raise KronyptError(f"KroneckerLinear({self.in_features} -> {self.out_features}) got an input whose last "
                               f"dimension is {x.shape[-1]} (shape {tuple(x.shape)}), not {self.in_features}")
        if activation is not None and activation not in ACTIVATIONS:
            raise KronyptError(f"unknown activation {activation!r}; choose None or one of {', '.join(ACTIVATIONS)}")
        path = self.path_for(x)
        if path == "fused" and activation in FUSED_ACTIVATIONS:
            return kron_linear_fused(x, self.A, self.B, self.scalars, self.bias, activation=activation,
                                     impl=self.fused_impl)
        y = self._product(x, path)
        return y if activation is None else ACTIVATIONS[activation](y)

    def _product(self, x: torch.Tensor, path: str) -> torch.Tensor:
        """x · Wᵀ + b on one concrete path."""
        if path == "fused":
            return kron_linear_fused(x, self.A, self.B, self.scalars, self.bias, impl=self.fused_impl)
        if path == "materialised":
            return kron_linear_materialised(x, self.A, self.B, self.scalars, self.bias)
        order = "a_first" if path == "factored_a_first" else "b_first"
        return kron_linear_factored(x, self.A, self.B, self.scalars, self.bias, order=order)

    def extra_repr(self) -> str:
        s = self.shape
        return (f"in_features={self.in_features}, out_features={self.out_features}, A={s.a_shape}, "
                f"B={s.b_shape}, factors={self.factors}, scalars={self.scalars is not None}, "
                f"bias={self.bias is not None}, path={self.path}")


def _on_tensor_cores(x: torch.Tensor) -> bool:
    """Whether matmuls on this CUDA input run on tensor cores (half precision, autocast or TF32)."""
    return (x.dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled("cuda")
            or torch.backends.cuda.matmul.allow_tf32)
