"""How a training run that fails ends: the one-line error it reports, and what it leaves in its folder."""

from __future__ import annotations

from pathlib import Path

from kronypt.errors import KronyptError
from kronypt.train import checkpoint
from kronypt.train.args import TrainArgs


class TrainingDiverged(KronyptError):
    """The loss, the gradient norm, the validation loss or the weights stopped being finite; nothing was
    saved for that step."""


def diverged(out: Path, problem: str) -> TrainingDiverged:
    """The error that stops a run in `out` that diverged; it names the latest checkpoint, which is good: no
    checkpoint is ever saved with a non-finite model."""
    last_good = checkpoint.latest_checkpoint(out)
    advice = (f"last good checkpoint: {last_good} (train its model/ with a lower --lr in a new --out: "
              "--init-from kronypt)" if last_good else
              "no checkpoint yet: rerun with a lower --lr (or --grad-clip > 0) in a new --out")
    return TrainingDiverged(f"{problem}; stopped without saving; {advice}")


def out_of_memory(exc: BaseException, args: TrainArgs) -> KronyptError | None:
    """A one-line error for `exc` when it says that memory ran out (NumPy, a CPU or a GPU allocation),
    naming the batch geometry to lower; None for any other failure."""
    text = str(exc)
    if not (isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and (
            "out of memory" in text or "can't allocate memory" in text))):
        return None
    first = " ".join(text.split())[:200]
    return KronyptError(f"out of memory with micro_batch_size {args.micro_batch_size:,} × seq_len {args.seq_len:,} "
                        f"({type(exc).__name__}: {first}); lower --micro-batch-size (--tokens-per-step keeps the "
                        "tokens of one step)")


def discard_unsaved_run(out: Path, created: bool) -> None:
    """Remove what a fresh run that failed before its first checkpoint wrote into `out` (its config.yaml and
    metrics.jsonl; the folder too when the run made it), so that no half-made run folder stays behind."""
    for name in ("metrics.jsonl", "config.yaml"):
        (out / name).unlink(missing_ok=True)
    checkpoint.clean_partial(out)
    for folder in ([checkpoint.checkpoint_root(out)] + ([out] if created else [])):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
