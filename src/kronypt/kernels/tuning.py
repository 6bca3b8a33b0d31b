"""Block sizes of the general kernels, and `launch`, which every kernel of the package goes through.

On a GPU the general kernels (`general_forward`, `large_b_forward`, `factor_grads`) are wrapped in
`triton.autotune` (the vector-B kernels take fixed block sizes: `vector_b_forward.CONFIGS`,
`vector_b_backward.REDUCE`), keyed on the layer's shape and a coarse token bucket (decode, small, medium,
large), so a model tunes a handful of times, not once per prompt length. The lists stay short because
tuning compiles every candidate. Under the interpreter no timing is possible: the smallest config is used.

Tuning runs on a kernel's first call for a new key. Warm a model up before capturing it in a CUDA graph
(a graph replay never tunes).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import triton

from kronypt.kernels.availability import INTERPRET

# Estimated 32-bit registers per thread of live tiles above which a config spills (calibrated on sm_90
# builds, `benchmarks/kernel_tools/sass.py`: 81M c_fc at (128, 64, 64)/8 warps uses 151 registers and no
# stack).
REGISTER_BUDGET = 176
# Shared memory one block may use where the device cannot be asked (sm_90's opt-in maximum, 227 KiB).
SHARED_MEMORY_BYTES = 232_448
# Candidates timed per tuning key; KRONYPT_TUNE_CANDIDATES=1 turns tuning off (first fitting config).
MAX_CANDIDATES = max(1, int(os.environ.get("KRONYPT_TUNE_CANDIDATES", "3")))
TOKEN_BUCKETS = (16, 256, 4096, 65536)


def _cfg(t: int, a: int, c: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_T": t, "BLOCK_A": a, "BLOCK_C": c}, num_warps=warps, num_stages=stages)


# Fits every shape with m2 ≤ 128; the interpreter always runs it (the most programs for small shapes).
FALLBACK = _cfg(16, 16, 16, 4, 2)
# (tokens, A rows, reduction) per program; the output tile is BLOCK_T × (BLOCK_A · m2). Ordered by
# preference: pruning keeps the first MAX_CANDIDATES that fit.
FORWARD_CONFIGS = [
    _cfg(128, 128, 64, 8, 3), _cfg(128, 64, 64, 8, 3), _cfg(64, 128, 64, 8, 3), _cfg(64, 64, 64, 8, 3),
    _cfg(128, 32, 64, 8, 3), _cfg(128, 32, 64, 4, 4), _cfg(128, 16, 64, 8, 3), _cfg(64, 16, 64, 4, 3),
    _cfg(32, 16, 32, 8, 3),
    # decode / few tokens: tl.dot needs at least 16 rows
    _cfg(16, 64, 128, 4, 3), _cfg(16, 32, 128, 4, 3), _cfg(16, 16, 128, 4, 3),
    FALLBACK,
]
# The large-B kernel: its tiles are Z (BLOCK_A, BLOCK_T·n2) and acc (BLOCK_A·BLOCK_T, m2).
LARGE_B_CONFIGS = [
    _cfg(32, 32, 32, 8, 3), _cfg(16, 64, 32, 8, 3), _cfg(32, 16, 64, 8, 3), _cfg(16, 32, 32, 4, 3),
    _cfg(16, 16, 32, 8, 3), _cfg(8, 32, 32, 8, 3), FALLBACK,
]
# Weight gradients: (tokens per step, A rows, A columns) of one program's slice of dA or M.
FACTOR_GRAD_CONFIGS = [
    _cfg(64, 64, 64, 8, 3), _cfg(64, 32, 64, 4, 3), _cfg(32, 32, 32, 4, 3), _cfg(32, 16, 32, 8, 3),
    _cfg(16, 32, 32, 8, 3), FALLBACK,
]


def cdiv(a: int, b: int) -> int:
    """⌈a / b⌉ for launch grids: `triton.cdiv` is a `ConstexprFunction` in Triton ≥ 3.x whose every host
    call costs ~3.5 µs (on a 2-core x86 CPU, three per layer call were a third of its Python time)."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of two ≥ n (n ≥ 1): `triton.next_power_of_2` without its call overhead."""
    return 1 << (n - 1).bit_length() if n > 1 else 1


