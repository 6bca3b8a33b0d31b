"""Gradient clipping in the trainer: a few real steps on a tiny GPT-2 against a hand-written loop (the same batches,
clipping by hand, plain `torch.optim.AdamW`)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_train_support import scratch_config, tiny_gpt2
from transformers import GPT2LMHeadModel

from kronypt.data.tokens import open_tokens, sample_batch
from kronypt.train import TrainConfig, train
from kronypt.train.metrics import read_metrics

STEPS = 3
NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}  # the steps are deterministic


def reference_steps(model: torch.nn.Module, config: TrainConfig, clip: float) -> list[float]:
    """Train `model` in place as the trainer should: per step, `accumulation` micro-batches of the seeded batch
    stream, mean cross-entropy; then the global L2 gradient norm, gradients scaled by clip / (norm + 1e-6) when
    that is below 1 (clip 0: never), and one AdamW step at the constant LR. Returns the norms before clipping."""
    args, optim = config.train, config.optim
    accumulation = args.tokens_per_step // (args.micro_batch_size * args.seq_len)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, weight_decay=0.0)
    tokens = open_tokens(config.data, "train")
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    norms = []
    for _ in range(STEPS):
        inputs, targets = sample_batch(tokens, args.micro_batch_size * accumulation, args.seq_len, generator)
        for x, y in zip(inputs.split(args.micro_batch_size), targets.split(args.micro_batch_size), strict=True):
            logits = model(input_ids=x).logits
            (F.cross_entropy(logits.flatten(0, 1), y.flatten()) / accumulation).backward()
        norm = sum(float(p.grad.double().square().sum()) for p in params) ** 0.5
        norms.append(norm)
        if clip > 0 and clip / (norm + 1e-6) < 1:
            for p in params:
                p.grad.mul_(clip / (norm + 1e-6))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return norms


@pytest.mark.parametrize("clip", [0.05, 0.0], ids=["clipped", "disabled"])
def test_training_steps_clip_the_gradient_norm_before_adamw(tmp_path: Path, clip: float) -> None:
    """The weights after a few steps equal the hand-written loop's with the same clip (1e-6 absolute, float32 on
    both sides), the logged grad_norm is the norm before clipping (relative 1e-5), and clip 0 means no clipping.
    Adam is nearly blind to a constant gradient scale, so clipping only shows where the clip factor changes from
    step to step: the test checks that it does here, i.e. that an unclipped run would end elsewhere."""
    config = scratch_config(tmp_path, max_steps=STEPS, eval_every=0, grad_clip=clip, weight_decay=0.0,
                            schedule="constant", warmup_steps=0)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(tiny_gpt2(**NO_DROPOUT))
    start = copy.deepcopy(model)
    train(config, model=model, progress=False)

    expected = copy.deepcopy(start)
    norms = reference_steps(expected, config, clip)
    logged = [r["grad_norm"] for r in read_metrics(Path(config.out) / "metrics.jsonl") if "grad_norm" in r]
    assert logged == pytest.approx(norms, rel=1e-5)
    trained, wanted = model.state_dict(), expected.state_dict()
    for name, value in wanted.items():
        torch.testing.assert_close(trained[name], value, rtol=0, atol=1e-6, msg=name)

    other = copy.deepcopy(start)  # the same loop with the other clip setting
    reference_steps(other, config, 0.0 if clip else 0.05)
    gap = max((other.state_dict()[name] - value).abs().max().item() for name, value in wanted.items())
    assert gap > 1e-4, gap  # clipping matters by far more than the tolerance above
    if clip:
        assert min(norms) > clip and max(norms) > 1.05 * min(norms), norms  # it clipped, by changing factors
