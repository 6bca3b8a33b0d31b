"""The trainer: one loop for a CPU, one GPU, or many GPUs under `torchrun` (DDP or FSDP).

Each optimizer step reads `tokens_per_step` tokens: every rank runs `accumulation` micro-batches of
`micro_batch_size` windows of `seq_len` tokens (gradients are synchronised on the last one only), then
the gradients are clipped and AdamW steps. Rank 0 logs to `OUT/metrics.jsonl` and writes checkpoints;
SIGTERM / SIGINT save a checkpoint and stop cleanly, a non-finite loss stops without touching the last
good checkpoint, as do a non-finite validation loss and weights that stopped being finite (no checkpoint
ever holds them). Launch recipes:

    kronypt train --config configs/offline-heal.yaml                          # CPU or one GPU
    torchrun --nproc_per_node 4 -m kronypt train --config configs/gpt2-81M.yaml
    torchrun --nproc_per_node 8 -m kronypt train --config configs/gpt2-81M.yaml --micro-batch-size 16 \
        --parallel fsdp
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from kronypt.data.tokens import fingerprint, sample_batch
from kronypt.train import checkpoint, distributed, parallel, resume, validation
from kronypt.train.config import TrainConfig
from kronypt.train.distill import training_loss
from kronypt.train.failures import TrainingDiverged, discard_unsaved_run, diverged, out_of_memory
from kronypt.train.lock import run_folder_lock
from kronypt.train.metrics import MetricsLog, logged_at
from kronypt.train.model_source import build_model, prepare_for_training
from kronypt.train.optim import build_optimizer, build_scheduler, restart_schedule
from kronypt.train.setup import (
    accumulation_steps,
    check_model_on_data,
    inside,
    open_data,
    replays_cuda_graphs,
    restore_weights,
    resume_path,
    teacher_for,
    tokenizer_dir,
    wikitext_validation,
)
from kronypt.train.signals import StopSignals


@dataclass
class TrainResult:
    """How a run ended."""

    out: str
    step: int
    tokens: int
    loss: float | None
    val_loss: float | None
    best_val_loss: float | None
    best_checkpoint: str | None
    stopped_by: str | None  # the signal that stopped the run early, if any

    def to_json(self) -> dict[str, Any]:
        """The fields, plus `best_model`: the loadable model folder inside the best checkpoint."""
        return {**asdict(self), "best_model": f"{self.best_checkpoint}/model" if self.best_checkpoint else None}


def train(config: TrainConfig, model: PreTrainedModel | None = None, progress: bool = True) -> TrainResult:
    """Run (or resume) the training the config describes; `model` replaces the config's model source."""
    config.validate()
    owns_group = not distributed.dist.is_initialized()  # leave a caller's process group alone
    env, device = distributed.setup(config.device)
    try:
        with contextlib.ExitStack() as held:
            # Rank 0 takes the run folder's lock; a refusal reaches every rank (each then stops in one
            # line, instead of the others failing inside the process group as rank 0 leaves).
            distributed.from_main_rank(lambda: held.enter_context(run_folder_lock(config.out)))
            try:
                return Trainer(config, env, device, model).run(progress)
            except (MemoryError, RuntimeError) as exc:
                if (memory := out_of_memory(exc, config.train)) is None:
                    raise
                raise memory from None
    finally:
        if owns_group:
            distributed.teardown()


