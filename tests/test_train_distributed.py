"""Two CPU processes under torchrun (gloo) train like one process with the same global batch, with DDP
(replicas) and with FSDP (sharded parameters), and their checkpoints resume anywhere."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, TOKENIZER_DIR, requires_shared, tiny_model
from safetensors.torch import load_file
from test_train_support import cli_args, dense_settings, scratch_settings, subprocess_env

from kronypt.models import load_model
from kronypt.nn import KroneckerLinear
from kronypt.train import TrainConfig, distributed, parallel, train
from kronypt.train.checkpoint import list_checkpoints, load_state
from kronypt.train.metrics import read_metrics
from kronypt.train.wikitext import WikiTextValidation


def _kronecker_settings(tmp_path: Path, **overrides) -> dict:
    """A tiny dense GPT-2 compressed on the fly (k = 1, so FSDP shards a size-1 leading dim unevenly)."""
    return dense_settings(tmp_path, **{"init": "van-loan", "scalars": True, "dropout": 0.0, "micro_batch_size": 2,
                                       "tokens_per_step": 128, "eval_every": 2, "save_every": 2, **overrides})


def _torchrun(settings: dict, *extra: str) -> None:
    """`torchrun -m kronypt train ...` on 2 CPU ranks (gloo), as docs/training.md shows it."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "kronypt", "train", *cli_args(settings), *extra, "--json"]
    done = subprocess.run(command, env=subprocess_env(threads=1), capture_output=True, text=True, timeout=240)
    if done.returncode != 0 and "gloo" in done.stderr.lower() and "unavailable" in done.stderr.lower():
        pytest.skip("gloo is unavailable in this torch build")
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_run_folder_in_use_is_refused_on_every_rank(tmp_path: Path) -> None:
    """Only rank 0 takes the run folder's lock; the other ranks used to go on into the process group and die
    there with a gloo traceback once rank 0 had stopped. Each rank now stops with the one-line refusal."""
    from kronypt.train.lock import run_folder_lock

    settings = scratch_settings(tmp_path, max_steps=2)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "kronypt", "train", *cli_args(settings)]
    with run_folder_lock(settings["out"]):  # as another training process holds it
        done = subprocess.run(command, env=subprocess_env(threads=1), capture_output=True, text=True, timeout=240)
    assert done.returncode != 0
    assert done.stderr.count("is in use by another training process") == 2, done.stderr[-3000:]
    assert "Connection closed" not in done.stderr and "[rank1]" not in done.stderr, done.stderr[-3000:]


def _torchrun_script(tmp_path: Path, name: str, source: str, ranks: int = 2) -> None:
    """Run `source` (a script given `tmp_path` as its argument) on `ranks` gloo processes; it must succeed."""
    script = tmp_path / name
    script.write_text(source)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
               str(script), str(tmp_path)]
    done = subprocess.run(command, env=subprocess_env(threads=1), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]


def _assert_same_records(got: list[dict], expected: list[dict]) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in expected]
    for mine, ref in zip(got, expected, strict=True):
        assert mine["tokens"] == ref["tokens"] and mine.keys() == ref.keys()
        for key in ("loss", "grad_norm", "val_loss"):
            if key in ref:
                assert mine[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-5), (key, mine, ref)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gloo_ranks_match_one_process_and_resume_on_one(tmp_path: Path, strategy: str) -> None:
    # 4 sequences per step: one process runs 2 micro-batches of 2, each of the two ranks runs one.
    settings = _kronecker_settings(tmp_path)
    single = train(TrainConfig().with_overrides({**settings, "max_steps": 6, "out": str(tmp_path / "single")}),
                   progress=False)
    multi = tmp_path / strategy
    _torchrun({**settings, "max_steps": 4, "out": str(multi), "parallel": strategy})

    reference = read_metrics(tmp_path / "single" / "metrics.jsonl")
    _assert_same_records(read_metrics(multi / "metrics.jsonl"), reference[:5])  # rank 0 logs, once per step
    assert [p.name for p in list_checkpoints(multi)] == ["step-00000002", "step-00000004"]

    model_dir, state = load_state(multi / "latest")
    assert state["world_size"] == 2 and all(isinstance(key, str) for key in state["optimizer"]["state"])
    saved = load_model(str(model_dir))  # a plain Hugging Face folder, whatever the strategy
    assert any(isinstance(m, KroneckerLinear) for m in saved.modules())

    # The 2-rank checkpoint resumes in one process and ends where the single run ended.
    resumed = train(TrainConfig().with_overrides({**settings, "max_steps": 6, "out": str(multi)}), progress=False)
    assert (resumed.step, single.step) == (6, 6)
    _assert_same_records(read_metrics(multi / "metrics.jsonl"), reference)
    straight = load_file(tmp_path / "single" / "latest" / "model" / "model.safetensors")
    again = load_file(multi / "latest" / "model" / "model.safetensors")
    assert straight.keys() == again.keys()
    for key in straight:
        torch.testing.assert_close(again[key], straight[key], rtol=1e-4, atol=1e-5)


