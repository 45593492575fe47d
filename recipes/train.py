"""Deprecated: gptzoo.recipes.train moved to gptzoo.recipes.training.loop in 0.2; this path goes in 0.3."""

import warnings
from importlib import import_module

_moved = import_module("gptzoo.recipes.training.loop")
warnings.warn(
    "gptzoo.recipes.train moved to gptzoo.recipes.training.loop; the old path goes in 0.3",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str):
    return getattr(_moved, name)
