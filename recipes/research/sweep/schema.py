"""The sweep file: its pydantic models, and the resolved sweep and variants it loads into.

A sweep file names the base config and the axes to vary::

    base = "../tiny.toml"          # relative to this file's folder, else to the current one
    seeds = [0, 1]                 # train.seed of each run: initialisation and dropout
    mode = "product"               # or "one_at_a_time": each axis alone around the base
    finetune_from = "runs/gpt2"    # only with a fine-tuning config as base: the run every variant fine-tunes
    [set]                          # fixed overrides applied to every run
    "train.max_steps" = 150
    [axes]
    "model.positional.name" = ["learned", "rope", "alibi"]

The output folder holds::

    DIR/sweep.json                  the resolved sweep (refuses to be reused for another)
    DIR/results.csv, results.md     one row per variant, mean ± sample std over seeds
    DIR/measurements.csv, .md       one row per variant: tokens/s, peak memory, wall time (apart: not reproducible)
    DIR/loss_curves.png             validation loss against tokens, seeds as a min–max band
    DIR/lr_sensitivity.png          with a train.lr axis: final loss against the learning rate per variant
    DIR/state_bytes.png             where variants' decoding caches differ: the final metric against their bytes
    DIR/width.png                   with a model.d_model axis: the final metric against the width per variant
    DIR/runs/<variant>-seed<k>/     each run's folder, with ablation.json once it has finished
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gptzoo.recipes.config.finetune import FinetuneConfig, Seed
from gptzoo.recipes.config.schema import RunConfig
from gptzoo.recipes.research.sweep.provenance import provenance
from gptzoo.registry import Registry

SWEEP = "sweep.json"
RUNS = "runs"
RUN_RESULT = "ablation.json"  # written when a run has finished (trained or diverged)


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


class RunResources(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cpus: float = Field(1.0, ge=0, description="CPUs each run asks a Ray cluster for (--executor ray)")
    gpus: float = Field(0.0, ge=0, description="GPUs each run asks a Ray cluster for (--executor ray)")


class SweepResources(RunResources):
    variants: dict[str, RunResources] = Field(
        default_factory=dict, description="a variant's own request, by its slug (runs/<slug>-seed<k>)"
    )


class SweepFile(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    base: str = Field(description="the base run config, relative to the sweep file's folder or the current one")
    seeds: list[Seed] | None = Field(None, min_length=1, description="None: the base's train.seed")
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
    finetune_from: str | None = Field(
        None,
        description="with a fine-tuning config as base: the run folder (or preset) every variant fine-tunes, "
        "relative to the sweep file's folder or the current one",
    )
    resources: SweepResources = Field(
        default_factory=SweepResources, description="what each run asks a Ray cluster for; not part of the results"
    )


@dataclass(frozen=True)
class Variant:
    slug: str  # folder-safe name: runs/<slug>-seed<k>
    label: str  # what the table shows: "positional=rope, norm=rmsnorm"
    overrides: dict[str, Any]  # axis key -> value for this variant (a size's keys spelled out)
    config: RunConfig | FinetuneConfig  # base + [set] + overrides (+ the matched size), at the base's train.seed
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
    finetune_from: str | None = None  # a fine-tuning sweep: the run every variant fine-tunes
    resources: SweepResources = dataclasses.field(default_factory=SweepResources)  # with --executor ray

    @property
    def reports_accuracy(self) -> bool:
        """Whether the runs measure a validation accuracy: a diagnostic task's, or a classifier fine-tuning's."""
        config = self.variants[0].config  # every variant sees the same data
        return config.kind == "classifier" if isinstance(config, FinetuneConfig) else config.data.task is not None

    def components(self, variant: Variant, registry: Registry | None) -> dict:
        """The plugins a variant's model uses (a fine-tuning's model is its base's, read when it runs: none here)."""
        return {} if isinstance(variant.config, FinetuneConfig) else provenance(variant.config, registry)

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
            **({"finetune_from": self.finetune_from} if self.finetune_from is not None else {}),
            "variants": [
                {
                    "slug": v.slug,
                    "label": v.label,
                    "base": v.is_base,
                    "overrides": override_strings(v.overrides),
                    "size": v.size,
                    "matched": v.matched,
                    "components": self.components(v, self.registry),
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
