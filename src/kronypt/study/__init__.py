"""Studies: compression methods compared on one model at equal parameters and equal healing.

>>> from kronypt.study import StudyConfig, run_study                                    # doctest: +SKIP
>>> run_study(StudyConfig(model="smollm2-135m", data="data/gutenberg-smollm2", out="studies/smollm2"))

The names are imported when first used (`kronypt.lazy`): `kronypt study --help` lists the methods without
loading torch.
"""

from kronypt.lazy import lazy_exports

EXPORTS = {"kronypt.study.config": ("StudyConfig",), "kronypt.study.runner": ("run_study",)}
__getattr__, __dir__, __all__ = lazy_exports(__name__, EXPORTS)
