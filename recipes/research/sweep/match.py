"""Parameter matching: size one dimension of every variant so that all have (nearly) the same parameter count."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gptzoo.core import ConfigError
from gptzoo.recipes.config.schema import RunConfig
from gptzoo.recipes.research.sweep.schema import MatchParams, Variant
from gptzoo.recipes.training import costs
from gptzoo.recipes.training.models import meta_model, resolve_vocab

ConfigOf = Callable[[dict[str, Any], str], RunConfig]  # a variant's overrides, where -> its validated config


def parameter_count(config: RunConfig, vocab_size: int) -> int:
    model = meta_model(config.model.model_copy(update={"vocab_size": config.model.vocab_size or vocab_size}))
    return costs.param_counts(model)["total"]


def _vocab_size(config: RunConfig) -> int:
    """The vocabulary the runs will have: given, or the tokenizer's (fitted on the corpus when it learns one)."""
    if config.model.vocab_size is not None:
        return config.model.vocab_size
    from gptzoo.recipes.data.tokens import fit_tokenizer

    tokenizer = config.model.tokenizer.build()
    fit_tokenizer(config.data, tokenizer)
    return resolve_vocab(config, tokenizer).model.vocab_size


def match_parameters(
    path: Path,
    base: RunConfig,
    variants: list[Variant],
    match: MatchParams,
    sizes: dict[str, dict[str, Any]],
    config_of: ConfigOf,
) -> list[Variant]:
    """Each variant with ``match.by`` set to the multiple of ``match.multiple_of`` whose parameter
    count is nearest the target (the count rises with the size, so bisection finds it). With
    sizes, the base's count is taken at each variant's size: every size is matched to its own."""
    vocab = _vocab_size(base)
    targets: dict[str | None, int] = {}
    matched = []
    for variant in variants:
        if variant.size not in targets:
            targets[variant.size] = _target(path, base, match, sizes, variant.size, vocab, config_of)
        where = f"{path}: match_params for variant '{variant.label}'"
        matched.append(_match_variant(variant, match, targets[variant.size], vocab, config_of, where))
    return matched


def _target(
    path: Path,
    base: RunConfig,
    match: MatchParams,
    sizes: dict[str, dict[str, Any]],
    size: str | None,
    vocab: int,
    config_of: ConfigOf,
) -> int:
    """The parameter count to reach: the one given, or the base's (at ``size``, with sizes)."""
    if match.target != "base":
        return match.target
    config = base if size is None else config_of(sizes[size], f"{path}: [sizes] {size}")
    return parameter_count(config, vocab)


def _match_variant(
    variant: Variant, match: MatchParams, target: int, vocab: int, config_of: ConfigOf, where: str
) -> Variant:
    cache: dict[int, tuple[RunConfig, int]] = {}

    def sized(k: int) -> tuple[RunConfig, int]:
        """The config and its parameter count with ``match.by`` = k · multiple_of."""
        if k not in cache:
            value = k * match.multiple_of
            config = config_of({**variant.overrides, match.by: value}, f"{where}, {match.by} = {value}")
            cache[k] = config, parameter_count(config, vocab)
        return cache[k]

    k = _nearest(lambda k: sized(k)[1], target, match, where)
    config, count = sized(k)
    error = (count - target) / target
    if abs(error) > match.tolerance:
        raise ConfigError(
            f"{where}: the nearest {match.by} = {k * match.multiple_of} gives {count:,} parameters, {error:+.1%} off the "
            f"target {target:,} (tolerance {match.tolerance:.1%}); use a smaller multiple_of or a larger tolerance"
        )
    info = {"key": match.by, "value": k * match.multiple_of, "params": count, "target": target, "error": error}
    return dataclasses.replace(variant, config=config, matched=info)


def _nearest(count: Callable[[int], int], target: int, match: MatchParams, where: str) -> int:
    """The k ≥ 1 whose ``count(k)`` is nearest ``target``, for a ``count`` that rises with k."""
    low, high = 1, 1
    while count(high) < target:
        low, high = high, 2 * high
        if high > 1 << 24:
            raise ConfigError(
                f"{where}: {match.by} up to {high * match.multiple_of:,} does not reach {target:,} parameters"
            )
    while high - low > 1:  # count(low) < target ≤ count(high), unless low = high = 1
        middle = (low + high) // 2
        low, high = (middle, high) if count(middle) < target else (low, middle)
    return min({low, high}, key=lambda k: abs(count(k) - target))
