"""The model a config describes, before any training: its vocabulary filled from the tokenizer, and the
same model on the meta device, where costs (parameters, FLOPs, cache bytes) are counted without memory."""

from __future__ import annotations

import torch

from gptzoo.core import GPT, ConfigError, ModelConfig, Tokenizer
from gptzoo.recipes.config.schema import RunConfig
from gptzoo.recipes.data.tokens import fit_tokenizer


def untrained_model(config: RunConfig) -> tuple[GPT, Tokenizer]:
    """The model ``config`` describes at train.seed's initialisation (the global random state
    untouched), and its tokenizer, fitted on the config's data when it learns one."""
    tokenizer = config.model.tokenizer.build()
    fit_tokenizer(config.data, tokenizer)
    config = resolve_vocab(config, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        return GPT(config.model), tokenizer


def meta_model(config: ModelConfig) -> GPT:
    """The model ``config`` describes, on the meta device: shapes only, so gpt2-1558m allocates nothing."""
    with torch.device("meta"):
        return GPT(config)


def resolve_vocab(config: RunConfig, tokenizer: Tokenizer) -> RunConfig:
    """The config with model.vocab_size filled from the tokenizer, checked to cover every id."""
    size = config.model.vocab_size
    if size is None:
        return config.model_copy(update={"model": config.model.model_copy(update={"vocab_size": tokenizer.vocab_size})})
    if size < tokenizer.vocab_size:
        raise ConfigError(
            f"model.vocab_size = {size} is smaller than the '{config.model.tokenizer.name}' tokenizer's vocabulary of "
            f"{tokenizer.vocab_size}; raise it or leave it out to use the tokenizer's"
        )
    return config
