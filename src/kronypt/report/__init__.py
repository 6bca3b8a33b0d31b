"""Figures and summaries of finished work: training curves of runs, and size-quality trade-offs of evals.

>>> from kronypt.report import load_run, curves_figure                                 # doctest: +SKIP
>>> curves_figure([load_run("runs/81M"), load_run("runs/dense")], ["loss", "val_loss"]).savefig("curves.png")
"""

from kronypt.report.figures import check_figure_path, curves_figure, save_figure, tradeoff_figure
from kronypt.report.runs import AXES, DEFAULT_METRICS, Run, load_run, run_summary, smooth
from kronypt.report.tradeoff import load_eval_records, tradeoff_panels

__all__ = [
    "AXES",
    "DEFAULT_METRICS",
    "Run",
    "check_figure_path",
    "curves_figure",
    "load_eval_records",
    "load_run",
    "run_summary",
    "save_figure",
    "smooth",
    "tradeoff_figure",
    "tradeoff_panels",
]
