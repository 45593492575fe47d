"""gptzoo's core: component interfaces, the model config, and the GPT assembled from them.

Imports no plugin: variants arrive through gptzoo.registry.
"""

from gptzoo.core.cache import KVCache, KVLayerCache, LayerCache
from gptzoo.core.config import (
    ComponentSpec,
    LayerKind,
    LayerSpec,
    ModelConfig,
    config_error,
)
from gptzoo.core.context import AttentionContext, Meter, Recorder
from gptzoo.core.errors import CheckpointError, ConfigError, GptzooError
from gptzoo.core.interfaces import (
    FAMILIES,
    Attention,
    AuxiliaryLoss,
    Block,
    Component,
    Dims,
    FeedForward,
    Head,
    Implementation,
    InitScheme,
    MultiTokenPrediction,
    NoParams,
    Norm,
    Params,
    PositionalEncoding,
    Residual,
    Tokenizer,
)
from gptzoo.core.model import GPT
from gptzoo.core.tasks import IGNORE, Task

__all__ = [
    "FAMILIES",
    "GPT",
    "IGNORE",
    "Attention",
    "AttentionContext",
    "AuxiliaryLoss",
    "Block",
    "CheckpointError",
    "Component",
    "ComponentSpec",
    "ConfigError",
    "Dims",
    "FeedForward",
    "GptzooError",
    "Head",
    "Implementation",
    "InitScheme",
    "KVCache",
    "KVLayerCache",
    "LayerCache",
    "LayerKind",
    "LayerSpec",
    "Meter",
    "ModelConfig",
    "MultiTokenPrediction",
    "NoParams",
    "Norm",
    "Params",
    "PositionalEncoding",
    "Recorder",
    "Residual",
    "Task",
    "Tokenizer",
    "config_error",
]
