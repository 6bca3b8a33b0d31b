"""Studies: compression methods compared on one model at equal parameters and equal healing.

>>> from kronypt.study import StudyConfig, run_study                                    # doctest: +SKIP
>>> run_study(StudyConfig(model="smollm2-135m", data="data/gutenberg-smollm2", out="studies/smollm2"))
"""

from kronypt.study.config import StudyConfig
from kronypt.study.runner import run_study

__all__ = ["StudyConfig", "run_study"]
