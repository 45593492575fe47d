"""Ablations: train every variant of a base config, for several seeds, on the same data and
token budget, and compare them in one table and one plot.

A sweep file names the base config and the axes to vary::

    base = "../tiny.toml"          # relative to this file's folder, else to the current one
    seeds = [0, 1]                 # train.seed of each run: initialisation and dropout
    mode = "product"               # or "one_at_a_time": each axis alone around the base
    [set]                          # fixed overrides applied to every run
    "train.max_steps" = 150
    [axes]
    "model.positional.name" = ["learned", "rope", "alibi"]

Every variant is validated before anything trains. The output folder holds::

    DIR/sweep.json                  the resolved sweep (refuses to be reused for another)
    DIR/results.csv, results.md     one row per variant, mean ± sample std over seeds
    DIR/loss_curves.png             validation loss against tokens, seeds as a min–max band
    DIR/runs/<variant>-seed<k>/     each run's folder, with ablation.json once it has finished
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import itertools
import json
import math
import multiprocessing
import os
import re
import shutil
import statistics
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tqdm import tqdm

from gptzoo.core import GPT, ConfigError, GptzooError, apply_overrides, config_error, read_toml
from gptzoo.recipes.config.presets import find_config
from gptzoo.recipes.config.schema import RunConfig, validate_run_config
from gptzoo.recipes.research.sweep.stats import MIN_SEEDS_FOR_INTERVAL, PairedDifference, paired_difference
from gptzoo.recipes.runs.folder import TRAIN_STATE, atomic_path, load_config, read_metrics, save_png, write_text_atomic
from gptzoo.recipes.runs.manifest import LOCK, OWNER
from gptzoo.registry import Registry

SWEEP = "sweep.json"
RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
CURVES_PNG = "loss_curves.png"
EXTRAPOLATION_PNG = "extrapolation.png"
SCALING_PNG = "scaling.png"
RUNS = "runs"
RUN_RESULT = "ablation.json"  # written when a run has finished (trained or diverged)

BUDGET_KEYS = ("max_steps", "epochs", "max_tokens", "max_flops")

Trainer = Callable[..., Any]  # gptzoo.recipes.training.loop.train's signature


# ---- the sweep file ---------------------------------------------------------------------


class MatchParams(BaseModel):
    """Size one dimension of every variant so that all have (nearly) the same parameter count."""

    model_config = ConfigDict(extra="forbid")

    by: str = Field(description='the dotted key to size, e.g. "model.d_model" or "model.feed_forward.hidden"')
    target: int | Literal["base"] = Field(
        "base",
        description="parameters to reach; base: the base config's own count (with [sizes]: at each variant's size)",
    )
    multiple_of: int = Field(
        1, gt=0, description="values tried are multiples of this (n_heads for d_model, 64 for hardware-friendly widths)"
    )
    tolerance: float = Field(
        0.02, gt=0, description="largest relative miss allowed; a variant further off stops the sweep"
    )


class SweepFile(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    base: str = Field(description="the base run config, relative to the sweep file's folder or the current one")
    seeds: list[int] | None = Field(None, min_length=1, description="None: the base's train.seed")
    mode: Literal["product", "one_at_a_time"] = "product"
    axes: dict[str, Any] = Field(default_factory=dict)
    fixed: dict[str, Any] = Field(default_factory=dict, alias="set")
    match_params: MatchParams | None = None
    extrapolate: list[float] = Field(
        default_factory=list,
        description="after training, score each run at these multiples of its context, e.g. [1, 2, 4]",
    )
    sizes: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description='named model sizes, each a table of overrides, e.g. s = { "model.n_layers" = 2, "model.d_model" = 64 }',
    )


@dataclass(frozen=True)
class Variant:
    slug: str  # folder-safe name: runs/<slug>-seed<k>
    label: str  # what the table shows: "positional=rope, norm=rmsnorm"
    overrides: dict[str, Any]  # axis key -> value for this variant (a size's keys spelled out)
    config: RunConfig  # base + [set] + overrides (+ the matched size), at the base's train.seed
    is_base: bool = False
    size: str | None = None  # with sizes: the named size; the rest of the label names its group in the scaling fit
    group: str = ""
    matched: dict | None = None  # with match_params: {"key", "value", "params", "target", "error"}

    def run_name(self, seed: int) -> str:
        return f"{self.slug}-seed{seed}"


@dataclass
class Sweep:
    source: Path
    base_path: Path
    mode: str
    seeds: list[int]
    axes: dict[str, list]
    fixed: dict[str, Any]
    variants: list[Variant]
    extrapolate: list[float] = dataclasses.field(default_factory=list)
    sizes: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    registry: Registry | None = None  # what the variants were validated against

    def spec(self) -> dict:
        """The resolved sweep, as sweep.json records it."""
        return {
            "source": str(self.source),
            "base": str(self.base_path),
            "mode": self.mode,
            "seeds": self.seeds,
            "set": self.fixed,
            "axes": self.axes,
            "extrapolate": self.extrapolate,
            "sizes": self.sizes,
            "variants": [
                {
                    "slug": v.slug,
                    "label": v.label,
                    "base": v.is_base,
                    "overrides": override_strings(v.overrides),
                    "size": v.size,
                    "matched": v.matched,
                    "components": provenance(v.config, self.registry),
                    "config": v.config.model_dump(mode="json"),
                }
                for v in self.variants
            ],
        }


def override_strings(overrides: dict[str, Any]) -> list[str]:
    """The ``key=value`` strings that ``--set`` takes, so a variant can be rerun by hand."""
    return [f"{key}={toml_value(value)}" for key, value in overrides.items()]


def toml_value(value: Any) -> str:
    """A value written as a TOML inline value (what ``apply_overrides`` parses back)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # inf and nan are TOML too
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON's escapes are a subset of TOML's
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{json.dumps(k, ensure_ascii=False)} = {toml_value(v)}" for k, v in value.items()) + " }"
        )
    return value.isoformat()  # TOML dates and times


