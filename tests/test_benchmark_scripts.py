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


def test_sweep_dry_run_times_every_candidate_and_profiles(tmp_path: Path) -> None:
    from kronypt.kernels import gemm_path, v3

    out = tmp_path / "sweep.json"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "benchmarks/sweep.py", "--dry-run", "--json", str(out)], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    sizes = {"column": len(v3.SWEEP["column"]), "row": len(v3.SWEEP["row"])}
    assert [len(row["configs"]) for row in report["v3"]] == [sizes["column"], sizes["row"]]
    for row in report["v3"]:
        for config in row["configs"]:
            assert "error" not in config, config
            assert config["max_rel_err"] < 2e-2  # bf16 against float64 (interpreter truncates to bf16)
            assert config["l2_mb"] >= config["hbm_mb"] > 0
    passes = report["passes"]
    for kind, configs in gemm_path.SWEEP.items():
        assert len(passes[kind]) == len(configs)
        assert all("ms" in r for r in passes[kind]), passes[kind]
    variants = {(r["layer"], r["variant"]) for r in report["profile"] if "kernels_us" in r}
    assert variants == {(layer, v) for layer in ("c_fc", "c_proj") for v in ("dense", "fused_auto", "fused_v3")}
