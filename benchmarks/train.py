"""Training throughput: GPT-2-124M config (random weights), dense against compressed to 81M, one run.

Both models take the same optimizer steps as `kronypt train` does (forward, next-token cross-entropy,
backward, gradient clipping at 1.0, AdamW with the trainer's parameter groups) on the same random token
batch. Steps of the two models alternate, so background load hits both alike; the ratio is compressed
tokens/s over dense tokens/s (> 1 = the compressed model trains faster). On CUDA it runs under bf16
autocast (fused AdamW, as the trainer does) and also reports MFU: model FLOPs per token (6 × the
multiply-adds of every matrix, the factored Kronecker cost for compressed layers, plus nanoGPT's
attention term) × tokens/s over the card's peak bf16 FLOP/s.

    python benchmarks/train.py --quick
    python benchmarks/train.py --json benchmarks/results/train-cpu.json
    python benchmarks/train.py --device cuda --batch 16 --seq-len 1024 --json train-gpu.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, sync, write_json  # noqa: E402

from kronypt import CompressionConfig, KroneckerLinear, compress_, count_params  # noqa: E402
from kronypt.train.config import OptimArgs  # noqa: E402
from kronypt.train.distill import lm_loss  # noqa: E402
from kronypt.train.optim import build_optimizer  # noqa: E402

# Dense bf16 peak FLOP/s of common cards (no sparsity); --peak-tflops overrides.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0, "4090": 165.0}


def flops_per_token(model: GPT2LMHeadModel, seq_len: int) -> int:
    """Training FLOPs per token: 6 × multiply-adds of all matrices (incl. the LM head) + attention."""
    macs = model.config.n_embd * model.config.vocab_size  # LM head
    for module in model.modules():
        if isinstance(module, Conv1D):
            macs += module.weight.numel()
        elif isinstance(module, KroneckerLinear):
            macs += min(module.shape.macs_per_token(module.factors))
    attention = 12 * model.config.n_layer * model.config.n_embd * seq_len  # nanoGPT's fwd+bwd term
    return 6 * macs + attention


def peak_flops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops * 1e12 for key, tflops in PEAK_BF16_TFLOPS.items() if key in name), None)


def make_step(model: GPT2LMHeadModel, batch: torch.Tensor, device: torch.device):
    """One optimizer step as in the trainer; returns a closure."""
    optimizer = build_optimizer(model, OptimArgs(lr=6e-5), fused=device.type == "cuda")
    params = [p for p in model.parameters() if p.requires_grad]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None
    inputs, targets = batch[:, :-1], batch[:, 1:]

    def step() -> None:
        if autocast is not None:
            with autocast:
                loss = lm_loss(model(input_ids=inputs).logits, targets)
        else:
            loss = lm_loss(model(input_ids=inputs).logits, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def build(kind: str, device: torch.device, compile_model: bool) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=1024, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0)  # GPT-2 124M without dropout, as the recipes train
    model = GPT2LMHeadModel(config)
    if kind == "81M":
        compress_(model, CompressionConfig.from_scheme("81M", init="random"), progress=False)
    model.to(device).train()
    if compile_model:
        model.compile()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=None, help="Sequences per step (default: 2 CPU, 16 CUDA).")
    parser.add_argument("--seq-len", type=int, default=None, help="Tokens per sequence (default: 256 CPU, 1024 CUDA).")
    parser.add_argument("--steps", type=int, default=None, help="Timed steps per model (default: 4, quick 2).")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="torch.compile both models.")
    parser.add_argument("--peak-tflops", type=float, default=None, help="Peak bf16 TFLOP/s for MFU.")
    parser.add_argument("--quick", action="store_true", help="Small batch, 2 timed steps: checks it works.")
    parser.add_argument("--json", default=None, help="Write the results here.")
    args = parser.parse_args()

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch or (1 if args.quick and not cuda else 16 if cuda else 2)
    seq_len = args.seq_len or (128 if args.quick and not cuda else 1024 if cuda else 256)
    steps = args.steps or (2 if args.quick else 4)
    tokens = torch.randint(0, 50257, (batch, seq_len + 1), generator=torch.Generator().manual_seed(0)).to(device)

    models = {kind: build(kind, device, args.compile) for kind in ("dense", "81M")}
    runs = {kind: make_step(model, tokens, device) for kind, model in models.items()}
    for _ in range(args.warmup):
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {kind: [] for kind in runs}
    for _ in range(steps):
        for kind, run in runs.items():  # alternate, so load changes affect both models alike
            sync(device)
            start = time.perf_counter()
            run()
            sync(device)
            times[kind].append(time.perf_counter() - start)

    peak = peak_flops(device, args.peak_tflops)
    results = {}
    for kind, model in models.items():
        tokens_per_s = batch * seq_len / statistics.median(times[kind])
        fpt = flops_per_token(model, seq_len)
        results[kind] = {"params": count_params(model), "tokens_per_s": tokens_per_s, "flops_per_token": fpt,
                         "mfu": tokens_per_s * fpt / peak if peak else None}
    ratio = results["81M"]["tokens_per_s"] / results["dense"]["tokens_per_s"]
    payload = {"benchmark": "train", "environment": environment(device), "device": str(device),
               "precision": "bf16 autocast" if cuda else "float32", "batch": batch, "seq_len": seq_len,
               "timed_steps": steps, "compile": args.compile, "results": results, "speedup_81M_over_dense": ratio}
    for kind, row in results.items():
        mfu = f", MFU {row['mfu']:.1%}" if row["mfu"] is not None else ""
        print(f"{kind:>6}: {row['params']:,} params, {row['tokens_per_s']:,.0f} tokens/s{mfu}")
    print(f"81M / dense training tokens/s: {ratio:.2f}x ({payload['environment']['device_name']}, "
          f"{payload['precision']}, batch {batch} x {seq_len})")
    write_json(args.json, payload)


if __name__ == "__main__":
    main()