class Trainer:
    """Holds the model, optimizer, data sampler and counters of one run; `run` does the work."""

    def __init__(self, config: TrainConfig, env: distributed.DistEnv, device: torch.device,
                 model: PreTrainedModel | None = None) -> None:
        """Everything before the first step, each bad input refused before a file is written: the data and
        batch geometry, the starting model (a checkpoint's when resuming, else `model` or the config's)
        checked against the data, the teacher, the model on its device with its optimizer, the logs, and
        last the compiled, wrapped model with a resumed run's states."""
        self.config, self.env, self.device = config, env, device
        args = config.train
        self.out = Path(config.out).expanduser()
        resume.check_out_folder(self.out, config.force)
        self.meta, self.train_tokens, self.val_tokens = open_data(config.data, args.seq_len)
        self.data_fingerprint = fingerprint(self.meta)
        self.tokenizer_dir = tokenizer_dir(config, self.meta)
        self.accumulation = accumulation_steps(args.tokens_per_step, args.micro_batch_size, args.seq_len,
                                               env.world_size)
        self.tokens_per_step = args.micro_batch_size * args.seq_len * self.accumulation * env.world_size
        self.graphed = replays_cuda_graphs(args, self.accumulation, env)
        torch.manual_seed(config.seed)  # the same initial weights on every rank
        model, state = self._starting_model(model)
        if self.already_done:  # nothing to train: run() says so and touches nothing
            return
        check_model_on_data(model, config, self.meta, {"train": self.train_tokens, "val": self.val_tokens})
        self.teacher = teacher_for(model, config, device)
        if self.resuming:  # once every check passed: a refusal stays the only line
            self._say(self.resuming)
        self._place(model)
        self.optimizer = build_optimizer(model, config.optim, fused=device.type == "cuda")
        self.scheduler = build_scheduler(self.optimizer, config.optim, args.max_steps)
        self._step_zero()
        self.wikitext = wikitext_validation(config, self.meta)
        if args.compile:
            model.compile(mode=args.compile_mode)
        self.model = parallel.wrap(model, args.parallel, env.enabled, device)
        if state is not None:  # RNG states last: nothing above may draw from them after this
            self._load_state(state)
        else:
            self.metrics.truncate_after(-1)  # records of a run killed before its first checkpoint
            torch.manual_seed(config.seed + env.rank)  # different dropout masks on different ranks

    def _starting_model(self, model: PreTrainedModel | None) -> tuple[PreTrainedModel | None, dict | None]:
        """(the model to train, the checkpoint's trainer state or None): with --resume, the checkpoint's
        weights (into `model` when given) after checking that it may be resumed; else `model`, or the one
        the config names. Sets what the run says: `resuming`, or `already_done` when nothing is left."""
        config, args = self.config, self.config.train
        resume_from = resume_path(config.checkpoint.resume, self.out)
        self.resumed, self.resuming, self.already_done = resume_from is not None, "", ""
        if resume_from is None:
            if model is None:
                if config.model:  # a checkpoint's model/ is checked against the checkpoint's checksums
                    checkpoint.check_model_folder(config.model)
                model = build_model(config)
            return model, None
        model_dir, state = checkpoint.load_state(resume_from)
        n_val_windows = (len(self.val_tokens) - 1) // args.seq_len
        resume.check_resume(config, state, resume_from, self.tokens_per_step,
                            min(args.micro_batch_size * config.eval.eval_batches, n_val_windows), n_val_windows,
                            self.data_fingerprint)
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        where = "" if inside(resume_from, self.out) else f" of {resume_from}"
        if self.step >= args.max_steps:
            self.already_done = f"{self.out} is already at step {self.step:,}{where} ({self.tokens:,} tokens)"
            return model, state
        self.resuming = f"resuming {self.out} from step {self.step:,}{where} ({self.tokens:,} tokens)"
        return restore_weights(model, model_dir), state

    def _place(self, model: PreTrainedModel) -> None:
        """The model as it trains: its frozen parts set, on the device in its precision, sharded under FSDP
        (before the optimizer is built: sharding swaps the parameters)."""
        args = self.config.train
        prepare_for_training(model, args)
        self.raw = model.to(self.device).train()
        bf16 = args.precision == "bf16" or (args.precision == "auto" and self.device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if bf16 else None
        parallel.shard(model, args.parallel, self.env.enabled, compute_dtype=self.autocast_dtype)
        self.sharded = parallel.is_sharded(model)
        self.params = [p for p in model.parameters() if p.requires_grad]

    def _step_zero(self) -> None:
        """The data order, the counters and metrics.jsonl at step 0 (a resumed run then loads its own)."""
        # One stream for the global batch, sliced by rank: batches do not depend on the number of ranks.
        self.data_generator = torch.Generator().manual_seed(self.config.seed)
        self.step, self.tokens, self.best_val_loss = 0, 0, math.inf
        self.metrics = MetricsLog(self.out / "metrics.jsonl", enabled=self.env.is_main)

    def _load_state(self, state: dict[str, Any]) -> None:
        parallel.load_optimizer_state(self.raw, self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._reset_lr(state["scheduler"].get("_last_lr"))
        self.data_generator.set_state(state["data_generator"])
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        self.best_val_loss = float(state["best_val_loss"])
        checkpoint.restore_rng(state["rng"], self.env.rank, self.config.seed, self.step)
        self.metrics.truncate_after(self.step)
        if self.env.is_main:  # an earlier checkpoint resumed: the run past it is replaced
            dropped = checkpoint.drop_after(self.out, self.step)
            if dropped:
                self._say(f"dropped {len(dropped)} later checkpoint{'s' if len(dropped) > 1 else ''} of the run "
                          f"this resume replaces ({', '.join(p.name for p in dropped)})")
        # The best is the best checkpoint here: the state's may be another folder's (--resume OTHER_RUN) or
        # one since dropped or pruned. Rank 0 reads the folder; every rank must agree on it.
        folder_best = checkpoint.best_val_loss(self.out) if self.env.is_main else 0.0
        self.best_val_loss = distributed.sum_across_ranks([folder_best], self.device)[0]

    def _reset_lr(self, saved: list[float] | None) -> None:
        """This step's LR from this run's schedule, not the checkpoint's (they differ where max_steps
        changed and the schedule depends on it: cosine, wsd); otherwise the very same value."""
        lr = restart_schedule(self.optimizer, self.scheduler)[0]
        if saved and not math.isclose(saved[0], lr, rel_tol=1e-9, abs_tol=0.0):
            self._say(f"note: max_steps {self.config.train.max_steps:,} reshapes the {self.config.optim.schedule} "
                      f"schedule: the lr of step {self.scheduler.last_epoch + 1:,} is {lr:.4g} (the checkpoint's "
                      f"schedule: {saved[0]:.4g})")

    def _say(self, message: str) -> None:
        """One line on stderr, from rank 0."""
        if self.env.is_main:
            print(message, file=sys.stderr, flush=True)

    def run(self, progress: bool = True) -> TrainResult:
        """Train to max_steps (or until a signal), evaluating, logging and saving as configured. A fresh run
        that fails before its first checkpoint (other than by diverging) leaves no run folder behind."""
        args = self.config.train
        if self.already_done:
            self._say(f"{self.already_done}, max_steps is {args.max_steps:,}: nothing to train (raise --max-steps "
                      "to continue)")
            best = checkpoint.best_checkpoint(self.out) if self.env.is_main else None
            best_loss = checkpoint.best_val_loss(self.out) if self.env.is_main else math.inf
            last = logged_at(self.out / "metrics.jsonl", self.step) if self.env.is_main else {}
            return TrainResult(str(self.out), self.step, self.tokens, last.get("loss"), last.get("val_loss"),
                               best_loss if math.isfinite(best_loss) else None, str(best) if best else None, None)
        created = self.env.is_main and not self.out.exists()
        if self.env.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            checkpoint.clean_partial(self.out)
            (self.out / "config.yaml").write_text(self.config.with_absolute_inputs().to_yaml())
        try:
            return self._train(progress)
        except TrainingDiverged:
            raise  # its records show how it diverged
        except BaseException:
            if self.env.is_main and not self.resumed and not checkpoint.list_checkpoints(self.out):
                discard_unsaved_run(self.out, created)
            raise

    def _train(self, progress: bool) -> TrainResult:
        """The steps of `run`, from the validation of the starting model (step 0) to the end."""
        args, every = self.config.train, self.config.eval.eval_every
        if self.step == 0:  # where training starts from, e.g. right after compression
            self.metrics.write({"step": 0, "tokens": 0, **self.validate()})
        bar = tqdm(total=args.max_steps, initial=self.step, desc="training", unit="step",
                   disable=not (progress and self.env.is_main))
        loss, scores, stopped_by = None, {}, None
        busy, busy_tokens = 0.0, 0  # seconds in training steps since the last log, and their tokens
        with StopSignals() as stop, bar:
            while self.step < args.max_steps:
                started = time.perf_counter()
                loss, grad_norm, lr, objective = self._train_step()
                busy, busy_tokens = busy + time.perf_counter() - started, busy_tokens + self.tokens_per_step
                self.step += 1
                self.tokens += self.tokens_per_step
                stopped_by = stop.agreed(self.device)  # the same on every rank
                finished = self.step == args.max_steps
                due = finished or (every > 0 and self.step % every == 0)
                scores = self.validate() if due else {}  # also when stopping: resumes must not skip it
                if scores or self.step % args.log_every == 0 or finished or stopped_by:
                    self._log(loss, grad_norm, lr, busy_tokens / max(busy, 1e-9), scores, objective)
                    busy, busy_tokens = 0.0, 0
                val_loss = scores.get("val_loss")
                if val_loss is not None and not math.isfinite(val_loss):
                    raise diverged(self.out, f"non-finite val_loss at step {self.step} ({val_loss})")
                improved = val_loss is not None and val_loss < self.best_val_loss
                self.best_val_loss = val_loss if improved else self.best_val_loss
                if improved or finished or stopped_by or self.step % self.config.checkpoint.save_every == 0:
                    self.save(val_loss)
                bar.set_postfix(loss=f"{loss:.4f}", **({"val": f"{val_loss:.4f}"} if val_loss is not None else {}),
                                refresh=False)  # shown by the update: the bar never pairs a step with the last loss
                bar.update(1)
                if stopped_by:
                    if self.env.is_main:  # on stderr: stdout may be carrying --json
                        mode = self.config.checkpoint.resume
                        again = ("rerun the same command" if mode == "auto"
                                 else f"rerun with --resume auto instead of --resume {mode}")
                        bar.write(f"{stopped_by}: saved step {self.step} to "
                                  f"{checkpoint.latest_checkpoint(self.out)}; {again} to resume", file=sys.stderr)
                    break
        self._compare_with_start()
        best = checkpoint.best_checkpoint(self.out) if self.env.is_main else None
        return TrainResult(str(self.out), self.step, self.tokens, loss, scores.get("val_loss"),
                           self.best_val_loss if math.isfinite(self.best_val_loss) else None,
                           str(best) if best else None, stopped_by)

    def _compare_with_start(self) -> None:
        """Say so when no checkpoint beats the model training started from (step 0's val_loss, which is not
        saved as a checkpoint): `best` is then only the least bad, e.g. after too high a learning rate."""
        start = logged_at(self.out / "metrics.jsonl", 0).get("val_loss") if self.env.is_main else None
        if start is not None and math.isfinite(self.best_val_loss) and self.best_val_loss >= start:
            self._say(f"note: no checkpoint has a val_loss below the starting model's ({self.best_val_loss:.4f} "
                      f"against {start:.4f} at step 0): training has not improved on it so far, and `best` is only "
                      "the least bad checkpoint (a lower --lr may help)")

    def _train_step(self) -> tuple[float, float, float, float | None]:
        """One optimizer step over `accumulation` micro-batches; returns (mean cross-entropy, grad norm, lr,
        mean distillation objective or None without a teacher)."""
        args = self.config.train
        lr = self.scheduler.get_last_lr()[0]
        per_rank = args.micro_batch_size * self.accumulation
        inputs, targets = sample_batch(self.train_tokens, per_rank * self.env.world_size, args.seq_len,
                                       self.data_generator)
        mine = slice(self.env.rank * per_rank, (self.env.rank + 1) * per_rank)
        inputs, targets = inputs[mine], targets[mine]
        total = total_ce = 0.0
        for i, (x, y) in enumerate(zip(inputs.split(args.micro_batch_size), targets.split(args.micro_batch_size),
                                       strict=True)):
            last = i == self.accumulation - 1
            with parallel.gradient_sync(self.model, last or not self.env.enabled):
                with self._autocast():
                    if self.graphed:
                        torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are used up
                    loss, ce = training_loss(self.model, self.teacher, x.to(self.device, non_blocking=True),
                                             y.to(self.device, non_blocking=True), self.config.distill)
                (loss / self.accumulation).backward()
            total += loss.item()
            total_ce += ce.item() if ce is not loss else 0.0
        loss_value, ce_value = distributed.mean_across_ranks([total / self.accumulation,
                                                              total_ce / self.accumulation], self.device)
        clip = self.config.optim.grad_clip
        grad_norm = parallel.full_norm(torch.nn.utils.clip_grad_norm_(self.params, clip if clip > 0 else math.inf))
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
            raise diverged(self.out, f"non-finite {'loss' if not math.isfinite(loss_value) else 'gradient norm'} at "
                                 f"step {self.step + 1} (loss {loss_value}, grad norm {grad_norm})")
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.teacher is None:
            return loss_value, grad_norm, lr, None
        return ce_value, grad_norm, lr, loss_value

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def validate(self) -> dict[str, float]:
        """{"val_loss": ...} on val.bin, plus "wikitext2_val_ppl" when configured (all ranks take part)."""
        scores = {"val_loss": self.val_loss()}
        if self.wikitext is not None:
            with self._autocast():
                scores["wikitext2_val_ppl"] = self.wikitext(self.raw, self.env.rank, self.env.world_size)
        return scores

    def val_loss(self, batches: int | None = None) -> float:
        """Token-weighted mean loss on the first `batches` (default: `eval_batches`) validation batches
        (shared out over ranks)."""
        args = self.config.train
        return validation.val_loss(self.raw, self.val_tokens, args.micro_batch_size, args.seq_len,
                                   batches or self.config.eval.eval_batches, self.env, self.device, self._autocast,
                                   self.sharded)

    def _log(self, loss: float, grad_norm: float, lr: float, tokens_per_s: float, scores: dict[str, float],
             objective: float | None = None) -> None:
        extra = {} if objective is None else {"distill_objective": objective}
        self.metrics.write({"step": self.step, "tokens": self.tokens, "loss": loss, **extra, "lr": lr,
                            "grad_norm": grad_norm, "tokens_per_s": tokens_per_s, **scores})

    def save(self, val_loss: float | None) -> None:
        """Checkpoint on rank 0, with every rank's RNG state; all ranks wait until it is on disk.

        A model that stopped being finite is never saved: a step's loss is computed before its update, so
        the weights it leaves, or the logits they give, may be non-finite while the loss was not. Without a
        `val_loss` of this step, the first validation batch tells."""
        if distributed.sum_across_ranks([float(not parallel.parameters_finite(self.raw))], self.device)[0]:
            raise diverged(self.out, f"non-finite weights after step {self.step}")
        probe = self.val_loss(batches=1) if val_loss is None else val_loss
        if not math.isfinite(probe):
            raise diverged(self.out, f"non-finite loss on val.bin after step {self.step} ({probe})")
        rng = distributed.gather_objects(checkpoint.rng_state())
        weights = parallel.model_state(self.raw)  # gathered from the shards (collective) when sharded
        optimizer = (parallel.optimizer_state(self.raw, self.optimizer)
                     if self.sharded or self.env.is_main else None)
        if self.env.is_main:
            state = {"step": self.step, "tokens": self.tokens, "best_val_loss": self.best_val_loss,
                     "optimizer": optimizer, "scheduler": self.scheduler.state_dict(),
                     "data_generator": self.data_generator.get_state(), "rng": rng, "world_size": self.env.world_size,
                     "tokens_per_step": self.tokens_per_step, "config": self.config.to_dict(),
                     "paths": resume.input_paths(self.config), "data_fingerprint": self.data_fingerprint}
            checkpoint.save_checkpoint(self.out, self.step, self.raw, state, val_loss, self.config.checkpoint.keep_last,
                                       self.tokenizer_dir, weights)
        distributed.barrier()

