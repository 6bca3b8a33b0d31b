"""Training ("healing") of compressed models: recipes, optimizer, distillation, checkpoints, the loop.

>>> from kronypt.train import TrainConfig, train
>>> config = TrainConfig.from_yaml("configs/offline-heal.yaml").with_overrides({"max_steps": 10})  # doctest: +SKIP
>>> result = train(config)  # doctest: +SKIP
"""

from kronypt.train.config import TrainConfig
from kronypt.train.failures import TrainingDiverged
from kronypt.train.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "TrainingDiverged", "train"]
