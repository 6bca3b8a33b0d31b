"""Speed of one model against another in the same run: prefill, decode and training tokens/s, as ratios.

SPEC §8 measures performance as ratios against dense in one run, never as absolute thresholds. Both models
stay in memory and every measure alternates them (A, B, then B, A, ...), so background load and clock
changes hit both alike; each number is the median over the repeats, after warm-up calls that are not
counted. The rates are tokens/s, and `ratios` divides the model's by the other's: > 1 = faster.

Decode latency is measured inside one `generate` call: a logits processor stamps the time at which each new
token's logits arrive (after that step's forward; on CUDA after a synchronize). The first stamp follows the
prefill, the last follows the final decode step, so (last - first) / (new_tokens - 1) is the time of one
KV-cached decode step, generate's own bookkeeping included, with the prefill excluded exactly. (Subtracting
a 1-token generate from an N-token one measures the same thing as a difference of two noisy medians.)

>>> from kronypt.bench import BenchSettings, bench_pair                              # doctest: +SKIP
>>> bench_pair(compressed, dense_counterpart(compressed), BenchSettings(prompt_tokens=64))["ratios"]
"""

from __future__ import annotations

import inspect
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, PreTrainedModel

from kronypt.errors import KronyptError
from kronypt.models import count_params, to_dense
from kronypt.models.configuration import config_context_length
from kronypt.train.distill import lm_loss

Measure = Callable[[], float]  # one timed call; returns the seconds of the part it measures

DECODE_METHOD = ("per-step time inside one greedy generate (min = max new tokens): logits-processor timestamps "
                 "from the first new token (after the prefill) to the last, over new_tokens - 1 steps")


@dataclass(frozen=True)
class BenchSettings:
    """What to time: `batch` sequences of `prompt_tokens` random ids (prefill, training step) and
    `new_tokens` greedy tokens after such a prompt (decode); `repeats` counted rounds after `warmup`."""

    batch: int = 1
    prompt_tokens: int = 128
    new_tokens: int = 32
    repeats: int = 5
    warmup: int = 1
    train: bool = False
    seed: int = 0

    def check(self, context: int | None = None) -> None:
        """Refuse settings that cannot run, before any model is loaded."""
        for name in ("batch", "prompt_tokens", "repeats"):
            if getattr(self, name) < 1:
                raise KronyptError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.new_tokens < 2:
            raise KronyptError(f"new_tokens must be at least 2 (decode is timed between the first and the last "
                               f"new token), got {self.new_tokens}")
        if self.train and self.prompt_tokens < 2:
            raise KronyptError("a training step needs prompt_tokens of at least 2 (next-token targets)")
        if self.warmup < 0:
            raise KronyptError(f"warmup must be 0 or more, got {self.warmup}")
        if context is not None and self.prompt_tokens + self.new_tokens > context:
            raise KronyptError(f"prompt tokens ({self.prompt_tokens}) plus new tokens ({self.new_tokens}) exceed "
                               f"the model's context of {context} tokens")


def compressed_layers(config) -> int:
    """How many matrices of a model are compressed layers (Kronecker or low-rank; 0 for a plain model)."""
    return len(getattr(config, "compressed_modules", {}))


def require_compressed(config, name: str) -> None:
    """Refuse a model without compressed layers where it would be compared with its own dense self."""
    if compressed_layers(config) == 0:
        raise KronyptError(f"{name} has no compressed layers: its dense counterpart is itself, nothing to compare "
                           f"(bench a compressed model against it: kronypt bench COMPRESSED --against {name})")


def dense_counterpart(model: PreTrainedModel, name: str = "model") -> PreTrainedModel:
    """The same model rebuilt dense (`to_dense`: a plain GPT-2 of the same config with the same logits),
    in eval mode; refused for a model without Kronecker layers."""
    require_compressed(model.config, name)
    return to_dense(model).eval()


