"""Kernel tiles tuned on the user's card (`kronypt.kernels.overrides`) and how `benchmarks/sweep.py`
chooses them: the file's format, its errors, and that the kernels pick it up from the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

from kronypt.errors import KronyptError  # noqa: E402
from kronypt.kernels import overrides  # noqa: E402
from tests.conftest import benchmark_module  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FORWARD, BACKWARD = overrides.SECTIONS  # "vector_b_forward", "vector_b_backward"
DEFAULTS = {
    "column": triton.Config({"BLOCK_T": 128, "BLOCK_A": 128, "BLOCK_C": 64, "EPI": 4, "SPLIT": 1}, num_warps=16,
                            num_stages=3),
    "row": triton.Config({"BLOCK_T": 64, "BLOCK_A": 256, "BLOCK_C": 32, "EPI": 1, "SPLIT": 1}, num_warps=8,
                         num_stages=3),
}


def _write(tmp_path: Path, payload: object) -> Path:
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps(payload))
    return path


def test_no_file_keeps_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(overrides.ENV, raising=False)
    assert overrides.overridden(FORWARD, DEFAULTS) == DEFAULTS


def test_an_entry_replaces_only_the_keys_it_names(tmp_path: Path) -> None:
    path = _write(tmp_path, {FORWARD: {"column": {"SPLIT": 2, "warps": 8}}, "measured": {"device": "H100"}})
    got = overrides.overridden(FORWARD, DEFAULTS, path)
    assert got["row"] is DEFAULTS["row"]
    column = got["column"]
    assert column.kwargs == {**DEFAULTS["column"].kwargs, "SPLIT": 2}
    assert (column.num_warps, column.num_stages) == (8, 3)
    assert overrides.overridden(BACKWARD, {"reduce": DEFAULTS["row"]}, path)["reduce"] is DEFAULTS["row"]


def test_written_file_reads_back(tmp_path: Path) -> None:
    tuned = triton.Config({**DEFAULTS["row"].kwargs, "SPLIT": 3, "BLOCK_C": 64}, num_warps=4, num_stages=2)
    path = tmp_path / "out" / "tuned.json"
    overrides.write(path, {FORWARD: {"row": tuned}}, {"device": "test"})
    got = overrides.overridden(FORWARD, DEFAULTS, path)["row"]
    assert (got.kwargs, got.num_warps, got.num_stages) == (tuned.kwargs, 4, 2)
    assert json.loads(path.read_text())["measured"] == {"device": "test"}


@pytest.mark.parametrize(("payload", "message"), [
    ({FORWARD: {"column": {"BLOCK_X": 64}}}, "unknown key(s) BLOCK_X"),
    ({FORWARD: {"column": {"TMA": 1}}}, "unknown key(s) TMA"),
    ({FORWARD: {"column": {"BLOCK_T": "128"}}}, "BLOCK_T must be non-negative integers"),
    ({FORWARD: {"column": {"warps": True}}}, "warps must be non-negative integers"),
    ({FORWARD: {"column": {"BLOCK_A": 24}}}, "BLOCK_A must be a power of two, got 24"),
    ({FORWARD: {"column": {"BLOCK_T": 0}}}, "BLOCK_T must be a power of two, got 0"),
    ({FORWARD: {"column": {"EPI": 3}}}, "EPI must be 1, 2 or 4, got 3"),
    ({FORWARD: {"row": {"SPLIT": 5}}}, "SPLIT must be 1, 2, 3 or 4, got 5"),
    ({FORWARD: {"column": {"warps": 64}}}, "warps must be a power of two up to 32, got 64"),
    ({FORWARD: {"column": {"stages": 0}}}, "stages must be >= 1, got 0"),
    ({FORWARD: {"diagonal": {}}}, f"unknown {FORWARD} kernel(s) diagonal"),
    ({FORWARD: {"column": [128, 128]}}, "expected an object of block sizes"),
    ({"v3": {}}, "unknown section(s) v3"),
    ([1, 2], "expected a JSON object"),
])
def test_bad_files_give_one_line_errors(tmp_path: Path, payload: object, message: str) -> None:
    with pytest.raises(KronyptError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        overrides.overridden(FORWARD, DEFAULTS, _write(tmp_path, payload))
    assert "\n" not in str(info.value) and overrides.ENV in str(info.value)


def test_missing_or_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(KronyptError, match="no such file"):
        overrides.overridden(FORWARD, DEFAULTS, tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(KronyptError, match="not a readable JSON file"):
        overrides.overridden(FORWARD, DEFAULTS, bad)


def _kernel_defaults(env_value: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != overrides.ENV}
    env.update(TRITON_INTERPRET="1", PYTHONWARNINGS="ignore")
    if env_value is not None:
        env[overrides.ENV] = env_value
    code = ("import json; from kronypt.kernels import vector_b_backward as bwd, vector_b_forward as fwd; "
            "from kronypt.kernels.overrides import config_dict as d; print(json.dumps({'column': "
            "d(fwd.CONFIGS['column']), 'reduce': d(bwd.REDUCE), 'default': d(fwd.DEFAULTS['column']), "
            "'reduce_default': d(bwd.REDUCE_DEFAULT)}))")
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_kernels_read_the_file_the_environment_names(tmp_path: Path) -> None:
    path = _write(tmp_path, {FORWARD: {"column": {"BLOCK_T": 32}},
                             BACKWARD: {"reduce": {"SUM_EACH": 1, "PER_SM": 4}}})
    before, after = _kernel_defaults(None), _kernel_defaults(str(path))
    assert before.returncode == 0 and after.returncode == 0, before.stderr + after.stderr
    before, after = json.loads(before.stdout), json.loads(after.stdout)
    assert after["column"] == {**before["column"], "BLOCK_T": 32}
    assert after["reduce"] == {**before["reduce"], "SUM_EACH": 1, "PER_SM": 4}
    # the built-in defaults stay what the sweep times first
    assert after["default"] == before["default"] == before["column"]
    assert after["reduce_default"] == before["reduce_default"] == before["reduce"]
    broken = _kernel_defaults(str(tmp_path / "missing.json"))
    assert broken.returncode != 0 and "KronyptError" in broken.stderr and "no such file" in broken.stderr


def test_sweep_replaces_a_default_only_when_a_candidate_wins_everywhere_by_the_margin() -> None:
    sweep = benchmark_module("sweep")
    d = sweep._config_dict
    col, row, reduce = sweep.FORWARD["column"], sweep.FORWARD["row"], sweep.REDUCE

    def case(orientation: str, times: dict[int, float], wrong: int | None = None) -> dict:
        candidates = sweep.FORWARD[orientation]
        return {"orientation": orientation, "configs": [
            {"config": d(candidates[i]), "ms": ms, "max_rel_err": 0.5 if i == wrong else 4e-3}
            for i, ms in times.items()]}

    report = {"forward": [
        # column: candidate 2 is 1.25x and 1.10x the default's speed (geomean 1.17); candidate 1 is faster
        # in the first case only and missing from the second, so it cannot win; candidate 3 is fastest in
        # both but its output was wrong in one
        case("column", {0: 1.0, 1: 0.5, 2: 0.8, 3: 0.4}, wrong=3), case("column", {0: 1.0, 2: 1 / 1.1, 3: 0.4}),
        # row: the best candidate is only 3 % faster: the default stays
        case("row", {0: 1.0, 1: 0.97, 2: 1.2}),
    ], "reduce": {"configs": [
        {"config": d(c), "ms": 1.0 if i == 0 else 0.5 if i == 11 else 0.3 if i == 12 else 1.1,
         "max_rel_diff": 0.2 if i == 12 else 0.0} for i, c in enumerate(reduce)]}}
    chosen, why = sweep.tuned_configs(report)
    assert chosen[FORWARD] == {"column": col[2]}
    assert why[FORWARD]["column"]["speedup_over_default"] == pytest.approx((1.25 * 1.1) ** 0.5)
    assert why[FORWARD]["row"]["best"] == d(row[1]) and "row" not in chosen[FORWARD]
    # reduce: 12 (fastest) differs from the default's outputs, so 11 wins
    assert chosen[BACKWARD] == {"reduce": reduce[11]}
    # a report where every reduce candidate ties: the default is kept
    tie = {"forward": [], "reduce": {"configs": [{"config": d(c), "ms": 1.0, "max_rel_diff": 0.0} for c in reduce]}}
    assert sweep.tuned_configs(tie)[0] == {FORWARD: {}, BACKWARD: {}}