def with_overrides(data: dict, overrides: dict[str, Any]) -> dict:
    """``data`` with dotted-key overrides applied as ``--set`` applies them.

    A new component ``name`` replaces its spec, so tables go before their keys and a ``name``
    before its siblings: ``positional.name = "rope"`` with ``positional.base = 500`` keeps the base.
    """
    ordered = dict(sorted(overrides.items(), key=lambda kv: (kv[0].count("."), not kv[0].endswith(".name"))))
    return apply_overrides(data, override_strings(ordered))


def _flatten(table: dict, prefix: str = "", *, until_list: bool) -> dict[str, Any]:
    """Dotted keys down to the leaves, so ``train.max_steps = 100`` (TOML nests unquoted dotted
    keys) means what ``"train.max_steps" = 100`` means. Axes stop at lists (their values)."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and (until_list or value):
            flat.update(_flatten(value, f"{dotted}.", until_list=until_list))
        else:
            flat[dotted] = value
    return flat


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
    fixed = _flatten(spec.fixed, until_list=False)
    sizes = {name: _flatten(table, until_list=False) for name, table in spec.sizes.items()}
    if sizes and spec.mode != "product":
        raise ConfigError(f'{path}: sizes need mode = "product" (every variant at every size)')
    if len(sizes) == 1:
        raise ConfigError(f"{path}: [sizes] names one size; a scaling curve needs two or more")
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

    # Each value alone first, so an error names the one axis and value that caused it.
    for key, values in axes.items():
        for value in values:
            where = f"{path}: [sizes] {value}" if key == "size" else f"{path}: [axes] {key} = {toml_value(value)}"
            config = _variant_config(base_data, _spell_out({key: value}, sizes), where, registry)
            _check_same_data_and_budget(config, base, where, budget=key != "size")

    variants = _make_variants(path, base_data, base, axes, spec.mode, registry, sizes)
    if spec.match_params is not None:
        variants = match_parameters(path, base_data, base, variants, spec.match_params, registry, sizes)
    _check_same_tokens(path, variants)
    seeds = spec.seeds or [base.train.seed]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{path}: seeds {seeds} repeat a seed; each variant runs once per seed")
    bad = [m for m in spec.extrapolate if m <= 0]
    if bad:
        raise ConfigError(
            f"{path}: extrapolate = {spec.extrapolate}: multiples of the context must be positive, got {bad[0]}"
        )
    return Sweep(path, base_path, spec.mode, seeds, axes, fixed, variants, spec.extrapolate, sizes, registry)


def parameter_count(config: RunConfig, vocab_size: int) -> int:
    with torch.device("meta"):  # shapes only
        return GPT(
            config.model.model_copy(update={"vocab_size": config.model.vocab_size or vocab_size})
        ).param_counts()["total"]


def _vocab_size(config: RunConfig) -> int:
    """The vocabulary the runs will have: given, or the tokenizer's (fitted on the corpus when it learns one)."""
    if config.model.vocab_size is not None:
        return config.model.vocab_size
    from gptzoo.recipes.data.tokens import fit_tokenizer

    tokenizer = config.model.tokenizer.build()
    fit_tokenizer(config.data, tokenizer)
    return tokenizer.vocab_size


def match_parameters(
    path: Path,
    base_data: dict,
    base: RunConfig,
    variants: list[Variant],
    match: MatchParams,
    registry: Registry | None,
    sizes: dict[str, dict[str, Any]],
) -> list[Variant]:
    """Each variant with ``match.by`` set to the multiple of ``match.multiple_of`` whose parameter
    count is nearest the target (the count rises with the size, so bisection finds it). With
    sizes, the base's count is taken at each variant's size: every size is matched to its own."""
    vocab = _vocab_size(base)
    targets: dict[str | None, int] = {}

    def target_at(size: str | None) -> int:
        if match.target != "base":
            return match.target
        if size not in targets:
            config = (
                base if size is None else _variant_config(base_data, sizes[size], f"{path}: [sizes] {size}", registry)
            )
            targets[size] = parameter_count(config, vocab)
        return targets[size]

    def sized_at(
        variant: Variant, where: str, cache: dict[int, tuple[RunConfig, int]], k: int
    ) -> tuple[RunConfig, int]:
        """The variant's config with ``match.by`` = k multiples and its parameter count, each k built once."""
        if k not in cache:
            config = _variant_config(
                base_data,
                {**variant.overrides, match.by: k * match.multiple_of},
                f"{where}, {match.by} = {k * match.multiple_of}",
                registry,
            )
            cache[k] = config, parameter_count(config, vocab)
        return cache[k]

    matched = []
    for variant in variants:
        where = f"{path}: match_params for variant '{variant.label}'"
        target = target_at(variant.size)
        sized = functools.partial(sized_at, variant, where, {})

        low, high = 1, 1
        while sized(high)[1] < target:
            low, high = high, 2 * high
            if high > 1 << 24:
                raise ConfigError(
                    f"{where}: {match.by} up to {high * match.multiple_of:,} does not reach {target:,} parameters"
                )
        while high - low > 1:  # sized(low) < target ≤ sized(high), unless low = high = 1
            middle = (low + high) // 2
            low, high = (middle, high) if sized(middle)[1] < target else (low, middle)
        k = min({low, high}, key=lambda k: abs(sized(k)[1] - target))
        config, count = sized(k)
        error = (count - target) / target
        if abs(error) > match.tolerance:
            raise ConfigError(
                f"{where}: the nearest {match.by} = {k * match.multiple_of} gives {count:,} parameters, {error:+.1%} off the "
                f"target {target:,} (tolerance {match.tolerance:.1%}); use a smaller multiple_of or a larger tolerance"
            )
        info = {"key": match.by, "value": k * match.multiple_of, "params": count, "target": target, "error": error}
        matched.append(dataclasses.replace(variant, config=config, matched=info))
    return matched


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
        return read_toml(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid JSON: {err}") from None


def _read_axes(path: Path, raw: dict[str, Any]) -> dict[str, list]:
    axes = _flatten(raw, until_list=True)
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


def _short_names(keys: list[str]) -> dict[str, str]:
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
    base_data: dict,
    base: RunConfig,
    axes: dict[str, list],
    mode: str,
    registry: Registry | None,
    sizes: dict[str, dict[str, Any]],
) -> list[Variant]:
    short = _short_names(list(axes))
    base_dump = base.model_dump(mode="json")
    variants: list[Variant] = []
    seen: dict[str, str] = {}  # resolved config -> label, to catch two spellings of one variant
    for overrides in expand_grid(axes, mode):
        label = ", ".join(f"{short[k]}={_show(v)}" for k, v in overrides.items()) or "base"
        group = ", ".join(f"{short[k]}={_show(v)}" for k, v in overrides.items() if k != "size") or "base"
        size = overrides.get("size")
        slug = _slug(overrides, short)
        overrides = _spell_out(overrides, sizes)
        config = _variant_config(base_data, overrides, f"{path}: variant {label}", registry) if overrides else base
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


