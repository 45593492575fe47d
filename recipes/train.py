"""Deprecated: gptzoo.recipes.train moved to gptzoo.recipes.training.loop in 0.2; this path goes in 0.3."""

import warnings
from importlib import import_module

# The loop first; the parts the 0.1 README named here (estimate_loss, ...) live beside it since.
_homes = [
    import_module(f"gptzoo.recipes.training.{name}")
    for name in ("loop", "step_plan", "optim", "evaluation", "checkpoint")
]
warnings.warn(
    "gptzoo.recipes.train moved to gptzoo.recipes.training.loop; the old path goes in 0.3",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str):
    for home in _homes:
        if hasattr(home, name):
            return getattr(home, name)
    raise AttributeError(f"module 'gptzoo.recipes.train' has no attribute {name!r}")