def bench_pair(model: PreTrainedModel, against: PreTrainedModel, settings: BenchSettings,
               on_step: Callable[[], None] | None = None) -> dict:
    """Time `model` and `against` (both on the same device and dtype) alternately; return a JSON-ready dict:
    `model` and `against` (params, Kronecker layers, median rates), `ratios` (model / against), `settings`,
    `environment` and the decode method. `on_step` is called after every timed or warm-up call (progress).

    The training step (with `settings.train`) runs last: its AdamW updates change the weights in memory."""
    contexts = [c for c in (config_context_length(model.config), config_context_length(against.config)) if c]
    settings.check(min(contexts, default=None))
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(settings.seed)
    vocab = min(model.config.vocab_size, against.config.vocab_size)  # the same ids are valid for both
    ids = torch.randint(vocab, (settings.batch, settings.prompt_tokens), generator=generator).to(device)
    tick = on_step or (lambda: None)
    pair = (model.eval(), against.eval())
    competition = CpuCompetition(device)
    rounds = {"prefill_tokens_per_s": _alternate([_prefill(m, ids) for m in pair], settings, tick),
              "decode_tokens_per_s": _alternate([_decode(m, ids, settings.new_tokens) for m in pair], settings, tick)}
    if settings.train:
        rounds["train_tokens_per_s"] = _alternate([_train_step(m, ids) for m in pair], settings, tick)
        for m in pair:
            m.eval()
    others = competition.others()
    work = {"prefill_tokens_per_s": ids.numel(), "decode_tokens_per_s": settings.batch,
            "train_tokens_per_s": ids.numel()}
    results = [{"params": count_params(m), "compressed_layers": compressed_layers(m.config)} for m in pair]
    for key, samples in rounds.items():
        for row, seconds in zip(results, samples, strict=True):
            row[key] = work[key] / statistics.median(seconds)
    for row, seconds in zip(results, rounds["decode_tokens_per_s"], strict=True):
        row["decode_ms_per_token"] = statistics.median(seconds) * 1e3
    ratios = {k: results[0][k] / results[1][k] for k in ("params", *rounds)}
    spread = {key: round_ratios(samples) for key, samples in rounds.items()}
    return {"model": results[0], "against": results[1], "ratios": ratios, "spread": spread,
            "cpu_taken_by_others": others, "warnings": noise_warnings(spread, others),
            "settings": asdict(settings), "decode_method": DECODE_METHOD, "environment": environment(device, model)}


NOISY_SPREAD = 0.15  # (max - min) / median of the per-round ratios above which a ratio is not to be trusted
BUSY_OTHERS = 0.10  # share of the machine's CPU time other processes may take while timing


def round_ratios(samples: list[list[float]]) -> dict[str, float]:
    """The ratio (model / against, as rates: > 1 = faster) of each round's paired timings: its median, lowest,
    highest and relative spread ((max - min) / median)."""
    ratios = sorted(b / a for a, b in zip(*samples, strict=True))
    median = statistics.median(ratios)
    return {"median": median, "min": ratios[0], "max": ratios[-1], "rel_spread": (ratios[-1] - ratios[0]) / median}


def noise_warnings(spread: dict[str, dict[str, float]], others: float | None) -> list[str]:
    """Why the ratios may not be trusted: rounds that disagree, or other processes on the cores."""
    notes = [f"{key.removesuffix('_tokens_per_s')} ratios of the rounds range from {s['min']:.2f} to {s['max']:.2f} "
             f"({s['rel_spread']:.0%} of their median): too noisy to trust; rerun with more --repeats on an idle "
             "machine" for key, s in spread.items() if s["rel_spread"] > NOISY_SPREAD]
    if others is not None and others > BUSY_OTHERS:
        notes.append(f"other processes used {others:.0%} of the CPU time while timing: the ratios may be far off "
                     "what an idle machine gives; rerun when nothing else runs")
    return notes