# ---- running ----------------------------------------------------------------------------


@dataclass
class RunResult:
    """One (variant, seed) run as ablation.json records it."""

    variant: str
    seed: int
    status: Literal["done", "diverged", "failed"]
    message: str = ""
    params: int | None = None
    steps: int | None = None
    tokens: int | None = None
    final_val_loss: float | None = None
    best_val_loss: float | None = None
    final_val_accuracy: float | None = None  # top-1 on a task's answers (every token of a corpus)
    flops: float | None = None  # training FLOPs: tokens × the model's training FLOPs per token
    tokens_per_s: float | None = None
    peak_memory_bytes: int | None = None
    wall_s: float | None = None
    workers: int = 1  # runs training at once when this one ran: its speed is comparable only at 1
    extrapolation: dict | None = None  # multiple -> {"context", "loss", "accuracy"} or {"context", "refused"}
    components: dict | None = None  # config path -> the plugin, distribution, version and code digest that provided it

    @property
    def finished(self) -> bool:
        """A diverged run would diverge again: only failures are retried on resume."""
        return self.status in ("done", "diverged")


@dataclass(frozen=True)
class RunTask:
    variant: str
    seed: int
    folder: Path
    config: dict  # the RunConfig as JSON (validated again where it runs)
    workers: int = 1
    extrapolate: tuple[float, ...] = ()


