"""Evaluation under named, reproducible protocols (`krony-pt`, `hf-strided`, `lambada-openai`, `word`).

>>> from kronypt.eval import evaluate                                                     # doctest: +SKIP
>>> evaluate(model, tokenizer, tasks=["wikitext2"], protocols=["krony-pt"], data_dir="../shared/data")
"""

from kronypt.eval.corpora import SPLITS, TASKS, load_texts
from kronypt.eval.lm_eval_bridge import lm_eval_model
from kronypt.eval.protocols import PROTOCOLS, Plan, get_protocol
from kronypt.eval.results import EvalRecord, comparison_table, write_json
from kronypt.eval.runner import (
    DEFAULT_PROTOCOLS,
    PairSelection,
    check_vocab,
    context_length,
    evaluate,
    evaluate_models,
    model_config,
    plan_eval,
    run_plan,
    select_pairs,
    task_protocol_pairs,
)

__all__ = [
    "DEFAULT_PROTOCOLS",
    "PROTOCOLS",
    "SPLITS",
    "TASKS",
    "EvalRecord",
    "PairSelection",
    "Plan",
    "check_vocab",
    "comparison_table",
    "context_length",
    "evaluate",
    "evaluate_models",
    "get_protocol",
    "lm_eval_model",
    "load_texts",
    "model_config",
    "plan_eval",
    "run_plan",
    "select_pairs",
    "task_protocol_pairs",
    "write_json",
]
