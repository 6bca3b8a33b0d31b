"""`kronypt plot` and `kronypt.report`: curves of real (tiny) training runs, size-quality panels of eval
records, and their errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_cli import assert_one_line_error, run
from test_train_support import scratch_config

from kronypt.eval import EvalRecord, write_json
from kronypt.report import (
    curves_figure,
    load_eval_records,
    load_run,
    run_summary,
    smooth,
    tradeoff_figure,
    tradeoff_panels,
)
from kronypt.train import train
from kronypt.train.metrics import read_metrics

matplotlib = pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two short from-scratch runs with different learning rates (validation every 4 steps)."""
    tmp = tmp_path_factory.mktemp("runs")
    runs = []
    for name, lr in (("fast", 3e-3), ("slow", 1e-4)):
        out = tmp / name
        train(scratch_config(tmp, out=str(out), lr=lr, max_steps=8), progress=False)
        runs.append(out)
    return runs[0], runs[1]


def test_summary_and_series_come_from_the_run_s_metrics(two_runs) -> None:
    fast, _ = two_runs
    run = load_run(fast)
    records = read_metrics(fast / "metrics.jsonl")
    validated = [r for r in records if "val_loss" in r]
    summary = run_summary(run)
    assert summary["run"] == "fast" and summary["step"] == 8 and summary["tokens"] == 8 * 128
    assert summary["best_val_loss"] == min(r["val_loss"] for r in validated)
    assert summary["best_val_step"] == min(validated, key=lambda r: r["val_loss"])["step"]
    assert summary["last_loss"] == [r["loss"] for r in records if "loss" in r][-1]
    assert summary["last_wikitext2_val_ppl"] is None  # not configured
    xs, ys = run.series("val_loss", "step")
    assert xs == [r["step"] for r in validated] and ys == [r["val_loss"] for r in validated]
    assert {"loss", "val_loss", "lr", "grad_norm"} <= set(run.metrics())
    assert load_run(fast / "metrics.jsonl", label="x").records == run.records


def test_curves_figure_draws_each_run_in_each_panel(two_runs) -> None:
    runs = [load_run(path) for path in two_runs]
    figure = curves_figure(runs, ["loss", "val_loss"], x="tokens", smoothing=0.5)
    axes = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["train loss", "val loss (val.bin)"]
    for ax, metric in zip(axes, ["loss", "val_loss"], strict=True):
        labelled = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
        assert [line.get_label() for line in labelled] == ["fast", "slow"]
        for line, one in zip(labelled, runs, strict=True):
            xs, ys = one.series(metric, "tokens")
            assert list(line.get_xdata()) == xs
            expected = _debiased_ema(ys, 0.5) if metric == "loss" else ys  # only the training loss is smoothed
            assert list(line.get_ydata()) == pytest.approx(expected, rel=1e-12)
            if metric == "loss":  # the losses fall, so smoothing visibly changes them: raw data would not pass
                assert max(abs(s - y) for s, y in zip(expected, ys, strict=True)) > 1e-3
        raw = [list(line.get_ydata()) for line in ax.get_lines() if line.get_label().startswith("_")]
        # the smoothed loss is drawn over its faint raw curve; unsmoothed metrics have no second line
        assert raw == ([one.series("loss", "tokens")[1] for one in runs] if metric == "loss" else [])


def _debiased_ema(values: list[float], weight: float) -> list[float]:
    """Reference for `smooth`, in closed form rather than as a recursion: point i is the average of the
    values so far weighted by weight**age, s_i = sum_j w^(i-j) x_j / sum_j w^(i-j)."""
    out = []
    for i in range(len(values)):
        weights = [weight ** (i - j) for j in range(i + 1)]
        out.append(sum(w * x for w, x in zip(weights, values, strict=False)) / sum(weights))
    return out


