"""Planning a sweep: the base with [set], the grid of variants, sizes, and the checks that keep
the comparison fair. Every variant is validated here, before anything trains."""

from __future__ import annotations

import copy
import functools
import itertools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gptzoo.core import ConfigError, config_error
from gptzoo.recipes.config import keys
from gptzoo.recipes.config.finetune import FINETUNE_KINDS, FinetuneConfig
from gptzoo.recipes.config.finetune_files import validate_finetune_config
from gptzoo.recipes.config.presets import find_config, find_preset
from gptzoo.recipes.config.reading import read_toml
from gptzoo.recipes.config.schema import RunConfig, validate_run_config
from gptzoo.recipes.research.sweep.match import match_parameters
from gptzoo.recipes.research.sweep.schema import Sweep, SweepFile, Variant, toml_value
from gptzoo.registry import Registry

BUDGET_KEYS = ("max_steps", "epochs", "max_tokens", "max_flops")


def with_overrides(data: dict, overrides: dict[str, Any]) -> dict:
    """A copy of ``data`` with dotted-key overrides applied as ``--set`` applies them.

    A new component ``name`` replaces its spec, so tables go before their keys and a ``name``
    before its siblings: ``positional.name = "rope"`` with ``positional.base = 500`` keeps the base.
    """
    data = copy.deepcopy(data)
    for key, value in sorted(overrides.items(), key=lambda kv: (kv[0].count("."), not kv[0].endswith(".name"))):
        written = f"{key}={toml_value(value)}"  # what --set would take, to name it in errors
        keys.set(data, key, copy.deepcopy(value), source=f"override {written!r}")  # a copy: variants share values
    return data


def expand_grid(axes: dict[str, list], mode: str = "product") -> list[dict[str, Any]]:
    """The overrides of each variant, in order.

    ``product``: every combination, the first axis varying slowest. ``one_at_a_time``: the base
    (no overrides), then each value of each axis alone.
    """
    if mode == "one_at_a_time":
        return [{}] + [{key: value} for key, values in axes.items() for value in values]
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def load_sweep(path: str | Path, registry: Registry | None = None) -> Sweep:
    """Read and validate a sweep file (a path or a preset name such as ``ablations/attention``): every variant's
    config is validated here, before any run."""
    path = find_config(path)
    try:
        spec = SweepFile.model_validate(read_toml(path))
    except ValidationError as err:
        raise config_error(err, str(path), SweepFile) from None
    base_path = _find_base(path, spec.base)
    if spec.finetune_from is not None:
        return load_finetune_sweep(path, spec, base_path)
    fixed = keys.flatten(spec.fixed)
    sizes = _read_sizes(path, spec)
    if sizes:
        fixed = {**fixed, **next(iter(sizes.values()))}  # the base is the first size
    try:
        base_data = with_overrides(_read_base(base_path), fixed)
    except ConfigError as err:
        raise ConfigError(f"{path}: [set]: {err}") from None
    base = validate_run_config(base_data, f"{path}: base {base_path} with [set]", registry)
    axes = _read_axes(path, spec.axes)
    if "size" in axes:
        raise ConfigError(f"{path}: [axes] size: the name is taken by [sizes]; list model sizes there")
    if sizes:
        axes = {"size": list(sizes), **axes}  # the slowest-varying axis

    _check_each_value(path, base_data, base, axes, sizes, registry)
    variant_config = functools.partial(_variant_config, base_data, registry=registry)
    variants = _make_variants(path, base, axes, spec.mode, variant_config, sizes)
    if spec.match_params is not None:
        variants = match_parameters(path, base, variants, spec.match_params, sizes, variant_config)
    _check_same_tokens(path, variants)
    seeds = spec.seeds or [base.train.seed]
    _check_seeds_and_multiples(path, seeds, spec.extrapolate)
    _check_resources(path, spec, variants)
    return Sweep(
        path,
        base_path,
        spec.mode,
        seeds,
        axes,
        fixed,
        variants,
        spec.extrapolate,
        sizes,
        registry,
        None,
        spec.resources,
    )


def _read_sizes(path: Path, spec: SweepFile) -> dict[str, dict[str, Any]]:
    """[sizes] as flat dotted overrides per size name (empty without a scaling curve)."""
    sizes = {name: keys.flatten(table) for name, table in spec.sizes.items()}
    if sizes and spec.mode != "product":
        raise ConfigError(f'{path}: sizes need mode = "product" (every variant at every size)')
    if len(sizes) == 1:
        raise ConfigError(f"{path}: [sizes] names one size; a scaling curve needs two or more")
    return sizes


def _check_seeds_and_multiples(path: Path, seeds: list[int], extrapolate: list[float]) -> None:
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{path}: seeds {seeds} repeat a seed; each variant runs once per seed")
    bad = [m for m in extrapolate if m <= 0]
    if bad:
        raise ConfigError(
            f"{path}: extrapolate = {extrapolate}: multiples of the context must be positive, got {bad[0]}"
        )


