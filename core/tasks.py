"""The base of diagnostic tasks: synthetic examples drawn from a seed, scored only where an answer is.

Tasks register through the ``register_tasks`` hook (gptzoo.registry); the built-in ones are
gptzoo.plugins.tasks, and gptzoo.recipes.research.tasks turns a task into training splits.
"""

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

IGNORE = -100  # target of a position without an answer (F.cross_entropy's ignore_index)


class Task(BaseModel):
    """Base of the task specs: unknown keys are errors; ``example`` draws one example."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str
    vocab_size: int
    train_examples: int = Field(
        100_000, gt=0, description="size of the training split (examples are drawn again each epoch in a new order)"
    )
    val_examples: int = Field(1_000, gt=0, description="size of the validation split")

    def check(self, context_length: int) -> None:
        """Raise ValueError naming the fields when examples of ``context_length`` tokens cannot be built."""

    def example(self, rng: np.random.Generator, length: int) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets), each ``length`` int64 ids; targets are IGNORE where no answer is."""
        raise NotImplementedError
