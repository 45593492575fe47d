"""The built-in diagnostic tasks, registered through the ``register_tasks`` hook.

A task is a data source like a corpus (``data.task = { name = "mqar", ... }`` instead of
``data.source``). Example ``i`` of a split is drawn from its own generator seeded by
``(data.seed, split, i)``, so the training and validation splits differ by seed, any example
can be rebuilt alone, and nothing is stored. Every example is ``context_length`` input ids and
as many targets, where a target is the answer id at the positions that carry an answer and
``IGNORE`` (-100, what cross-entropy skips) everywhere else: loss and accuracy count answers
only. The ids are plain integers ``0 .. vocab_size - 1`` (the ``integers`` tokenizer).

- ``mqar``: multi-query associative recall (Arora et al., 2023, "Zoology"). ``n_pairs``
  key-value pairs, then each key queried once at a random place among filler tokens; the
  answer, at the query, is the key's value. As in Zoology, a value appears in the inputs only
  in its pair: were it also written after its query, a later query could be answered by
  elimination (the one value not yet queried) without recalling anything.
- ``induction``: a random sequence, a separator, the same sequence again; the answers are the
  second copy, each predictable from the first.
- ``selective_copy``: ``n_tokens`` data tokens scattered among noise, then as many marker
  tokens, at which the data tokens are to be reproduced in order (Gu & Dao, 2023).
"""

from typing import Literal

import numpy as np
from pydantic import Field

from gptzoo.core import IGNORE, Task
from gptzoo.registry import hookimpl


class MQAR(Task):
    name: Literal["mqar"]
    vocab_size: int = Field(128, gt=3, description="ids: 0 is filler, keys from the lower half, values from the upper")
    n_pairs: int = Field(8, gt=0, description="key-value pairs, each queried once")

    def check(self, context_length: int) -> None:
        if self.n_pairs > self.vocab_size // 2 - 1:
            raise ValueError(
                f"n_pairs = {self.n_pairs} distinct keys need vocab_size ≥ {2 * self.n_pairs + 2}, got {self.vocab_size}"
            )
        if 4 * self.n_pairs > context_length + 1:
            raise ValueError(
                f"n_pairs = {self.n_pairs} needs 4 × n_pairs = {4 * self.n_pairs} tokens (pairs, then queries), more than context_length + 1 = {context_length + 1}"
            )

    def example(self, rng: np.random.Generator, length: int) -> tuple[np.ndarray, np.ndarray]:
        n, half = self.n_pairs, self.vocab_size // 2
        keys = rng.choice(np.arange(1, half), n, replace=False)
        values = rng.choice(np.arange(half, self.vocab_size), n, replace=False)
        seq = np.zeros(length + 1, dtype=np.int64)  # filler 0 wherever nothing else goes
        seq[0 : 2 * n : 2], seq[1 : 2 * n : 2] = keys, values
        # The queries: each key alone, at the start of n of the two-token slots after the pairs.
        slots = np.sort(rng.choice((length + 1 - 2 * n) // 2, n, replace=False))
        starts = 2 * n + 2 * slots
        order = rng.permutation(n)
        seq[starts] = keys[order]
        targets = np.full(length, IGNORE, dtype=np.int64)
        targets[starts] = values[order]  # the value, predicted at its key's query
        return seq[:-1], targets


class Induction(Task):
    name: Literal["induction"]
    vocab_size: int = Field(
        32, gt=1, description="ids: 0 is the separator, the sequence draws from 1 .. vocab_size - 1"
    )

    def check(self, context_length: int) -> None:
        if context_length < 2:
            raise ValueError(f"needs context_length ≥ 2 to hold a sequence and its copy, got {context_length}")

    def example(self, rng: np.random.Generator, length: int) -> tuple[np.ndarray, np.ndarray]:
        m = length // 2  # the sequence, then the separator, then the copy: 2m + 1 ≤ length + 1
        sequence = rng.integers(1, self.vocab_size, m)
        seq = np.zeros(length + 1, dtype=np.int64)
        seq[:m], seq[m + 1 : 2 * m + 1] = sequence, sequence
        targets = np.full(length, IGNORE, dtype=np.int64)
        targets[m : 2 * m] = sequence  # from the separator on, each next token is the copy's
        return seq[:-1], targets


class SelectiveCopy(Task):
    name: Literal["selective_copy"]
    vocab_size: int = Field(
        16, gt=2, description="ids: 0 is noise, 1 the marker, data tokens draw from 2 .. vocab_size - 1"
    )
    n_tokens: int = Field(8, gt=0, description="data tokens to reproduce")

    def check(self, context_length: int) -> None:
        if 2 * self.n_tokens > context_length:
            raise ValueError(
                f"n_tokens = {self.n_tokens} needs context_length ≥ 2 × n_tokens = {2 * self.n_tokens} (data among noise, then markers), got {context_length}"
            )

    def example(self, rng: np.random.Generator, length: int) -> tuple[np.ndarray, np.ndarray]:
        n = self.n_tokens
        body = length - n
        data = rng.integers(2, self.vocab_size, n)
        inputs = np.zeros(length, dtype=np.int64)  # noise 0 in the body
        inputs[np.sort(rng.choice(body, n, replace=False))] = data
        inputs[body:] = 1  # markers
        targets = np.full(length, IGNORE, dtype=np.int64)
        targets[body:] = data
        return inputs, targets


@hookimpl
def register_tasks(register):
    register("mqar", MQAR)
    register("induction", Induction)
    register("selective_copy", SelectiveCopy)
