"""gptzoo's core: component interfaces, the model config, and the GPT assembled from them.

Imports no plugin: variants arrive through gptzoo.registry.
"""

from gptzoo.core.cache import KVCache, LayerCache
from gptzoo.core.config import ComponentSpec, ModelConfig, apply_overrides, config_error, read_toml
from gptzoo.core.context import AttentionContext
from gptzoo.core.errors import CheckpointError, ConfigError, GptzooError
from gptzoo.core.interfaces import (
    FAMILIES,
    Attention,
    Component,
    Dims,
    FeedForward,
    Head,
    NoParams,
    Norm,
    Params,
    PositionalEncoding,
    Tokenizer,
)
from gptzoo.core.model import GPT, Block

__all__ = [
    "FAMILIES", "GPT", "Attention", "AttentionContext", "Block", "CheckpointError", "Component",
    "ComponentSpec", "ConfigError", "Dims", "FeedForward", "GptzooError", "Head", "KVCache",
    "LayerCache", "ModelConfig", "NoParams", "Norm", "Params", "PositionalEncoding", "Tokenizer",
    "apply_overrides", "config_error", "read_toml",
]