def _check_each_value(
    path: Path,
    base_data: dict,
    base: RunConfig,
    axes: dict[str, list],
    sizes: dict[str, dict[str, Any]],
    registry: Registry | None,
) -> None:
    """Each value alone on the base, before any combination, so an error names the one axis and value that caused it."""
    for key, values in axes.items():
        for value in values:
            where = f"{path}: [sizes] {value}" if key == "size" else f"{path}: [axes] {key} = {toml_value(value)}"
            config = _variant_config(base_data, _spell_out({key: value}, sizes), where, registry)
            _check_same_data_and_budget(config, base, where, budget=key != "size")


def _find_base(sweep_path: Path, base: str) -> Path:
    candidates = [sweep_path.parent / base, Path(base)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    for candidate in candidates:
        if candidate.is_dir() and (candidate / "config.json").is_file():
            return candidate / "config.json"  # a run folder: the config it holds (an imported checkpoint's, say)
        if candidate.is_dir():
            raise ConfigError(
                f"{sweep_path}: base = {base!r} is a folder ({candidate}) without a config.json; give a TOML config or a run folder"
            )
    raise ConfigError(f"{sweep_path}: base = {base!r} not found (looked for {' and '.join(map(str, candidates))})")


def _read_base(path: Path) -> dict[str, Any]:
    if path.suffix != ".json":
        return read_toml(path, find_base=find_preset)  # a base may extend a preset
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid JSON: {err}") from None


def _read_axes(path: Path, raw: dict[str, Any]) -> dict[str, list]:
    axes = keys.flatten(raw, keep_empty=False)
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"{path}: [axes] {key} = {toml_value(values)}: list the values to try, e.g. {key} = [..., ...]"
            )
        written = [toml_value(v) for v in values]
        repeated = sorted({w for w in written if written.count(w) > 1})
        if repeated:
            raise ConfigError(f"{path}: [axes] {key} lists {', '.join(repeated)} more than once")
    return axes


def _variant_config(base_data: dict, overrides: dict[str, Any], where: str, registry: Registry | None) -> RunConfig:
    try:
        data = with_overrides(base_data, overrides)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    return validate_run_config(data, where, registry)


def _check_same_data_and_budget(config: RunConfig, base: RunConfig, where: str, budget: bool = True) -> None:
    """Fairness: every variant sees the same data, in the same order, for the same budget
    (``budget`` False for a size: variants are compared within their size, which may set its own)."""
    if config.data != base.data:
        raise ConfigError(
            f"{where}: changes [data]; every run in a sweep sees the same data in the same order (set data once, in the base or [set])"
        )
    if config.model.tokenizer != base.model.tokenizer:
        raise ConfigError(f"{where}: changes the tokenizer; losses per token are only comparable over the same tokens")
    if config.train.seed != base.train.seed:
        raise ConfigError(f"{where}: varies train.seed; list the seeds with seeds = [...] at the top of the sweep file")
    for key in BUDGET_KEYS if budget else ():
        if getattr(config.train, key) != getattr(base.train, key):
            raise ConfigError(
                f"{where}: changes train.{key}; every variant gets the same training budget (set it in [set])"
            )


def _tokens_per_step(config: RunConfig) -> int:
    return config.train.batch_size * config.train.grad_accum * config.model.context_length


def _check_same_tokens(path: Path, variants: list[Variant]) -> None:
    """With a step budget, a variant with bigger batches would see more tokens than the others of its size: refuse it."""
    firsts: dict[str | None, Variant] = {}
    for variant in variants:
        first = firsts.setdefault(variant.size, variant)
        if first.config.train.max_steps is None:
            continue
        if _tokens_per_step(variant.config) != _tokens_per_step(first.config):
            raise ConfigError(
                f"{path}: variants '{first.label}' and '{variant.label}' train on {_tokens_per_step(first.config)} and "
                f"{_tokens_per_step(variant.config)} tokens per step (batch_size × grad_accum × context_length), so "
                f"train.max_steps = {first.config.train.max_steps} gives them different budgets; give a token budget "
                f'instead: "train.max_tokens" = N in [set] (and drop max_steps)'
            )


def short_names(keys: list[str]) -> dict[str, str]:
    """``model.positional.name`` -> ``positional``, ``train.lr`` -> ``lr``; full keys where two would clash."""
    short = {k: re.sub(r"\.name$", "", re.sub(r"^(model|train)\.", "", k)) for k in keys}
    clashing = {s for s in short.values() if list(short.values()).count(s) > 1}
    return {k: (k if s in clashing else s) for k, s in short.items()}


def _show(value: Any) -> str:
    if isinstance(value, dict):
        params = ", ".join(f"{k}={_show(v)}" for k, v in value.items() if k != "name")
        return f"{value.get('name', '')}({params})" if params else str(value.get("name", "{}"))
    if isinstance(value, str):
        return value
    return toml_value(value)


def _slug(overrides: dict[str, Any], short: dict[str, str]) -> str:
    """``positional-rope_norm-rmsnorm``: folder-safe, one ``key-value`` part per axis."""
    parts = [re.sub(r"[^A-Za-z0-9._]+", "-", f"{short[k]}-{_show(v)}").strip("-").lower() for k, v in overrides.items()]
    return "_".join(parts)[:80] or "base"