class CpuCompetition:
    """How much of the machine's CPU time other processes take between construction and `others()` (Linux's
    /proc/stat less this process's own time); None where that cannot be read, or when timing a GPU."""

    def __init__(self, device: torch.device) -> None:
        self.start = _cpu_clock() if device.type == "cpu" else None

    def others(self) -> float | None:
        end = _cpu_clock()
        if self.start is None or end is None:
            return None
        (busy0, own0, wall0), (busy1, own1, wall1) = self.start, end
        capacity = (wall1 - wall0) * (os.cpu_count() or 1)
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / capacity if capacity > 0 else None


def _cpu_clock() -> tuple[float, float, float] | None:
    """(busy seconds of all CPUs, this process's CPU seconds, wall seconds), or None without /proc/stat."""
    try:
        fields = [int(v) for v in open("/proc/stat").readline().split()[1:]]
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    times = os.times()
    return (sum(fields[:8]) - idle) / ticks, times.user + times.system, time.perf_counter()


def steps_per_run(settings: BenchSettings) -> int:
    """Calls `bench_pair` makes (both models, warm-up included): the total of a progress bar."""
    measures = 3 if settings.train else 2
    return measures * 2 * (settings.warmup + settings.repeats)


def max_logit_difference(a: PreTrainedModel, b: PreTrainedModel, ids: torch.Tensor) -> float:
    """Largest |logit difference| of two models on the same ids (0 up to rounding for `dense_counterpart`)."""
    with torch.no_grad():
        return (a(input_ids=ids).logits.float() - b(input_ids=ids).logits.float()).abs().max().item()


def environment(device: torch.device, model: PreTrainedModel) -> dict:
    """What the numbers were measured on."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return {"device": str(device), "device_name": name, "dtype": dtype,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version()}


def _alternate(measures: list[Measure], settings: BenchSettings, tick: Callable[[], None]) -> list[list[float]]:
    """Seconds of each measure in each of `settings.repeats` rounds, A then B in even rounds and B then A in
    odd ones (so neither model always runs first), after `settings.warmup` uncounted rounds."""
    for _ in range(settings.warmup):
        for measure in measures:
            measure()
            tick()
    samples: list[list[float]] = [[] for _ in measures]
    for round_ in range(settings.repeats):
        order = range(len(measures)) if round_ % 2 == 0 else reversed(range(len(measures)))
        for i in order:
            samples[i].append(measures[i]())
            tick()
    return samples


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _prefill(model: PreTrainedModel, ids: torch.Tensor) -> Measure:
    """The forward `generate` runs on a prompt: all positions, KV cache kept, logits of the last only."""
    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}

    def forward() -> None:
        model(input_ids=ids, use_cache=True, **keep)

    def measure() -> float:
        with torch.no_grad():
            return _timed(forward, ids.device)

    return measure


class _StepClock(LogitsProcessor):
    """Stamps the time each new token's logits arrive, i.e. after each forward of `generate`."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        _sync(self.device)
        self.stamps.append(time.perf_counter())
        return scores


def _decode(model: PreTrainedModel, ids: torch.Tensor, new_tokens: int) -> Measure:
    """Seconds of one KV-cached greedy decode step (see the module docstring)."""
    eos = model.config.eos_token_id
    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, num_beams=1,
                              eos_token_id=eos, pad_token_id=eos if eos is not None else 0)
    mask = torch.ones_like(ids)

    def measure() -> float:
        clock = _StepClock(ids.device)
        with torch.no_grad():
            model.generate(ids, attention_mask=mask, generation_config=config,
                           logits_processor=LogitsProcessorList([clock]))
        if len(clock.stamps) != new_tokens:  # an early stop would time fewer steps than counted
            raise RuntimeError(f"generate produced {len(clock.stamps)} tokens instead of {new_tokens}")
        return (clock.stamps[-1] - clock.stamps[0]) / (new_tokens - 1)

    return measure


def _train_step(model: PreTrainedModel, ids: torch.Tensor) -> Measure:
    """Seconds of one training step: forward over every id with the trainer's next-token loss, backward and
    an AdamW step (train mode, so dropout is on as in training)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def step() -> None:
        lm_loss(model(input_ids=ids).logits[:, :-1], ids[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def measure() -> float:
        model.train()
        return _timed(step, ids.device)

    return measure