def test_one_process_checkpoint_resumes_sharded(tmp_path: Path) -> None:
    settings = {**_kronecker_settings(tmp_path), "tokens_per_step": 256}  # 2 ranks x 2 accumulated micro-batches
    train(TrainConfig().with_overrides({**settings, "max_steps": 4, "out": str(tmp_path / "single")}),
          progress=False)
    out = tmp_path / "resumed"
    train(TrainConfig().with_overrides({**settings, "max_steps": 2, "out": str(out)}), progress=False)
    _torchrun({**settings, "max_steps": 4, "out": str(out), "parallel": "fsdp"})
    _assert_same_records(read_metrics(out / "metrics.jsonl"), read_metrics(tmp_path / "single" / "metrics.jsonl"))


def test_unknown_strategy_is_refused(tmp_path: Path) -> None:
    config = TrainConfig().with_overrides({**_kronecker_settings(tmp_path), "parallel": "zero3"})
    with pytest.raises(Exception, match="unknown parallel 'zero3'; choose one of ddp, fsdp"):
        config.validate()


SHARD_REPORT = """
import json, sys
from pathlib import Path
from test_train_distributed import _kronecker_settings
from kronypt.train import TrainConfig, distributed
from kronypt.train.loop import Trainer

tmp = Path(sys.argv[1])
config = TrainConfig().with_overrides({**_kronecker_settings(tmp), "parallel": "fsdp", "out": str(tmp / "o"),
                                      "tokens_per_step": None})  # one micro-batch per rank, any count
env, device = distributed.setup("cpu")
trainer = Trainer(config, env, device)
local = {name: p.to_local().numel() for name, p in trainer.raw.named_parameters()}
full = {name: p.numel() for name, p in trainer.raw.named_parameters()}
(tmp / f"report-{env.rank}.json").write_text(json.dumps({"local": local, "full": full}))
distributed.teardown()
"""


@pytest.mark.parametrize("ranks", [2, 3])
def test_fsdp_shards_tile_every_parameter(tmp_path: Path, ranks: int) -> None:
    # 2 ranks: every dimension of the 16x8 / 8x4 factors divides evenly, so every rank holds a share of
    # every matrix, k = 1 factors (1, m, n) included. 3 ranks: none does, and FSDP2 cuts unevenly only
    # along the first dimension: the run must still start, with the shares tiling each parameter.
    _kronecker_settings(tmp_path)  # the dense folder and tokens, made once here
    _torchrun_script(tmp_path, "report.py", SHARD_REPORT, ranks=ranks)
    reports = [json.loads((tmp_path / f"report-{rank}.json").read_text()) for rank in range(ranks)]
    full = reports[0]["full"]
    assert any(name.endswith("c_fc.A") for name in full)
    for name, size in full.items():
        held = [r["local"][name] for r in reports]
        assert sum(held) == size, name  # the shards tile the parameter
        if ranks == 2 and name.endswith((".A", ".B", ".weight")) and size >= 2:
            assert min(held) > 0, (name, held)


