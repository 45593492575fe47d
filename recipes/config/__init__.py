"""Configuration: the run config (one TOML file with [model], [data] and [train]) and how it loads."""

from gptzoo.recipes.config.reading import apply_overrides, read_toml
from gptzoo.recipes.config.schema import (
    BUILTIN_CORPUS,
    DataConfig,
    RunConfig,
    TrainConfig,
    load_run_config,
    validate_run_config,
)

__all__ = [
    "BUILTIN_CORPUS",
    "DataConfig",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "load_run_config",
    "read_toml",
    "validate_run_config",
]
