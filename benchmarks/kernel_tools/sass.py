"""Compile the fused kernels for a Hopper GPU on any machine and report what the machine code does.

Triton's wheel carries ptxas and cuobjdump, so no GPU is needed to see, for the exact kernels a layer call
would launch (same constexprs, same 16-byte specialisations a real launch gets), the registers per thread,
spills, shared memory, and the instruction mix: tensor-core `HGMMA` (wgmma), 16-byte async copies
(`LDGSTS.E.BYPASS.128`) or scalar `LDG.E.U16`, store widths. It shows, for example, 2-byte loads and
stores where the compiler cannot know that a stride is 1.

    from kernel_tools.sass import layer_report     # with benchmarks/ on sys.path
    for row in layer_report(KronShape(768, 768, 4, 1), k=1, tokens=8192, training=True):
        print(row)
"""

from __future__ import annotations

import collections
import inspect
import os
import re
import subprocess
import tempfile
from typing import Any

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kronypt.kernels import dispatch, tuning
from kronypt.kernels.activation import activation_code
from kronypt.math.shapes import KronShape

HOPPER = GPUTarget("cuda", 90, 32)
DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
INSTRUCTIONS = re.compile(r"\b(HGMMA|HMMA|LDGSTS|LDG|STG|LDL|STL|RED|ATOM)(\.[A-Za-z0-9_.]+)?")


def _cuobjdump() -> str:
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(path):
        raise FileNotFoundError(f"cuobjdump not found in the triton package ({path})")
    return path


def recorded_launches(shape: KronShape, k: int, tokens: int, training: bool, dtype: torch.dtype,
                      scalars: bool = False, bias: bool = True, activation: str | None = None,
                      impl: str = "auto") -> list:
    """The (kernel, configs, args) of every launch one layer call makes, recorded on meta tensors."""
    meta = torch.device("meta")
    x = torch.empty(tokens, shape.in_features, device=meta, dtype=dtype)
    A = torch.empty(k, shape.m1, shape.n1, device=meta, dtype=dtype)
    B = torch.empty(k, shape.m2, shape.n2, device=meta, dtype=dtype)
    s = torch.empty(k, device=meta) if scalars else None
    b = torch.empty(shape.out_features, device=meta, dtype=dtype) if bias else None
    act = activation_code(activation)
    tuning.RECORDED_LAUNCHES = []
    try:
        save = training and (act != 0 or dispatch.saves_p(x, A, B, impl))
        y, saved = dispatch.fused_forward(x, A, B, s, b, act, save, impl)
        if training:
            dispatch.fused_backward(torch.empty_like(y), x, A, B, s, saved, b, act, True, True, True, scalars,
                                    bias, impl)
        return tuning.RECORDED_LAUNCHES
    finally:
        tuning.RECORDED_LAUNCHES = None


def _candidates(kernel: Any, configs: list[triton.Config], args: dict) -> tuple[Any, list[triton.Config]]:
    if isinstance(kernel, triton.runtime.Autotuner):
        return kernel.fn, kernel.early_config_prune(kernel.configs, {}, **args)
    return kernel, configs[-1:] or [triton.Config({})]


def compile_report(jit: Any, args: dict, config: triton.Config) -> dict:
    """Compile one launch for sm_90 and read its resources and instruction mix."""
    params = inspect.signature(jit.fn).parameters
    values = {**args, **config.kwargs}
    constexprs = {n: values[n] for n, p in params.items() if "constexpr" in str(p.annotation)}
    signature, attrs = {}, {}
    for i, name in enumerate(params):
        value = values[name]
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + DTYPES[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]  # allocations are 256-byte aligned
        else:
            signature[name] = "i32"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages, "enable_fp_fusion": True}
    compiled = triton.compile(ASTSource(jit, signature, constexprs, attrs), target=HOPPER, options=options)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([_cuobjdump(), "--dump-resource-usage", f.name], capture_output=True, text=True)
        sass = subprocess.run([_cuobjdump(), "-sass", f.name], capture_output=True, text=True).stdout
    regs, stack = re.search(r"REG:(\d+) STACK:(\d+)", usage.stdout).groups()
    ops_count = collections.Counter(m.group(1) + (m.group(2) or "") for m in INSTRUCTIONS.finditer(sass))
    return {"kernel": jit.fn.__name__, "config": dict(config.kwargs, warps=config.num_warps,
                                                       stages=config.num_stages),
            "registers": int(regs), "stack_bytes": int(stack), "shared_bytes": compiled.metadata.shared,
            "instructions": dict(ops_count)}


def layer_report(shape: KronShape, k: int, tokens: int, training: bool, dtype: torch.dtype = torch.bfloat16,
                 **flags: Any) -> list[dict]:
    """`compile_report` of every candidate config of every launch of one layer call."""
    rows = []
    for kernel, configs, args in recorded_launches(shape, k, tokens, training, dtype, **flags):
        jit, candidates = _candidates(kernel, configs, args)
        rows += [compile_report(jit, args, c) for c in candidates]
    return rows