def test_smoothing_matches_hand_computed_values() -> None:
    """TensorBoard's debiased EMA, by hand. weight 0.5 on [1, 2, 3]: the running averages are 0.5, 1.25, 2.125
    and the bias corrections 1 - 0.5^i are 0.5, 0.75, 0.875, so 1, 5/3, 17/7. weight 0.9 on [2, 0]:
    0.2 / 0.1 = 2, then 0.18 / 0.19 = 18/19."""
    assert smooth([1.0, 2.0, 3.0], 0.5) == pytest.approx([1.0, 5 / 3, 17 / 7], rel=1e-12)
    assert smooth([2.0, 0.0], 0.9) == pytest.approx([2.0, 18 / 19], rel=1e-12)
    assert smooth([], 0.5) == []


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50), st.floats(0, 0.99))
def test_smoothing_is_a_debiased_moving_average(values, weight) -> None:
    smoothed = smooth(values, weight)
    assert smoothed[0] == pytest.approx(values[0])  # debiased: the first point is the first value
    assert min(values) - 1e-6 * (1 + abs(min(values))) <= min(smoothed)
    assert max(smoothed) <= max(values) + 1e-6 * (1 + abs(max(values)))
    assert smooth([values[0]] * len(values), weight) == pytest.approx([values[0]] * len(values))
    assert smooth(values, 0.0) == pytest.approx(values)
    scale = 1 + max(abs(v) for v in values)
    assert smoothed == pytest.approx(_debiased_ema(values, weight), rel=1e-9, abs=1e-9 * scale)


def test_plot_curves_cli_writes_the_figure_and_a_json_summary(two_runs, tmp_path, capsys) -> None:
    out = tmp_path / "curves.png"
    code, stdout, err = run(capsys, "plot", "curves", *map(str, two_runs), "--out", str(out), "--json",
                            "--label", "a", "--label", "b", "--smoothing", "0.6")
    assert code == 0, err
    payload = json.loads(stdout)
    assert payload["metrics"] == ["loss", "val_loss"]  # the defaults these runs logged
    assert [r["run"] for r in payload["runs"]] == ["a", "b"] and payload["runs"][0]["step"] == 8
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(out).shape[1] > 1000  # two panels side by side at 150 dpi
    assert not list(tmp_path.glob(".*tmp*"))

    svg = tmp_path / "lr.svg"
    code, stdout, err = run(capsys, "plot", "curves", str(two_runs[0]), "-m", "lr", "--x", "step", "--out", str(svg))
    assert code == 0, err
    assert "<svg" in svg.read_text()[:1000] and "wrote" in stdout and "fast" in stdout


@pytest.mark.parametrize(("args", "message"), [
    (["plot", "curves", "{missing}", "--out", "{tmp}/f.png"], "does not exist; give a `kronypt train --out` folder"),
    (["plot", "curves", "{tmp}", "--out", "{tmp}/f.png"], "no metrics.jsonl in"),
    (["plot", "curves", "{run}", "-m", "perplexity", "--out", "{tmp}/f.png"],
     "no run logged perplexity; the runs logged val_loss, loss, lr"),
    (["plot", "curves", "{run}", "--label", "a", "--label", "b", "--out", "{tmp}/f.png"],
     "one --label per run"),
    (["plot", "curves", "{run}", "--x", "time", "--out", "{tmp}/f.png"], "unknown --x 'time'"),
    (["plot", "curves", "{run}", "--smoothing", "1", "--out", "{tmp}/f.png"], "--smoothing must be in [0, 1)"),
    (["plot", "curves", "{run}", "--out", "{tmp}/figure"], "give the figure file a suffix"),
    (["plot", "curves", "{run}", "--out", "{tmp}/f.docx"], "cannot write"),
    (["plot", "curves", "{run}", "--out", "{tmp}/nowhere/f.png"], "does not exist"),
    (["plot", "tradeoff", "{run}/metrics.jsonl", "--out", "{tmp}/f.png"], "is not a `kronypt eval --json` file"),
])
def test_plot_errors_are_one_line(two_runs, tmp_path, capsys, args, message) -> None:
    fill = {"missing": str(tmp_path / "missing"), "tmp": str(tmp_path), "run": str(two_runs[0])}
    code, _, err = run(capsys, *(a.format(**fill) for a in args))
    assert_one_line_error(code, err, message)