@pytest.mark.parametrize("ranks", [3, 4, 8])
@pytest.mark.parametrize("shape", [(1, 768, 768), (1, 4, 1), (1, 1, 4), (1, 2, 1), (4, 256, 64), (1, 3, 3)])
def test_factor_placement_only_cuts_unevenly_along_the_first_dimension(monkeypatch, ranks, shape):
    # The 81M / 96M-prune / 92M-4 / MF2 factor shapes at the usual rank counts (FSDP2 refuses an uneven cut
    # of any other dimension, so those must divide by the number of ranks).
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: ranks)
    placement = parallel._placement(torch.nn.Parameter(torch.empty(shape)))
    if placement is None:
        return  # FSDP's default: the first dimension, any size
    assert placement.dim > 0 and shape[placement.dim] % ranks == 0
    assert shape[0] < ranks  # only moved off the first dimension when it is too short


ONE_RANK_SIGNALLED = """
import json, os, signal, sys
from pathlib import Path
import torch
from transformers import GPT2LMHeadModel
from test_train_support import scratch_settings, tiny_gpt2
from kronypt.train import TrainConfig, train

tmp = Path(sys.argv[1])
config = TrainConfig().with_overrides({**scratch_settings(tmp), "max_steps": 50, "save_every": 100,
                                       "eval_every": 0, "dropout": 0.0, "out": str(tmp / "run")})
torch.manual_seed(0)
model = GPT2LMHeadModel(tiny_gpt2())
rank = int(os.environ["RANK"])
calls = []

def hook(module, args, output):
    calls.append(module.training)
    if rank == 1 and module.training and sum(calls) == 3:  # rank 1 only, during step 3
        os.kill(os.getpid(), signal.SIGTERM)

model.register_forward_hook(hook)
result = train(config, model=model, progress=False)
(tmp / f"result-{rank}.json").write_text(json.dumps(result.to_json()))
"""


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path: Path) -> None:
    scratch_settings(tmp_path)  # the token folder and model config, made once here
    _torchrun_script(tmp_path, "signal_one.py", ONE_RANK_SIGNALLED)
    results = [json.loads((tmp_path / f"result-{rank}.json").read_text()) for rank in (0, 1)]
    assert [(r["step"], r["stopped_by"]) for r in results] == [(3, "SIGTERM"), (3, "SIGTERM")]
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-00000003"]


BF16_FSDP = """
import json, sys
from pathlib import Path
from test_train_distributed import _kronecker_settings
from kronypt.train import TrainConfig, train

tmp = Path(sys.argv[1])
seen = set()

def record(module, args):
    seen.update(str(p.dtype) for p in module.parameters(recurse=False))

import kronypt.train.loop as loop
build = loop.Trainer.__init__

def init(self, *a, **k):
    build(self, *a, **k)
    mlp = self.raw.transformer.h[0].mlp
    mlp.c_fc.register_forward_pre_hook(record)
    stored = {str(p.dtype) for p in self.raw.parameters()}
    (tmp / "stored.json").write_text(json.dumps(sorted(stored)))

loop.Trainer.__init__ = init
train(TrainConfig().with_overrides({**_kronecker_settings(tmp), "max_steps": 3, "out": str(tmp / "fsdp"),
                                    "parallel": "fsdp", "precision": "bf16"}), progress=False)
(tmp / "seen.json").write_text(json.dumps(sorted(seen)))
"""


def test_bf16_fsdp_gathers_bf16_weights_keeps_float32_shards_and_trains_like_one_process(tmp_path: Path) -> None:
    settings = _kronecker_settings(tmp_path, precision="bf16")
    single = tmp_path / "single"
    train(TrainConfig().with_overrides({**settings, "max_steps": 3, "out": str(single)}), progress=False)
    _torchrun_script(tmp_path, "bf16_fsdp.py", BF16_FSDP)
    assert json.loads((tmp_path / "seen.json").read_text()) == ["torch.bfloat16"]  # the all-gathered weights
    assert json.loads((tmp_path / "stored.json").read_text()) == ["torch.float32"]  # the shards (and AdamW)
    got, expected = read_metrics(tmp_path / "fsdp" / "metrics.jsonl"), read_metrics(single / "metrics.jsonl")
    assert [r["step"] for r in got] == [r["step"] for r in expected]
    for mine, ref in zip(got, expected, strict=True):  # bf16 weights instead of autocast's casts: close only
        assert mine.keys() == ref.keys()
        for key in {"loss", "val_loss"} & ref.keys():
            assert mine[key] == pytest.approx(ref[key], rel=2e-2), (key, mine, ref)


