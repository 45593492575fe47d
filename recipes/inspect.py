"""Deprecated: gptzoo.recipes.inspect moved to gptzoo.recipes.research.inspection in 0.2; this path goes in 0.3."""

import warnings
from importlib import import_module

_moved = import_module("gptzoo.recipes.research.inspection")
warnings.warn(
    "gptzoo.recipes.inspect moved to gptzoo.recipes.research.inspection; the old path goes in 0.3",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str):
    return getattr(_moved, name)
