"""The GPU benchmark scripts run end to end on the CPU (Triton's interpreter, tiny shapes).

Device time is scarce (a few minutes per session, by chance): a script that breaks on an API change must
fail here, not on the GPU. The numbers are meaningless on a CPU; the structure and the numerics are not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

from tests.conftest import benchmark_module  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _dry_run(script: str, tmp_path: Path, *extra: str) -> dict:
    """The script's --dry-run under Triton's interpreter; its JSON report."""
    out = tmp_path / "report.json"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, f"benchmarks/{script}", "--dry-run", "--json", str(out), *extra],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_sweep_dry_run_times_every_candidate_and_profiles(tmp_path: Path) -> None:
    from kronypt.kernels import overrides

    candidates = benchmark_module("kernel_tools.candidates")
    tuned = tmp_path / "tuned.json"
    report = _dry_run("sweep.py", tmp_path, "--write-configs", str(tuned))
    counts = [len(row["configs"]) for row in report["forward"]]
    assert counts[:2] + counts[3:4] == [len(candidates.FORWARD[o]) for o in ("column", "row", "column3")]
    # the GELU case times the default and the 3 fastest candidates of the plain c_fc case
    gelu = report["forward"][2]
    fastest = [c["config"] for c in sorted(report["forward"][0]["configs"], key=lambda c: c["ms"])[:3]]
    assert gelu["configs"][0]["config"] == report["forward"][0]["configs"][0]["config"]  # the default first
    assert all(c["config"] in fastest for c in gelu["configs"][1:]) and counts[2] in (3, 4)
    for row in report["forward"]:
        for config in row["configs"]:
            assert "error" not in config, config
            assert config["max_rel_err"] < 2e-2  # bf16 against float64 (interpreter truncates to bf16)
            assert config["l2_mb"] >= config["hbm_mb"] > 0
    reduce = report["reduce"]["configs"]
    assert len(reduce) == len(candidates.REDUCE)
    assert all("ms" in r and r["max_rel_diff"] <= 1e-2 for r in reduce), reduce
    # the winners (timings on a CPU mean nothing, the file's form does): a configs file the kernels accept
    forward, backward = overrides.SECTIONS
    assert set(report["tuned"]) == {forward, backward}
    defaults = candidates.FORWARD  # each list starts with the built-in default
    for orientation, configs in defaults.items():
        got = overrides.overridden(forward, {o: c[0] for o, c in defaults.items()}, tuned)[orientation]
        assert got.kwargs.keys() == configs[0].kwargs.keys()
    assert json.loads(tuned.read_text())["measured"]["device"] == "cpu"
    variants = {(r["layer"], r["variant"]) for r in report["profile"] if "kernels_us" in r}
    assert variants == {(layer, v) for layer in ("c_fc", "c_proj") for v in ("dense", "fused_auto", "fused_general")}


def test_gpu_benchmark_dry_run_covers_every_path_and_model_variant(tmp_path: Path) -> None:
    report = _dry_run("gpu.py", tmp_path)
    paths = {"dense", "materialised", "factored", "fused"}
    for layer in report["layers"]:
        got = set(layer["paths"])
        assert paths <= got, layer["name"]
        # the general kernels forced where "auto" runs the vector-B ones (the dry shapes' B: 4x1, 1x4)
        assert ("fused_general" in got) == (layer["tokens"] > 16), layer["name"]
        for name, row in layer["paths"].items():
            assert "error" not in row, (layer["name"], name, row["error"])
            assert row["max_rel_err"] < 2e-2, (layer["name"], name)
            assert all(e < 3e-2 for e in row.get("grad_rel_err", {}).values()), (layer["name"], name)
        assert layer["auto"]["fwd"]["path"] in ("materialised", "factored_a_first", "factored_b_first", "fused")
    variants = report["model"]["variants"]
    assert set(variants) == {"dense", "kron_auto", "kron_fused"}
    for row in variants.values():
        assert not [k for k in row if k.endswith("_error")], row
        assert row["train_tokens_per_s"] > 0 and row["prefill_tokens_per_s"] > 0 and row["decode_ms"] > 0


def test_roofline_of_the_one_kernel_forward_is_the_memory_floor_for_81m() -> None:
    from kronypt.math.shapes import kron_shape

    roofline = benchmark_module("kernel_tools.roofline")
    shape, tokens = kron_shape(3072, 768, (768, 768)), 65536
    floor = 2 * (tokens * (768 + 3072) + shape.params(1)) / 3.0e12 + 4e-6  # bf16 bytes over 3 TB/s + launch
    p = roofline.predict(shape, 1, tokens, training=False)
    assert p["fused_general"] == pytest.approx(floor) == p["fused"]
    assert floor < p["dense"] < p["materialised"]
    # training: the vector-B backward (reduce + GEMMs) is predicted below the general one (token reductions)
    t = roofline.predict(shape, 1, tokens, training=True)
    assert t["fused"] < t["fused_general"]
    assert roofline.predict(shape, 1, 16, training=True)["fused"] == roofline.predict(shape, 1, 16, True)[
        "fused_general"]  # decode-sized calls run the general kernels


def test_vector_b_l2_traffic_falls_with_wider_tiles() -> None:
    from kronypt.math.shapes import kron_shape

    traffic = benchmark_module("kernel_tools.roofline").vector_b_traffic
    c_fc, c_proj = kron_shape(3072, 768, (768, 768)), kron_shape(768, 3072, (768, 768))
    tokens = 65536
    t = traffic(c_fc, tokens, 128, 128)
    assert t["hbm"] == 2 * (tokens * (768 + 3072) + 768 * 768)
    # x read by 6 A-row blocks, A by 512 token tiles, y stored once
    assert t["l2"] == 2 * (tokens * 768 * 6 + 768 * 768 * 512 + tokens * 3072)
    assert traffic(c_fc, tokens, 256, 128)["l2"] < t["l2"]
    # c_proj: its wide x dominates, so wider A blocks are what cut the traffic
    assert traffic(c_proj, tokens, 128, 256)["l2"] < traffic(c_proj, tokens, 256, 128)["l2"]
    # three 256-row accumulators per program: each token tile's x loaded once (not 3 times), A as before
    split = traffic(c_proj, tokens, 64, 256, split=3)
    assert split["l2"] == 2 * (tokens * 3072 + 768 * 768 * 1024 + tokens * 768)
    assert traffic(c_proj, tokens, 64, 256)["l2"] - split["l2"] == 2 * 2 * tokens * 3072
