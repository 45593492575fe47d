"""Reading runs back: each (variant, seed) run's result, and one row per variant over its seeds."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from gptzoo.recipes.research.sweep.schema import RUN_RESULT, Sweep, Variant
from gptzoo.recipes.research.sweep.stats import PairedDifference, paired_difference
from gptzoo.recipes.runs.metrics import read_measurements

if TYPE_CHECKING:
    from gptzoo.recipes.training.loop import TrainSummary


MEASURED_RESULT = ("tokens_per_s", "peak_memory_bytes", "wall_s", "load_per_core")  # in the run's measurements.jsonl


@dataclass
class RunResult:
    """One (variant, seed) run as ablation.json records it, with what the machine measured (MEASURED_RESULT) from
    the run's measurements.jsonl."""

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
    load_per_core: float | None = None  # the machine's 1-minute load average per core, the larger of start and end
    state_bytes: int | None = (
        None  # decoding cache of one sequence at the context, float32 (describe's bytes_per_sequence)
    )
    initial_val_loss: float | None = None  # step 0's validation loss (train.eval_at_start), before any update
    max_attention_logit: float | None = None  # the largest over layers at the last evaluation, where a mixer reports it
    extrapolation: dict | None = None  # multiple -> {"context", "loss", "accuracy"} or {"context", "refused"}
    components: dict | None = None  # config path -> the plugin, distribution, version and code digest that provided it

    @classmethod
    def from_summary(cls, variant: str, seed: int, summary: TrainSummary) -> RunResult:
        """A trained run: done, or diverged when its final validation loss is not finite."""
        final = summary.final_val_loss
        status = "done" if final is None or math.isfinite(final) else "diverged"
        return cls(
            variant,
            seed,
            status,
            "" if status == "done" else f"final validation loss {final}",
            steps=summary.steps,
            tokens=summary.tokens,
            final_val_loss=final,
            best_val_loss=summary.best_val_loss,
            tokens_per_s=summary.tokens_per_s,
            peak_memory_bytes=summary.peak_memory_bytes,
            wall_s=summary.wall_s,
        )

    @property
    def finished(self) -> bool:
        """A diverged run would diverge again: only failures are retried on resume."""
        return self.status in ("done", "diverged")


def read_result(folder: Path) -> RunResult | None:
    file = folder / RUN_RESULT
    if not file.is_file():
        return None
    try:
        result = RunResult(**json.loads(file.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError):
        return None  # a damaged marker: run it again
    if all(getattr(result, key) is None for key in MEASURED_RESULT):  # an earlier gptzoo kept them in ablation.json
        measured = [r for r in read_measurements(folder) if "wall_s" in r]
        for key in MEASURED_RESULT:
            setattr(result, key, (measured[-1:] or [{}])[0].get(key))
    return result


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
    state_bytes: int | None = None  # decoding cache of one sequence at the context (the same for every seed)
    loaded: bool = False  # a seed ran while the machine had more work than cores (load average per core above 1)
    is_reference: bool = False  # the row the others' Δ is taken against (the base, or its size's)

    @property
    def delta_final_val_loss(self) -> float | None:
        return self.delta_loss.mean

    @property
    def flops_per_token(self) -> float | None:
        """Training FLOPs per token (forward and backward, at the context)."""
        return self.flops / self.tokens if self.flops is not None and self.tokens else None

    @property
    def shared(self) -> bool:
        """Its speed was measured beside other work: other sweep runs (--workers), or a loaded machine."""
        return self.workers > 1 or self.loaded


def aggregate(variants: list[Variant], results: list[RunResult]) -> list[VariantRow]:
    """One row per variant over its finished seeds; Δ is against the base, seed by seed."""
    rows = [_row(variant, [r for r in results if r.variant == variant.slug]) for variant in variants]
    reference = references(variants)
    for row in rows:
        ref = reference[row.variant.slug]
        row.is_reference = ref == row.variant.slug
        row.delta_loss = paired_difference(
            _by_seed(results, row.variant.slug, "final_val_loss"), _by_seed(results, ref, "final_val_loss")
        )
        row.delta_accuracy = paired_difference(
            _by_seed(results, row.variant.slug, "final_val_accuracy"), _by_seed(results, ref, "final_val_accuracy")
        )
    return rows


def _row(variant: Variant, runs: list[RunResult]) -> VariantRow:
    """The variant's row over its seeds' runs, its Δ still to be filled in."""
    ok = [r for r in runs if r.status == "done" and r.final_val_loss is not None]
    final = [r.final_val_loss for r in ok]
    best = [r.best_val_loss for r in ok if r.best_val_loss is not None]
    params = [r.params for r in runs if r.params is not None]
    tokens_per_s = [r.tokens_per_s for r in ok if r.tokens_per_s is not None]
    memory = [r.peak_memory_bytes for r in ok if r.peak_memory_bytes is not None]
    wall = [r.wall_s for r in ok if r.wall_s is not None]
    return VariantRow(
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
        state_bytes=next((r.state_bytes for r in runs if r.state_bytes is not None), None),
        loaded=any((r.load_per_core or 0.0) > 1.0 for r in ok),
    )


def _by_seed(results: list[RunResult], slug: str, metric: str) -> dict[int, float]:
    """Seed -> the metric of the variant's finished runs that have it."""
    return {
        r.seed: getattr(r, metric)
        for r in results
        if r.variant == slug and r.status == "done" and getattr(r, metric) is not None
    }


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
