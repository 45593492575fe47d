"""A third-party diagnostic task: copy a random sequence after a separator."""

from typing import Literal

import numpy as np
from pydantic import Field

from gptzoo.core import IGNORE, Task
from gptzoo.registry import hookimpl


class Copy(Task):
    """``n_tokens`` random ids from 1 .. vocab_size - 1, a separator 0, then the same ids again: the answers."""

    name: Literal["copy"]
    vocab_size: int = Field(10, gt=1)
    n_tokens: int = Field(4, gt=0)

    def check(self, context_length: int) -> None:
        if 2 * self.n_tokens + 1 > context_length + 1:
            raise ValueError(f"n_tokens = {self.n_tokens} needs context_length ≥ {2 * self.n_tokens}")

    def example(self, rng: np.random.Generator, length: int) -> tuple[np.ndarray, np.ndarray]:
        n = self.n_tokens
        data = rng.integers(1, self.vocab_size, n)
        seq = np.zeros(length + 1, dtype=np.int64)
        seq[:n], seq[n + 1 : 2 * n + 1] = data, data
        targets = np.full(length, IGNORE, dtype=np.int64)
        targets[n : 2 * n] = data
        return seq[:-1], targets


@hookimpl
def register_tasks(register):
    register("copy", Copy)