def test_missing_matplotlib_is_a_one_line_error(two_runs, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    code, _, err = run(capsys, "plot", "curves", str(two_runs[0]), "--out", str(tmp_path / "f.png"))
    assert_one_line_error(code, err, "plotting needs matplotlib: pip install 'kronypt[plot]'")


def _record(model: str, params: int, value: float, protocol: str = "krony-pt", task: str = "wikitext2") -> EvalRecord:
    return EvalRecord(model=model, params=params, task=task, split="test", protocol=protocol, metric="perplexity",
                      value=value, tokens=1000, examples=10, context_length=1024, stride=None, tokens_per_s=1.0,
                      seconds=1.0, dtype="float32", device="cpu")


def test_tradeoff_keeps_protocols_apart_and_plots_params_against_values(tmp_path, capsys) -> None:
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    write_json([_record("gpt2", 124_439_808, 29.9), _record("runs/81M/best/model", 81_972_576, 35.0),
                _record("gpt2", 124_439_808, 25.2, protocol="hf-strided")], first)
    write_json([_record("runs/81M/best/model", 81_972_576, 33.0),  # a later eval of the same model wins
                _record("gpt2", 124_439_808, 0.33, task="lambada")], second)
    records = load_eval_records([first, second])
    panels = tradeoff_panels(records)
    krony = panels["wikitext2", "test", "krony-pt", "perplexity"]
    assert sorted((r.model, r.value) for r in krony) == [("gpt2", 29.9), ("runs/81M/best/model", 33.0)]
    assert [r.value for r in panels["wikitext2", "test", "hf-strided", "perplexity"]] == [25.2]
    assert set(tradeoff_panels(records, ["lambada"])) == {("lambada", "test", "krony-pt", "perplexity")}
    figure = tradeoff_figure({("wikitext2", "test", "krony-pt", "perplexity"): krony})
    labels = sorted(text.get_text() for text in figure.axes[0].texts)
    assert labels == ["81M/best", "gpt2"]  # checkpoint folders all end in .../model: labelled by what is above

    out = tmp_path / "t.png"
    code, stdout, err = run(capsys, "plot", "tradeoff", str(first), str(second), "--task", "wikitext2",
                            "--out", str(out))
    assert code == 0, err
    assert "2 panels, 2 models" in stdout and out.read_bytes()[:4] == b"\x89PNG"
    code, _, err = run(capsys, "plot", "tradeoff", str(first), "--task", "hellaswag", "--out", str(out))
    assert_one_line_error(code, err, "no records for task(s) hellaswag; the files hold wikitext2")


def _capture_figures(monkeypatch) -> list:
    """Record every figure `kronypt plot` saves (still writing it), to read its axes back."""
    import kronypt.report as report

    figures, real = [], report.save_figure
    monkeypatch.setattr(report, "save_figure", lambda figure, path: figures.append(figure) or real(figure, path))
    return figures


def test_log_y_makes_every_panel_log_scale_and_its_absence_linear(two_runs, tmp_path, capsys, monkeypatch) -> None:
    figures = _capture_figures(monkeypatch)
    results = tmp_path / "evals.json"
    write_json([_record("gpt2", 124_439_808, 29.9), _record("runs/81M/best/model", 81_972_576, 35.0),
                _record("gpt2", 124_439_808, 0.33, task="lambada")], results)
    commands = [["curves", *map(str, two_runs), "-m", "loss", "-m", "val_loss"], ["tradeoff", str(results)]]
    for command in commands:
        for flag in ([], ["--log-y"]):
            code, _, err = run(capsys, "plot", *command, *flag, "--out", str(tmp_path / "f.png"))
            assert code == 0, err
    assert len(figures) == 4
    for figure, scale in zip(figures, ["linear", "log"] * 2, strict=True):
        panels = [ax for ax in figure.axes if ax.get_visible()]
        assert len(panels) == 2  # loss and val_loss; the wikitext2 and lambada panels
        assert [ax.get_yscale() for ax in panels] == [scale, scale]
        assert [ax.get_xscale() for ax in panels] == ["linear", "linear"]  # only y changes