def token_bucket(tokens: int) -> int:
    """The autotuning bucket of a token count."""
    for bucket in TOKEN_BUCKETS:
        if tokens <= bucket:
            return bucket
    return TOKEN_BUCKETS[-1]


def registers(kernel: str, cfg: triton.Config, args: dict[str, Any]) -> float:
    """Estimated registers per thread held by the live tiles of `kernel` ("forward", "large_b" or
    "factor_grads") under `cfg`: float32 tiles count 1 per element, the input tile its own width (½ in
    bf16); a fused GELU doubles the accumulator (its temporaries), fused column sums double the x tile."""
    kw = cfg.kwargs
    t, a, c = kw["BLOCK_T"], kw["BLOCK_A"], kw["BLOCK_C"]
    m2p, n2p = args["M2P"], args["N2P"]
    act = 2 if args.get("ACT") else 1
    x_tile = t * c * n2p * _itemsize(args) / 4 * (2 if args.get("COLSUM") else 1)
    if kernel == "forward":
        live = t * a * m2p * act + t * a + x_tile
    elif kernel == "large_b":
        live = a * t * n2p + a * t * m2p * act + x_tile
    else:  # the G and x tiles are widened to float32 where B is applied
        live = t * a * m2p + t * c * n2p + a * max(c, t)
    return live / (32 * cfg.num_warps)


def shared_bytes(kernel: str, cfg: triton.Config, args: dict[str, Any]) -> int:
    """Upper estimate of the shared memory of `kernel` under `cfg`: every pipeline stage holds one tile of
    each operand its loop loads (x and A; for "factor_grads" x and the output gradient) at the input's
    width. On sm_90 builds float32 (128, 64, 64)/3 of 81M c_proj uses 320 KB, this estimate 442 KB; its bf16
    build fits."""
    kw = cfg.kwargs
    t, a, c = kw["BLOCK_T"], kw["BLOCK_A"], kw["BLOCK_C"]
    loaded = t * c * args["N2P"] + (t * a * args["M2P"] if kernel == "factor_grads" else a * c)
    return loaded * _itemsize(args) * cfg.num_stages


def _fits(kernel: str, cfg: triton.Config, args: dict[str, Any]) -> bool:
    """Within the register budget and the device's shared memory, and blocks no larger than the
    (power-of-two padded) shape needs."""
    kw = cfg.kwargs
    return (
        registers(kernel, cfg, args) <= REGISTER_BUDGET
        and shared_bytes(kernel, cfg, args) <= _shared_limit(args)
        and kw["BLOCK_A"] <= max(16, next_pow2(args["M1"]))
        and kw["BLOCK_C"] <= max(16, next_pow2(args["N1"]))
    )


def _itemsize(args: dict[str, Any]) -> int:
    """Bytes per element of the kernel's input x (bf16 where the launch arguments do not say)."""
    x = args.get("X")
    return x.element_size() if isinstance(x, torch.Tensor) else 2


def _shared_limit(args: dict[str, Any]) -> int:
    x = args.get("X")
    return shared_limit(x) if isinstance(x, torch.Tensor) else SHARED_MEMORY_BYTES


_DEVICES: dict[int, tuple[int, int]] = {}


def _device_limits(device: torch.device) -> tuple[int, int]:
    """(multiprocessors, shared memory per block) of a CUDA device, asked once per device: launches read
    them on every call."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _DEVICES:
        props = torch.cuda.get_device_properties(index)
        _DEVICES[index] = (props.multi_processor_count,
                           int(getattr(props, "shared_memory_per_block_optin", SHARED_MEMORY_BYTES)))
    return _DEVICES[index]


def shared_limit(x: torch.Tensor) -> int:
    """Bytes of shared memory one block may use on x's GPU, `SHARED_MEMORY_BYTES` elsewhere."""
    return _device_limits(x.device)[1] if x.is_cuda else SHARED_MEMORY_BYTES


