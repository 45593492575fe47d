"""Deprecated: gptzoo.recipes.run moved to gptzoo.recipes.runs.folder in 0.2; this path goes in 0.3."""

import warnings
from importlib import import_module

_moved = import_module("gptzoo.recipes.runs.folder")
warnings.warn(
    "gptzoo.recipes.run moved to gptzoo.recipes.runs.folder; the old path goes in 0.3", DeprecationWarning, stacklevel=2
)


def __getattr__(name: str):
    return getattr(_moved, name)
