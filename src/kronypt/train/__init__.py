"""Training ("healing") of compressed models: recipes, optimizer, distillation, checkpoints, the loop.

>>> from kronypt.train import TrainConfig, train
>>> config = TrainConfig.from_yaml("configs/offline-heal.yaml").with_overrides({"max_steps": 10})  # doctest: +SKIP
>>> result = train(config)  # doctest: +SKIP

The names are imported when first used (`kronypt.lazy`): reading a recipe loads no torch.
"""

from kronypt.lazy import lazy_exports

EXPORTS = {
    "kronypt.train.config": ("TrainConfig",),
    "kronypt.train.failures": ("TrainingDiverged",),
    "kronypt.train.loop": ("TrainResult", "train"),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, EXPORTS)
