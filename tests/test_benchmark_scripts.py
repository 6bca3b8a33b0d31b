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
    from kronypt.kernels import gemm_path, overrides, v3

    tuned = tmp_path / "tuned.json"
    report = _dry_run("sweep.py", tmp_path, "--write-configs", str(tuned))
    counts = [len(row["configs"]) for row in report["v3"]]
    assert counts[:2] + counts[3:4] == [len(v3.SWEEP[o]) for o in ("column", "row", "column3")]
    # the GELU case times the default and the 3 fastest candidates of the plain c_fc case
    gelu = report["v3"][2]
    fastest = [c["config"] for c in sorted(report["v3"][0]["configs"], key=lambda c: c["ms"])[:3]]
    assert gelu["configs"][0]["config"] == report["v3"][0]["configs"][0]["config"]  # the default first
    assert all(c["config"] in fastest for c in gelu["configs"][1:]) and counts[2] in (3, 4)
    for row in report["v3"]:
        for config in row["configs"]:
            assert "error" not in config, config
            assert config["max_rel_err"] < 2e-2  # bf16 against float64 (interpreter truncates to bf16)
            assert config["l2_mb"] >= config["hbm_mb"] > 0
    passes = report["passes"]
    for kind, configs in gemm_path.SWEEP.items():
        assert len(passes[kind]) == len(configs)
        assert all("ms" in r and r["max_rel_diff"] <= 1e-2 for r in passes[kind]), passes[kind]
    # the winners (timings on a CPU mean nothing, the file's form does): a configs file the kernels accept
    assert set(report["tuned"]) == {"v3", "gemm_path"}
    for orientation in v3.SWEEP:
        assert overrides.overridden("v3", v3.CONFIGS, tuned)[orientation].kwargs.keys() == v3.CONFIGS[
            orientation].kwargs.keys()
    assert json.loads(tuned.read_text())["measured"]["device"] == "cpu"
    variants = {(r["layer"], r["variant"]) for r in report["profile"] if "kernels_us" in r}
    assert variants == {(layer, v) for layer in ("c_fc", "c_proj") for v in ("dense", "fused_auto", "fused_v2")}


def test_gpu_benchmark_dry_run_covers_every_path_and_model_variant(tmp_path: Path) -> None:
    report = _dry_run("gpu.py", tmp_path)
    paths = {"dense", "materialised", "factored", "fused_v1", "fused"}
    for layer in report["layers"]:
        got = set(layer["paths"])
        assert paths <= got, layer["name"]
        assert ("fused_v2" in got) == (layer["tokens"] > 16), layer["name"]  # v2 forced where auto runs v3
        for name, row in layer["paths"].items():
            assert "error" not in row, (layer["name"], name, row["error"])
            assert row["max_rel_err"] < 2e-2, (layer["name"], name)
            assert all(e < 3e-2 for e in row.get("grad_rel_err", {}).values()), (layer["name"], name)
        assert layer["auto"]["fwd"]["path"] in ("materialised", "factored_a_first", "factored_b_first", "fused")
    variants = report["model"]["variants"]
    assert set(variants) == {"dense", "kron_auto", "kron_fused", "kron_v2"}
    for row in variants.values():
        assert not [k for k in row if k.endswith("_error")], row
        assert row["train_tokens_per_s"] > 0 and row["prefill_tokens_per_s"] > 0 and row["decode_ms"] > 0