WIKITEXT_FROM_RANK_0 = """
import json, sys
from pathlib import Path
from conftest import TOKENIZER_DIR, tiny_model
import kronypt.eval.corpora as corpora
import kronypt.train.wikitext as wikitext
from kronypt.errors import KronyptError
from kronypt.eval.protocols import KronyPT
from kronypt.train import distributed

tmp = Path(sys.argv[1])
env, _ = distributed.setup("cpu")
counts = {"read": 0, "tokenizer": 0, "tokenise": 0}

def counted(name, fn):
    def call(*args, **kwargs):
        counts[name] += 1
        return fn(*args, **kwargs)
    return call

corpora._read_local = counted("read", corpora._read_local)
wikitext.load_tokenizer = counted("tokenizer", wikitext.load_tokenizer)
KronyPT.plan = counted("tokenise", KronyPT.plan)
validation = wikitext.WikiTextValidation(str(tmp / "data"), str(TOKENIZER_DIR), seq_len=32, batch_size=4,
                                         max_tokens=300)
ppl = validation(tiny_model(), env.rank, env.world_size)

def fail():
    raise KronyptError("cannot load WikiText on rank 0")

try:  # rank 0's error is raised on every rank (the others' function is never called)
    distributed.from_main_rank(fail if env.rank == 0 else lambda: 1 / 0)
    error = None
except KronyptError as exc:
    error = str(exc)
try:  # a result rank 0 cannot send (a local function) is an error on every rank, not a wait
    distributed.from_main_rank(lambda: (lambda: 0))
    unsendable = None
except Exception as exc:
    unsendable = type(exc).__name__
report = {"counts": counts, "ids": validation.plan.sequences[0].tolist(), "requests": len(validation.plan.requests),
          "ppl": ppl, "error": error, "unsendable": unsendable}
(tmp / f"wikitext-{env.rank}.json").write_text(json.dumps(report))
distributed.teardown()
"""


@requires_shared
def test_only_rank_0_reads_and_tokenises_wikitext_and_every_rank_gets_its_ids(tmp_path: Path) -> None:
    data = tmp_path / "data" / "wikitext-2"  # the first 60 rows of the validation split: quicker to tokenise
    data.mkdir(parents=True)
    rows = (SHARED_DATA / "wikitext-2" / "wiki.valid.tokens").read_text(encoding="utf-8").split("\n")[:60]
    (data / "wiki.valid.tokens").write_text("\n".join(rows) + "\n", encoding="utf-8")
    _torchrun_script(tmp_path, "wikitext.py", WIKITEXT_FROM_RANK_0)
    reports = [json.loads((tmp_path / f"wikitext-{rank}.json").read_text()) for rank in (0, 1)]
    assert reports[0]["counts"] == {"read": 1, "tokenizer": 1, "tokenise": 1}
    assert reports[1]["counts"] == {"read": 0, "tokenizer": 0, "tokenise": 0}
    single = WikiTextValidation(str(tmp_path / "data"), str(TOKENIZER_DIR), seq_len=32, batch_size=4, max_tokens=300)
    ids = single.plan.sequences[0].tolist()
    assert len(ids) == 300 and distributed.from_main_rank(lambda: "no group") == "no group"
    assert reports[0]["ids"] == reports[1]["ids"] == ids
    assert reports[0]["requests"] == reports[1]["requests"] == len(single.plan.requests)
    assert reports[0]["ppl"] == reports[1]["ppl"] == pytest.approx(single(tiny_model()), rel=1e-5)
    assert [r["error"] for r in reports] == ["cannot load WikiText on rank 0"] * 2
    assert reports[0]["unsendable"] and reports[0]["unsendable"] == reports[1]["unsendable"], reports