def _spell_out(overrides: dict[str, Any], sizes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The overrides with a named size replaced by its keys."""
    size = overrides.get("size")
    return {**{k: v for k, v in overrides.items() if k != "size"}, **(sizes[size] if size is not None else {})}


def _make_variants(
    path: Path,
    base: RunConfig | FinetuneConfig,
    axes: dict[str, list],
    mode: str,
    config_of: Callable[[dict[str, Any], str], RunConfig | FinetuneConfig],
    sizes: dict[str, dict[str, Any]],
) -> list[Variant]:
    """Every variant of the grid, each config validated by ``config_of(overrides, where)``."""
    short = short_names(list(axes))
    base_dump = base.model_dump(mode="json")
    variants: list[Variant] = []
    seen: dict[str, str] = {}  # resolved config -> label, to catch two spellings of one variant
    for overrides in expand_grid(axes, mode):
        label = ", ".join(f"{short[k]}={_show(v)}" for k, v in overrides.items()) or "base"
        group = ", ".join(f"{short[k]}={_show(v)}" for k, v in overrides.items() if k != "size") or "base"
        size = overrides.get("size")
        slug = _slug(overrides, short)
        overrides = _spell_out(overrides, sizes)
        config = config_of(overrides, f"{path}: variant {label}") if overrides else base
        dump = config.model_dump(mode="json")
        is_base = dump == base_dump
        if mode == "one_at_a_time" and is_base and overrides:
            continue  # an axis value equal to the base's: the base row is that run
        key = json.dumps(dump, sort_keys=True)
        if key in seen:
            raise ConfigError(f"{path}: variants '{seen[key]}' and '{label}' are the same config; list each value once")
        seen[key] = label
        taken = {v.slug for v in variants}
        slug = next(s for s in (slug if i == 0 else f"{slug}-{i}" for i in itertools.count()) if s not in taken)
        variants.append(Variant(slug, label, overrides, config, is_base, size, group))
    if not any(v.is_base for v in variants):
        # The base's own values are not in the grid: run it too, so every row has its Δ.
        variants.insert(0, Variant("base", "base", {}, base, True))
    return variants


# ---- sweeps of a fine-tuning ------------------------------------------------------------------


def load_finetune_sweep(path: Path, spec: SweepFile, base_path: Path) -> Sweep:
    """A sweep whose base is a fine-tuning config: every variant fine-tunes ``spec.finetune_from`` with
    the base config, [set] and its axis values (no sizes, parameter matching or extrapolation)."""
    for name, given in (("sizes", spec.sizes), ("match_params", spec.match_params), ("extrapolate", spec.extrapolate)):
        if given:
            raise ConfigError(f"{path}: {name} applies to pretraining sweeps; a fine-tuning sweep varies its config")
    fixed = keys.flatten(spec.fixed)
    try:
        base_data = with_overrides(read_toml(base_path, find_base=find_preset), fixed)
    except ConfigError as err:
        raise ConfigError(f"{path}: [set]: {err}") from None
    kind = FINETUNE_KINDS.get(base_data.get("kind"))
    if kind is None:
        raise ConfigError(
            f"{path}: finetune_from needs a fine-tuning config as base; {base_path} has no kind = "
            '"classifier" or "instruct"'
        )

    def config_of(overrides: dict[str, Any], where: str) -> FinetuneConfig:
        try:
            return validate_finetune_config(kind, with_overrides(base_data, overrides), where)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}" if not str(err).startswith(where) else str(err)) from None

    base = config_of({}, f"{path}: base {base_path} with [set]")
    axes = _read_axes(path, spec.axes)
    for key, values in axes.items():
        for value in values:
            where = f"{path}: [axes] {key} = {toml_value(value)}"
            config = config_of({key: value}, where)
            for field in ("data", "train.seed", "train.epochs"):
                if keys.get(config, field) != keys.get(base, field):
                    raise ConfigError(
                        f"{where}: changes {field}; every fine-tuning in a sweep has the same (set it in [set])"
                    )
    variants = _make_variants(path, base, axes, spec.mode, config_of, {})
    finetune_from = path.parent / spec.finetune_from
    finetune_from = str(finetune_from) if finetune_from.exists() else spec.finetune_from  # else a preset or cwd's
    seeds = spec.seeds or [base.train.seed]
    for seed in seeds:  # a seed the base's split cannot take (the book's order takes 32 bits) fails here, not mid-sweep
        config_of({"train.seed": seed}, f"{path}: seeds: {seed}")
    _check_resources(path, spec, variants)
    return Sweep(
        path, base_path, spec.mode, seeds, axes, fixed, variants, finetune_from=finetune_from, resources=spec.resources
    )


def _check_resources(path: Path, spec: SweepFile, variants: list[Variant]) -> None:
    """A [resources.variants] table names variants of this sweep."""
    slugs = [v.slug for v in variants]
    unknown = [slug for slug in spec.resources.variants if slug not in slugs]
    if unknown:
        raise ConfigError(f"{path}: [resources.variants] {unknown[0]}: no such variant; the variants are {slugs}")