def run_sweep(
    sweep: Sweep,
    out: str | Path,
    *,
    trainer: Trainer | None = None,
    registry: Registry | None = None,
    workers: int = 1,
    progress: bool = True,
    log: Callable[[str], None] = tqdm.write,
) -> list[RunResult]:
    """Train every (variant, seed) not finished yet in ``out``, then write the results.

    ``trainer`` defaults to gptzoo.recipes.training.loop.train; with ``workers`` > 1 it must be
    importable by name (the workers are spawned) and the runs use the default registry.
    """
    out = Path(out)
    if workers < 1:
        raise GptzooError(f"workers = {workers}: give 1 or more")
    if workers > 1 and registry is not None:
        raise GptzooError(
            "a registry built in code cannot reach worker processes: use workers = 1, or install the plugin with an entry point"
        )
    _claim_folder(out, sweep)

    results: dict[tuple[str, int], RunResult] = {}
    tasks: list[RunTask] = []
    for variant in sweep.variants:
        current = provenance(variant.config, registry)
        for seed in sweep.seeds:
            folder = out / RUNS / variant.run_name(seed)
            previous = _read_result(folder)
            if previous is not None and previous.finished:
                changed = _changed_components(previous.components, current)
                if not changed:
                    results[variant.slug, seed] = previous
                    if previous.components is None:
                        log(
                            f"[{folder.name}] reused without a record of its plugins' versions (trained before gptzoo kept one); delete {folder} to train it again"
                        )
                    continue
                log(
                    f"[{folder.name}] trained with other plugin code than is installed now ({'; '.join(changed)}): training it again"
                )
                shutil.rmtree(folder)
            config = variant.config.model_copy(update={"train": variant.config.train.model_copy(update={"seed": seed})})
            tasks.append(
                RunTask(
                    variant.slug,
                    seed,
                    folder,
                    config.model_dump(mode="json"),
                    min(workers, len(sweep.variants) * len(sweep.seeds)),
                    tuple(sweep.extrapolate),
                )
            )
    if results:
        log(
            f"{len(results)} of {len(results) + len(tasks)} runs already finished in {out}; running the other {len(tasks)}"
        )

    bar = tqdm(
        total=len(results) + len(tasks),
        initial=len(results),
        desc="sweep",
        unit="run",
        position=0,
        disable=not progress,
    )
    with bar:
        if workers == 1:
            for task in tasks:
                bar.set_postfix_str(task.folder.name)
                result = _execute(task, trainer, registry, progress, log)
                results[task.variant, task.seed] = result
                bar.update()
        else:
            threads = max(1, (os.cpu_count() or 1) // workers)
            context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools
            with ProcessPoolExecutor(
                workers, mp_context=context, initializer=_pin_threads, initargs=(threads,)
            ) as pool:
                futures = [pool.submit(_execute, task, trainer, None, False, print) for task in tasks]
                for future in as_completed(futures):
                    result = future.result()
                    results[result.variant, result.seed] = result
                    bar.set_postfix_str(f"{result.variant}-seed{result.seed} {result.status}")
                    bar.update()

    ordered = [results[v.slug, s] for v in sweep.variants for s in sweep.seeds]
    write_results(sweep, out, ordered, log)
    return ordered


def _pin_threads(threads: int) -> None:
    torch.set_num_threads(threads)  # each worker its share of the cores, not all of them


def _claim_folder(out: Path, sweep: Sweep) -> None:
    """Write DIR/sweep.json, refusing a folder that holds something else."""
    spec = sweep.spec()
    file = out / SWEEP
    if file.is_file():
        try:
            stored = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise GptzooError(f"{file}: not valid JSON ({err}); is {out} an ablation folder?") from None
        difference = _sweep_difference(stored, spec)
        if difference:
            raise GptzooError(
                f"{out} holds a different sweep (from {stored.get('source')}): {difference}. "
                f"Choose another --out, or delete {out} to start this sweep over"
            )
    elif out.exists() and (not out.is_dir() or any(p.name not in (LOCK, OWNER) for p in out.iterdir())):
        raise GptzooError(
            f"{out} exists and is not an ablation folder (no {SWEEP}); choose a new or empty folder for --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(file, json.dumps(spec, indent=2) + "\n")


def _sweep_difference(stored: dict, spec: dict) -> str:
    """What makes two sweep specs different runs, in words; '' when they are the same sweep."""
    if stored.get("seeds") != spec["seeds"]:
        return f"seeds {stored.get('seeds')} there, {spec['seeds']} here"
    if stored.get("extrapolate", []) != spec["extrapolate"]:
        return f"extrapolate = {stored.get('extrapolate', [])} there, {spec['extrapolate']} here"
    old = {v["slug"]: v["config"] for v in stored.get("variants", [])}
    new = {v["slug"]: v["config"] for v in spec["variants"]}
    if set(old) != set(new):
        return f"variants {sorted(old)} there, {sorted(new)} here"
    changed = [slug for slug in new if old[slug] != new[slug]]
    return f"variant '{changed[0]}' has a different config" if changed else ""


def _read_result(folder: Path) -> RunResult | None:
    file = folder / RUN_RESULT
    if not file.is_file():
        return None
    try:
        return RunResult(**json.loads(file.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError):
        return None  # a damaged marker: run it again


def _execute(
    task: RunTask, trainer: Trainer | None, registry: Registry | None, progress: bool, log: Callable[[str], None]
) -> RunResult:
    """Train one run (resuming from its checkpoint when it has one) and write its ablation.json.

    A failure or divergence becomes the run's result; only Ctrl-C stops the sweep.
    """
    from gptzoo.recipes.training.loop import NonFiniteLossError

    if trainer is None:
        from gptzoo.recipes.training.loop import train as trainer
    name = task.folder.name
    resume = (task.folder / TRAIN_STATE).is_file()
    if task.folder.exists() and not resume:
        shutil.rmtree(task.folder)  # a start that left no checkpoint: nothing in it to keep
    try:
        config = validate_run_config(task.config, f"{task.folder} config", registry)
        summary = trainer(
            config, task.folder, resume=resume, registry=registry, progress=progress, log=lambda m: log(f"[{name}] {m}")
        )
        if getattr(summary, "stopped", "done") == "interrupted":
            raise KeyboardInterrupt  # Ctrl-C: train saved a checkpoint; the sweep stops and resumes from it
        values = {
            f.name: getattr(summary, f.name, None) for f in dataclasses.fields(RunResult) if f.name in _SUMMARY_FIELDS
        }
        final = values["final_val_loss"]
        status = "done" if final is None or math.isfinite(final) else "diverged"
        result = RunResult(
            task.variant, task.seed, status, "" if status == "done" else f"final validation loss {final}", **values
        )
    except NonFiniteLossError as err:
        result = RunResult(task.variant, task.seed, "diverged", str(err))
    except Exception as err:  # noqa: BLE001 -- one failed run is reported, the sweep goes on
        message = str(err) if isinstance(err, GptzooError) else f"{type(err).__name__}: {err}"
        result = RunResult(task.variant, task.seed, "failed", message)
    result.components = provenance(validate_run_config(task.config, f"{task.folder} config", registry), registry)
    result.params, flops_per_token = _model_costs(task.folder, registry)
    if result.tokens is not None and flops_per_token is not None:
        result.flops = float(result.tokens * flops_per_token)
    result.workers = task.workers
    if result.status == "done":
        result.final_val_accuracy = (read_metrics(task.folder)[-1:] or [{}])[0].get("val_accuracy")
        if task.extrapolate:
            result.extrapolation = _extrapolation(task.folder, task.extrapolate, registry)
    if result.status != "done":
        log(f"[{name}] {result.status}: {result.message}")
    task.folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(task.folder / RUN_RESULT, json.dumps(dataclasses.asdict(result), indent=2) + "\n")
    return result


_SUMMARY_FIELDS = ("steps", "tokens", "final_val_loss", "best_val_loss", "tokens_per_s", "peak_memory_bytes", "wall_s")


def provenance(config: RunConfig, registry: Registry | None) -> dict[str, dict[str, str]]:
    """Who provides each component of ``config`` (as the run folder's manifest records it), plus a
    sha256 of the source file that defines each implementation, so edited plugin code shows too."""
    from gptzoo.recipes.runs.manifest import components_of
    from gptzoo.registry import default_registry

    found = components_of(config, registry or default_registry())
    for path, entry in found.items():
        spec: Any = config
        for part in path.split("."):
            spec = (
                spec[int(part)]
                if isinstance(spec, (list, tuple))
                else spec[part]
                if isinstance(spec, dict)
                else getattr(spec, part)
            )
        entry["code"] = _source_digest(spec.impl)
    return found


def _source_digest(impl: type) -> str:
    import hashlib
    import inspect

    try:
        source = Path(inspect.getsourcefile(impl) or "")
        return hashlib.sha256(source.read_bytes()).hexdigest()[:16] if source.is_file() else ""
    except (OSError, TypeError):
        return ""


def _changed_components(recorded: dict | None, current: dict) -> list[str]:
    """What differs between the providers a run recorded and those installed now, in words."""
    if recorded is None:
        return []
    changed = []
    for path in sorted(set(recorded) | set(current)):
        old, new = recorded.get(path), current.get(path)
        if old == new:
            continue
        if old is None or new is None:
            changed.append(f"{path} {'added' if old is None else 'removed'}")
        elif (old["distribution"], old["version"]) != (new["distribution"], new["version"]):
            changed.append(
                f"{path} '{new['name']}' from {old['distribution']} {old['version']} then, {new['distribution']} {new['version']} now"
            )
        else:
            changed.append(
                f"{path} '{new['name']}': the code of {new['plugin']} changed (same version {new['version']})"
            )
    return changed


def _extrapolation(folder: Path, multiples: tuple[float, ...], registry: Registry | None) -> dict:
    """The run's loss and accuracy at each multiple of its context, or why its positions cannot go there."""
    from gptzoo.recipes.research.extrapolate import LengthLimitError, extrapolate
    from gptzoo.recipes.runs.folder import build_tokenizer
    from gptzoo.recipes.training.devices import resolve_device

    config = load_config(folder, registry)
    tokenizer = build_tokenizer(config, folder)
    scores = {}
    for multiple in multiples:
        context = max(1, round(multiple * config.model.context_length))
        try:
            (summary,) = extrapolate(config, folder, tokenizer, [context], resolve_device(config.train.device))
            scores[f"{multiple:g}"] = {"context": context, "loss": summary["loss"], "accuracy": summary["accuracy"]}
        except LengthLimitError as err:
            scores[f"{multiple:g}"] = {"context": context, "refused": str(err)}
    return scores


def _model_costs(folder: Path, registry: Registry | None) -> tuple[int | None, int | None]:
    """Parameters and training FLOPs per token of the model the run saved (its config.json has the vocabulary size filled in)."""
    try:
        config = load_config(folder, registry)
    except GptzooError:
        return None, None  # the run failed before saving its config
    if config.model.vocab_size is None:
        return None, None
    with torch.device("meta"):  # shapes only
        model = GPT(config.model)
        return model.param_counts()["total"], model.flops_per_token()["training"]


# ---- results ----------------------------------------------------------------------------


@dataclass
class Stat:
    mean: float | None
    std: float | None  # sample std (ddof=1); None with fewer than two values

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        if not values:
            return cls(None, None)
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None)


@dataclass
class VariantRow:
    variant: Variant
    status: str
    seeds: int
    seeds_ok: int
    params: int | None
    tokens: float | None  # mean over seeds
    flops: float | None
    final_val_loss: Stat
    best_val_loss: Stat
    final_val_accuracy: Stat
    final_perplexity: Stat
    best_perplexity: Stat
    delta_loss: PairedDifference  # final val loss, variant − base, paired by seed
    delta_accuracy: PairedDifference  # final val accuracy, the same way
    tokens_per_s: float | None
    peak_memory_bytes: int | None
    wall_s: float | None
    workers: int  # the most runs that trained at once beside one of this variant's
    is_reference: bool = False  # the row the others' Δ is taken against (the base, or its size's)

    @property
    def delta_final_val_loss(self) -> float | None:
        return self.delta_loss.mean


def aggregate(variants: list[Variant], results: list[RunResult]) -> list[VariantRow]:
    """One row per variant over its finished seeds; Δ is against the base, seed by seed."""
    rows = []
    for variant in variants:
        runs = [r for r in results if r.variant == variant.slug]
        ok = [r for r in runs if r.status == "done" and r.final_val_loss is not None]
        final = [r.final_val_loss for r in ok]
        best = [r.best_val_loss for r in ok if r.best_val_loss is not None]
        params = [r.params for r in runs if r.params is not None]
        tokens_per_s = [r.tokens_per_s for r in ok if r.tokens_per_s is not None]
        memory = [r.peak_memory_bytes for r in ok if r.peak_memory_bytes is not None]
        wall = [r.wall_s for r in ok if r.wall_s is not None]
        rows.append(
            VariantRow(
                variant=variant,
                status=_status(runs),
                seeds=len(runs),
                seeds_ok=len(ok),
                params=params[0] if params else None,
                tokens=statistics.fmean([r.tokens for r in ok if r.tokens is not None])
                if any(r.tokens is not None for r in ok)
                else None,
                flops=statistics.fmean([r.flops for r in ok if r.flops is not None])
                if any(r.flops is not None for r in ok)
                else None,
                final_val_loss=Stat.of(final),
                best_val_loss=Stat.of(best),
                final_val_accuracy=Stat.of([r.final_val_accuracy for r in ok if r.final_val_accuracy is not None]),
                final_perplexity=Stat.of([math.exp(x) for x in final]),
                best_perplexity=Stat.of([math.exp(x) for x in best]),
                delta_loss=PairedDifference(0, None),
                delta_accuracy=PairedDifference(0, None),
                tokens_per_s=statistics.fmean(tokens_per_s) if tokens_per_s else None,
                peak_memory_bytes=max(memory) if memory else None,
                wall_s=statistics.fmean(wall) if wall else None,
                workers=max((r.workers for r in ok), default=1),
            )
        )
    reference = references(variants)

    def by_seed(slug: str, metric: str) -> dict[int, float]:
        return {
            r.seed: getattr(r, metric)
            for r in results
            if r.variant == slug and r.status == "done" and getattr(r, metric) is not None
        }

    for row in rows:
        ref = reference[row.variant.slug]
        row.is_reference = ref == row.variant.slug
        row.delta_loss = paired_difference(by_seed(row.variant.slug, "final_val_loss"), by_seed(ref, "final_val_loss"))
        row.delta_accuracy = paired_difference(
            by_seed(row.variant.slug, "final_val_accuracy"), by_seed(ref, "final_val_accuracy")
        )
    return rows


def references(variants: list[Variant]) -> dict[str, str]:
    """Each variant's slug -> the slug its Δ is taken against: the base, or with sizes the base's
    values at the variant's own size (a difference across sizes would mostly measure the size)."""
    base = next(v for v in variants if v.is_base)
    at_size = {v.size: v.slug for v in variants if v.size is not None and v.group == base.group}
    return {v.slug: at_size.get(v.size, base.slug) for v in variants}


def _status(runs: list[RunResult]) -> str:
    """ok, diverged or failed: message; '(k/n seeds)' when only some seeds went that way."""
    for status in ("failed", "diverged"):
        bad = [r for r in runs if r.status == status]
        if bad:
            share = f" ({len(bad)}/{len(runs)} seeds)" if len(bad) < len(runs) else ""
            message = f": {bad[0].message}" if status == "failed" else ""
            return f"{status}{share}{message}"
    return "ok"


CSV_COLUMNS = [
    "variant", "label", "base", "status", "seeds", "seeds_ok", "params", "tokens", "flops",
    "final_val_loss_mean", "final_val_loss_std", "best_val_loss_mean", "best_val_loss_std",
    "final_val_accuracy_mean", "final_val_accuracy_std",
    "final_perplexity_mean", "final_perplexity_std", "best_perplexity_mean", "best_perplexity_std",
    "delta_final_val_loss", "delta_final_val_loss_ci95_low", "delta_final_val_loss_ci95_high",
    "delta_final_val_accuracy", "delta_final_val_accuracy_ci95_low", "delta_final_val_accuracy_ci95_high", "paired_seeds",
    "tokens_per_s", "peak_memory_bytes", "wall_s", "workers", "overrides",
]  # fmt: skip


def write_results(
    sweep: Sweep, out: Path, results: list[RunResult], log: Callable[[str], None] = print
) -> list[VariantRow]:
    rows = aggregate(sweep.variants, results)
    with atomic_path(out / RESULTS_CSV) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow([_csv(v) for v in _csv_values(row)])
    table = markdown_table(sweep, rows)
    if sweep.extrapolate:
        table += "\n" + extrapolation_table(sweep, results)
    if sweep.sizes:
        table += "\n" + scaling_table(sweep, rows)
    write_text_atomic(out / RESULTS_MD, table)
    try:
        plot_loss_curves(sweep, out, out / CURVES_PNG)
        if sweep.extrapolate:
            plot_extrapolation(sweep, results, out / EXTRAPOLATION_PNG)
        if sweep.sizes:
            plot_scaling(sweep, rows, out / SCALING_PNG)
    except GptzooError as err:
        log(f"plots skipped: {err}")
    return rows


@dataclass
class PowerLaw:
    """loss ≈ a · C^(−b) over training FLOPs C, least squares on log loss against log C."""

    a: float
    b: float
    points: list[tuple[float, float]]  # (FLOPs, mean final loss) per size

    @classmethod
    def fit(cls, points: list[tuple[float, float]]) -> PowerLaw | None:
        if len({c for c, _ in points}) < 2:
            return None
        xs, ys = [math.log(c) for c, _ in points], [math.log(loss) for _, loss in points]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
        return cls(math.exp(my - slope * mx), -slope, points)

    def __call__(self, flops: float) -> float:
        return self.a * flops ** (-self.b)


def scaling_fits(sweep: Sweep, rows: list[VariantRow]) -> dict[str, PowerLaw | None]:
    """Per group of variants (the label without the size): the power law through its sizes' (FLOPs, final loss)."""
    groups: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        if row.variant.size is not None and row.flops and row.final_val_loss.mean is not None:
            groups.setdefault(row.variant.group, []).append((row.flops, row.final_val_loss.mean))
    return {group: PowerLaw.fit(points) for group, points in groups.items()}


def scaling_table(sweep: Sweep, rows: list[VariantRow]) -> str:
    sizes = list(sweep.sizes)
    lines = [
        "Scaling: mean final validation loss per size (params, training FLOPs), and the power law loss ≈ a · C^(−b) "
        "fitted by least squares on log loss against log FLOPs C.",
        "",
        "| variant | " + " | ".join(sizes) + " | a | b |",
        "| --- | " + " | ".join("---:" for _ in sizes) + " | ---: | ---: |",
    ]
    fits = scaling_fits(sweep, rows)
    for group in dict.fromkeys(v.group for v in sweep.variants if v.size is not None):
        by_size = {row.variant.size: row for row in rows if row.variant.group == group and row.variant.size is not None}
        cells = []
        for size in sizes:
            row = by_size.get(size)
            if row is None or row.final_val_loss.mean is None:
                cells.append("—")
            else:
                cells.append(
                    f"{row.final_val_loss.mean:.4f} ({row.params:,}, {row.flops:.2g})"
                    if row.flops
                    else f"{row.final_val_loss.mean:.4f}"
                )
        fit = fits.get(group)
        lines.append(f"| {group} | " + " | ".join(cells) + (f" | {fit.a:.4g} | {fit.b:.4f} |" if fit else " | — | — |"))
    return "\n".join(lines) + "\n"


def plot_scaling(sweep: Sweep, rows: list[VariantRow], path: Path) -> None:
    """Final loss against training FLOPs, log-log, one colour per group: the sizes as points, the fit as a line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for group, fit in scaling_fits(sweep, rows).items():
        if fit is None:
            continue
        flops = [c for c, _ in fit.points]
        (points,) = ax.plot(
            flops, [loss for _, loss in fit.points], "o", label=f"{group}: {fit.a:.3g}·C^(−{fit.b:.3f})"
        )
        line = [min(flops) * (max(flops) / min(flops)) ** (i / 20) for i in range(21)]
        ax.plot(line, [fit(c) for c in line], color=points.get_color(), linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter("{x:.2f}")  # a loss spans less than a decade: plain numbers, not 4×10⁰
    ax.yaxis.set_minor_formatter("{x:.2f}")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("final validation loss")
    ax.set_title(
        f"{sweep.source.stem}: sizes {', '.join(sweep.sizes)}, mean over seeds {', '.join(map(str, sweep.seeds))}",
        fontsize=10,
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save_png(fig, path)


def extrapolation_scores(sweep: Sweep, results: list[RunResult]) -> dict[str, dict[str, list[float] | str]]:
    """Per variant label, per multiple: the finished seeds' scores (loss, or a task's accuracy), or why it was refused."""
    metric = "accuracy" if sweep.variants[0].config.data.task is not None else "loss"
    table: dict[str, dict[str, list[float] | str]] = {}
    for variant in sweep.variants:
        runs = [r for r in results if r.variant == variant.slug and r.status == "done" and r.extrapolation]
        cells: dict[str, list[float] | str] = {}
        for multiple in (f"{m:g}" for m in sweep.extrapolate):
            scored = [r.extrapolation[multiple] for r in runs if multiple in r.extrapolation]
            refused = [s["refused"] for s in scored if "refused" in s]
            cells[multiple] = refused[0] if refused else [s[metric] for s in scored]
        table[variant.label] = cells
    return table


def extrapolation_table(sweep: Sweep, results: list[RunResult]) -> str:
    metric = "answer accuracy" if sweep.variants[0].config.data.task is not None else "validation loss"
    context = sweep.variants[0].config.model.context_length
    multiples = [f"{m:g}" for m in sweep.extrapolate]
    lines = [
        f"Length extrapolation: {metric} at multiples of the trained context ({context} tokens), non-overlapping windows of the "
        f"validation split (a task's validation examples at that length), mean ± sample std over seeds.",
        "",
        "| variant | " + " | ".join(f"{m}× ({max(1, round(float(m) * context))})" for m in multiples) + " |",
        "| --- | " + " | ".join("---:" for _ in multiples) + " |",
    ]
    reasons = []
    for variant, (label, cells) in zip(sweep.variants, extrapolation_scores(sweep, results).items(), strict=True):
        shown = ["refused" if isinstance(c, str) else _pm(Stat.of(c), 4) for c in cells.values()]
        lines.append(f"| {label} | " + " | ".join(shown) + " |")
        if "refused" in shown:
            positional = variant.config.model.positional
            reasons.append(
                f"{label}: refused past {context} tokens: positional '{positional.name}' says {positional.impl.length_limit}."
            )
    lines += ["", *reasons] if reasons else []
    return "\n".join(lines) + "\n"


def plot_extrapolation(sweep: Sweep, results: list[RunResult], path: Path) -> None:
    """Loss (or accuracy) against evaluation context, one line per variant (mean over seeds)."""
    plt = _pyplot()
    context = sweep.variants[0].config.model.context_length
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, cells in extrapolation_scores(sweep, results).items():
        points = [(float(m) * context, statistics.fmean(c)) for m, c in cells.items() if not isinstance(c, str) and c]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=label)
    ax.axvline(context, color="black", linestyle="--", linewidth=1, label="trained context")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("evaluation context (tokens)")
    ax.set_ylabel("answer accuracy" if sweep.variants[0].config.data.task is not None else "validation loss")
    ax.set_title(
        f"{sweep.source.stem}: length extrapolation, mean over seeds {', '.join(map(str, sweep.seeds))}", fontsize=10
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_png(fig, path)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise GptzooError("matplotlib is not installed; install the plots extra: pip install 'gptzoo[plots]'") from None
    return plt


def _csv_values(row: VariantRow) -> list:
    stats = [row.final_val_loss, row.best_val_loss, row.final_val_accuracy, row.final_perplexity, row.best_perplexity]
    return [
        row.variant.slug, row.variant.label, row.variant.is_base, row.status, row.seeds, row.seeds_ok, row.params, row.tokens, row.flops,
        *[x for s in stats for x in (s.mean, s.std)],
        row.delta_loss.mean, row.delta_loss.low, row.delta_loss.high,
        row.delta_accuracy.mean, row.delta_accuracy.low, row.delta_accuracy.high, row.delta_loss.n,
        row.tokens_per_s, row.peak_memory_bytes, row.wall_s, row.workers,
        " ".join(override_strings(row.variant.overrides)),
    ]  # fmt: skip


def _csv(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def _pm(stat: Stat, digits: int) -> str:
    if stat.mean is None:
        return "—"
    return f"{stat.mean:.{digits}f} ± {stat.std:.{digits}f}" if stat.std is not None else f"{stat.mean:.{digits}f}"


def _delta(row: VariantRow, difference: PairedDifference, digits: int) -> str:
    if row.is_reference:
        return "base" if row.variant.is_base else "its size's base"
    if difference.mean is None:
        return "—"
    if difference.low is None:
        return f"{difference.mean:+.{digits}f}"
    mark = " *" if difference.excludes_zero else ""
    return f"{difference.mean:+.{digits}f} [{difference.low:+.{digits}f}, {difference.high:+.{digits}f}]{mark}"


def markdown_table(sweep: Sweep, rows: list[VariantRow]) -> str:
    seeds = ", ".join(map(str, sweep.seeds))
    is_task = sweep.variants[0].config.data.task is not None  # every variant sees the same data
    shared = max((row.workers for row in rows), default=1)
    matched = sweep.variants[0].matched["key"] if sweep.variants[0].matched else None

    def speed(row: VariantRow) -> str:
        return "—" if row.tokens_per_s is None else f"{row.tokens_per_s:,.0f}" + (" †" if row.workers > 1 else "")

    columns: list[tuple[str, str, Callable[[VariantRow], str]]] = [  # header, alignment, cell
        ("variant", "---", lambda row: f"**{row.variant.label}** (base)" if row.variant.is_base else row.variant.label),
        ("params", "---:", lambda row: "—" if row.params is None else f"{row.params:,}"),
        *([(f"matched {_short_names([matched])[matched]}", "---:", lambda row: str(row.variant.matched["value"]))] if matched else []),
        ("tokens", "---:", lambda row: "—" if row.tokens is None else f"{row.tokens:,.0f}"),
        ("train FLOPs", "---:", lambda row: "—" if row.flops is None else f"{row.flops:.3g}"),
        ("final val loss", "---:", lambda row: _pm(row.final_val_loss, 4)),
        ("Δ final val loss", "---:", lambda row: _delta(row, row.delta_loss, 4)),
        *([("final val accuracy", "---:", lambda row: _pm(row.final_val_accuracy, 4)),
           ("Δ final val accuracy", "---:", lambda row: _delta(row, row.delta_accuracy, 4))] if is_task else []),
        ("best val loss", "---:", lambda row: _pm(row.best_val_loss, 4)),
        ("final ppl", "---:", lambda row: _pm(row.final_perplexity, 2)),
        ("tokens/s", "---:", speed),
        ("peak memory", "---:", lambda row: "—" if not row.peak_memory_bytes else f"{row.peak_memory_bytes / 2**20:,.1f} MiB"),
        ("wall", "---:", lambda row: "—" if row.wall_s is None else f"{row.wall_s:.1f} s"),
        ("status", "---", lambda row: row.status.replace("|", "\\|")),
    ]  # fmt: skip
    base = next(row for row in rows if row.variant.is_base)
    paired = max((row.delta_loss.n for row in rows if not row.variant.is_base), default=0)
    interval = (
        "95% Student-t interval over the seeds in brackets, * where it excludes 0"
        if paired >= MIN_SEEDS_FOR_INTERVAL
        else f"no interval is given with fewer than {MIN_SEEDS_FOR_INTERVAL} seeds"
    )
    noise = f"{base.final_val_loss.std:.4f}" if base.final_val_loss.std is not None else "unknown (one seed)"
    if is_task and base.final_val_accuracy.std is not None:
        noise += f" in loss, {base.final_val_accuracy.std:.4f} in accuracy"
    lines = [
        f"Sweep `{sweep.source.name}` ({sweep.mode}), base `{sweep.base_path.parent if sweep.base_path.suffix == '.json' else sweep.base_path.name}`, seeds {seeds}: mean ± sample std over seeds. "
        f"Δ = variant − base{' at the same size' if sweep.sizes else ''}, paired by seed (mean of the per-seed differences); {interval}. "
        f"Noise floor (the base's seed-to-seed std): {noise}.",
        "",
        "| " + " | ".join(c[0] for c in columns) + " |",
        "| " + " | ".join(c[1] for c in columns) + " |",
    ]
    lines += ["| " + " | ".join(cell(row) for _, _, cell in columns) + " |" for row in rows]
    lines += [
        "",
        "tokens/s, peak memory (each run's own peak: the GPU allocator's, or the process's resident memory since the run began) and "
        "wall time were measured on a machine other processes may have shared"
        + (
            f"; † = measured with up to {shared} runs training at once (--workers {shared}): not comparable between rows."
            if shared > 1
            else "."
        ),
    ]
    return "\n".join(lines) + "\n"


def loss_curves(sweep: Sweep, out: Path) -> dict[str, tuple[list[int], list[list[float]]]]:
    """Per variant: the evaluation token counts its seeds share, and each seed's val losses there."""
    curves = {}
    for variant in sweep.variants:
        per_seed = []
        for seed in sweep.seeds:
            records = read_metrics(out / RUNS / variant.run_name(seed))
            points = {
                r["tokens"]: r["val_loss"]
                for r in records
                if r.get("val_loss") is not None and math.isfinite(r["val_loss"])
            }
            if points:
                per_seed.append(points)
        if per_seed:
            tokens = sorted(set.intersection(*(set(p) for p in per_seed)))
            curves[variant.label] = (tokens, [[p[t] for t in tokens] for p in per_seed])
    return curves


def plot_loss_curves(sweep: Sweep, out: Path, path: Path) -> None:
    """Validation loss against tokens, one line per variant (mean over seeds), seeds as a min–max band."""
    plt = _pyplot()
    curves = loss_curves(sweep, out)
    base_label = next(v.label for v in sweep.variants if v.is_base)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, (tokens, losses) in curves.items():
        if not tokens:
            continue
        columns = list(zip(*losses, strict=True))
        mean = [statistics.fmean(c) for c in columns]
        is_base = label == base_label
        (line,) = ax.plot(
            tokens, mean, label=f"{label} (base)" if is_base else label, linewidth=2.2 if is_base else 1.3
        )
        if len(losses) > 1:
            ax.fill_between(
                tokens,
                [min(c) for c in columns],
                [max(c) for c in columns],
                color=line.get_color(),
                alpha=0.2,
                linewidth=0,
            )
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation loss")
    ax.set_title(
        f"{sweep.source.stem}: mean over seeds {', '.join(map(str, sweep.seeds))}, band = min–max", fontsize=10
    )
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    save_png(fig, path)
