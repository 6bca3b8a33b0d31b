"""Evaluation under named, reproducible protocols (`krony-pt`, `hf-strided`, `lambada-openai`, `word`).

>>> from kronypt.eval import evaluate                                                     # doctest: +SKIP
>>> evaluate(model, tokenizer, tasks=["wikitext2"], protocols=["krony-pt"], data_dir="../shared/data")

The names are imported when first used (`kronypt.lazy`): `kronypt eval --help` lists the tasks and their
default protocols (`kronypt.eval.corpora`) without loading torch.
"""

from kronypt.lazy import lazy_exports

EXPORTS = {
    "kronypt.eval.corpora": ("DEFAULT_PROTOCOLS", "SPLITS", "TASKS", "load_texts"),
    "kronypt.eval.lm_eval_bridge": ("lm_eval_model",),
    "kronypt.eval.protocols": ("PROTOCOLS", "Plan", "get_protocol"),
    "kronypt.eval.results": ("EvalRecord", "comparison_table", "write_json"),
    "kronypt.eval.runner": ("PairSelection", "check_vocab", "context_length", "evaluate", "evaluate_models",
                            "model_config", "plan_eval", "run_plan", "select_pairs", "task_protocol_pairs"),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, EXPORTS)
