"""Run a causal LM over many spans in batches and return each span's per-token negative log-likelihoods.

This is the one place that calls the model, so every protocol and every model type (dense GPT-2,
distilgpt2, kronypt, anything with `model(input_ids).logits`) goes through the same code.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from kronypt.errors import KronyptError
from kronypt.eval.windows import Span

# Window tokens per forward pass when no batch size is given. On a 2-core CPU, GPT-2's 1024-token windows ran
# as fast as the plain one-window loop at one or two per pass and ~15% slower at four (the (4, 1024, 50257)
# float32 logits alone are 0.8 GB); a GPU needs larger batches to stay busy.
BATCH_TOKENS = {"cpu": 2048, "cuda": 16384}


@dataclass(frozen=True)
class Request:
    """Score `span` of the token sequence number `sequence`."""

    sequence: int
    span: Span


@dataclass
class SpanScore:
    """Per-token NLL (nats, float64, length `n_scored`) and, when asked for, whether every target was the
    greedy argmax."""

    nll: torch.Tensor
    greedy: bool | None = None


@dataclass
class ScoreRun:
    """Scores in request order, plus throughput: model input tokens and wall time of the scoring loop."""

    scores: list[SpanScore]
    input_tokens: int
    seconds: float


def auto_batch_size(window: int, device: torch.device) -> int:
    """Windows of `window` tokens per forward pass: `BATCH_TOKENS` of the device type, at least one."""
    return max(1, BATCH_TOKENS.get(device.type, BATCH_TOKENS["cpu"]) // max(window, 1))


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter (CPU for a parameterless model)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.inference_mode()
def score_requests(
    model: torch.nn.Module,
    sequences: Sequence[torch.Tensor],
    requests: Sequence[Request],
    batch_size: int | None = None,
    greedy: bool = False,
    progress: bool = True,
    desc: str = "scoring",
) -> ScoreRun:
    """Score every request with `model`, `batch_size` spans per forward pass (None: `auto_batch_size`).

    Spans are sorted by input length (longest first) so a batch pads little; shorter inputs are right-padded,
    which a causal model's real positions cannot see, so no attention mask is needed. Logits are upcast to
    float32 before the log-softmax (as Hugging Face's loss does), NLLs are accumulated in float64. `greedy`
    also records whether each span's targets are all the argmax (LAMBADA accuracy).
    """
    device = model_device(model)
    if batch_size is None:
        batch_size = auto_batch_size(max((r.span.input_len for r in requests), default=1), device)
    if batch_size < 1:
        raise KronyptError(f"batch_size must be at least 1, got {batch_size}")
    extra = {"use_cache": False} if isinstance(model, PreTrainedModel) else {}  # no KV cache to build
    order = sorted(range(len(requests)), key=lambda i: -requests[i].span.input_len)
    scores: list[SpanScore | None] = [None] * len(requests)
    input_tokens = sum(requests[i].span.input_len for i in order)
    start = time.perf_counter()
    with tqdm(total=input_tokens, unit="tok", unit_scale=True, desc=desc, disable=not progress) as bar:
        for first in range(0, len(order), batch_size):
            batch = order[first:first + batch_size]
            spans = [requests[i].span for i in batch]
            seqs = [sequences[requests[i].sequence] for i in batch]
            inputs = _padded_inputs(seqs, spans).to(device)
            logits = model(input_ids=inputs, **extra).logits
            for row, (i, seq, span) in enumerate(zip(batch, seqs, spans, strict=True)):
                scores[i] = _span_score(logits[row], seq, span, greedy)
            bar.update(sum(span.input_len for span in spans))
    seconds = time.perf_counter() - start
    return ScoreRun(scores=scores, input_tokens=input_tokens, seconds=seconds)  # type: ignore[arg-type]


def _padded_inputs(seqs: list[torch.Tensor], spans: list[Span]) -> torch.Tensor:
    width = max(span.input_len for span in spans)
    inputs = torch.zeros(len(spans), width, dtype=torch.long)
    for row, (seq, span) in enumerate(zip(seqs, spans, strict=True)):
        inputs[row, :span.input_len] = seq[span.begin:span.end - 1]
    return inputs


def _span_score(logits: torch.Tensor, seq: torch.Tensor, span: Span, greedy: bool) -> SpanScore:
    last = span.input_len
    scored = logits[last - span.n_scored:last].float()
    targets = seq[span.end - span.n_scored:span.end].to(scored.device)
    nll = F.cross_entropy(scored, targets, reduction="none")
    hit = bool((scored.argmax(dim=-1) == targets).all()) if greedy else None
    return SpanScore(nll=nll.double().cpu(), greedy=hit)
