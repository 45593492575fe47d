"""Training: the pretraining loop, its devices and optimiser, checkpoints, distributed launch."""

from gptzoo.recipes.training.loop import TrainSummary, train

__all__ = ["TrainSummary", "train"]
