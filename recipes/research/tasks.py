"""Diagnostic tasks as the training loop reads them: a task's training and validation splits.

A task is a data source like a corpus (``data.task = { name = "mqar", ... }`` instead of
``data.source``), validated against the registry's tasks (the ``register_tasks`` hook; the base
class is gptzoo.core.Task, the built-in tasks are gptzoo.plugins.tasks). Example ``i`` of a split
is drawn from its own generator seeded by ``(data.seed, split, i)``, so the training and
validation splits differ by seed, any example can be rebuilt alone, and nothing is stored.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from gptzoo.core import IGNORE, Task
from gptzoo.plugins.tasks import MQAR, Induction, SelectiveCopy

SPLITS = {"train": 0, "val": 1}


class TaskExamples:
    """One split of a task as the training loop reads it: ``len`` examples, ``batch(indices)``.

    The drop-in for ``TokenWindows``: example ``i`` is rebuilt from the seed ``(seed, split, i)``.
    """

    def __init__(self, task: Task, context_length: int, seed: int, split: str):
        self.task = task
        self.context_length = context_length
        self.seed = seed
        self.split = split
        self.n = task.train_examples if split == "train" else task.val_examples

    def __len__(self) -> int:
        return self.n

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= i < self.n:
            raise IndexError(f"example {i} of {self.n}")
        return self.task.example(np.random.default_rng([self.seed, SPLITS[self.split], int(i)]), self.context_length)

    def batch(self, indices: list[int] | np.ndarray) -> tuple[Tensor, Tensor]:
        """Inputs and targets (B, T) int64 of the examples at ``indices``."""
        pairs = [self.example(int(i)) for i in indices]
        return torch.from_numpy(np.stack([p[0] for p in pairs])), torch.from_numpy(np.stack([p[1] for p in pairs]))

    def describe(self) -> str:
        return f"{self.n:,} {self.task.name} examples"


def task_splits(task: Task, context_length: int, seed: int) -> tuple[TaskExamples, TaskExamples]:
    return TaskExamples(task, context_length, seed, "train"), TaskExamples(task, context_length, seed, "val")


__all__ = ["IGNORE", "MQAR", "SPLITS", "Induction", "SelectiveCopy", "Task", "TaskExamples", "task_splits"]