def _pruner(kernel: str, limit: int, by_bucket: bool) -> Callable:
    def prune(configs: Sequence[triton.Config], named_args: dict, **kwargs: Any) -> list[triton.Config]:
        args = {**named_args, **kwargs}
        decode = args["T_BUCKET"] <= TOKEN_BUCKETS[0]
        kept = [c for c in configs if _fits(kernel, c, args)
                and (not by_bucket or (c.kwargs["BLOCK_T"] == 16) == decode)]
        return kept[: min(limit, MAX_CANDIDATES)] or [configs[-1]]

    prune.__doc__ = f"Configs of the {kernel} kernel that fit (always at least one)."
    return prune


prune_forward = _pruner("forward", MAX_CANDIDATES, by_bucket=True)
prune_large_b = _pruner("large_b", 2, by_bucket=False)
prune_factor_grads = _pruner("factor_grads", 2, by_bucket=False)


def tuned(kernel: Any, configs: list[triton.Config], key: list[str], prune: Callable,
          reset: list[str] | None = None) -> Any:
    """`kernel` wrapped in an autotuner (on a GPU); under the interpreter the raw kernel itself."""
    if INTERPRET:
        return kernel
    return triton.autotune(configs, key=key, prune_configs_by={"early_config_prune": prune},
                           reset_to_zero=reset)(kernel)


# When a list, launches are recorded here instead of run: how `benchmarks/kernel_tools/sass.py` learns what
# a layer call would launch, to compile it for a GPU on any machine.
RECORDED_LAUNCHES: list[tuple[Any, list[triton.Config], dict[str, Any]]] | None = None


_ARG_ORDER: dict[tuple, list[str]] = {}


def launch(kernel: Any, configs: list[triton.Config], grid: Callable, args: dict[str, Any],
           config: triton.Config | None = None) -> None:
    """Run `kernel`: autotuned on a GPU; under the interpreter with the smallest config, so that small
    test shapes still span several programs along every axis. Empty `configs`: an untuned kernel, run
    with the block sizes and warps of `config` when given (no autotuner in the launch path)."""
    if RECORDED_LAUNCHES is not None:
        RECORDED_LAUNCHES.append((kernel, configs or ([config] if config else []), args))
        return
    # Positional, in signature order (the tuned block sizes are the last parameters): every Triton 3.x
    # autotuner sees all arguments this way, whatever its version passes to prune and reset hooks. The
    # order is worked out once per kernel and set of argument names (host time on every call otherwise).
    key = (kernel, tuple(args))
    names = _ARG_ORDER.get(key)
    if names is None:
        names = kernel.arg_names[: len(args)]
        if set(names) != set(args):
            raise TypeError(f"arguments {sorted(set(args) ^ set(names))} do not match the leading parameters")
        _ARG_ORDER[key] = names
    ordered = [args[name] for name in names]
    if INTERPRET and configs:
        kernel[grid](*ordered, **FALLBACK.kwargs)
    elif config is not None:
        kernel[grid](*ordered, **config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)
    else:
        kernel[grid](*ordered)


def dot_flags(dtype: torch.dtype) -> dict[str, bool]:
    """Compile-time switches of `tl.dot`.

    IEEE: float32 inputs are multiplied in full precision (no TF32), matching PyTorch's default.
    DOT_F32: the interpreter of Triton 3.9 multiplies bfloat16 dot operands as raw integers, so there the
    operands are widened to float32 first, which is exact (a bf16 product fits in fp32).
    """
    return {"DOT_F32": INTERPRET, "IEEE": dtype == torch.float32}


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of `device` (a small stand-in on the CPU interpreter)."""
    return _device_limits(device)[0] if device.type == "cuda" else 4
