"""The sweep's plots: loss curves, length extrapolation, scaling, the final metric against state bytes and
against the model width (matplotlib, the plots extra)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from gptzoo.core import GptzooError
from gptzoo.recipes.research.sweep.fits import scaling_fits
from gptzoo.recipes.research.sweep.plan import _show, short_names
from gptzoo.recipes.research.sweep.results import RunResult, Stat, VariantRow, extrapolation_scores
from gptzoo.recipes.research.sweep.schema import RUNS, Sweep
from gptzoo.recipes.runs.files import save_png
from gptzoo.recipes.runs.metrics import read_metrics

CURVES_PNG = "loss_curves.png"
EXTRAPOLATION_PNG = "extrapolation.png"
SCALING_PNG = "scaling.png"
STATE_BYTES_PNG = "state_bytes.png"
WIDTH_PNG = "width.png"
WIDTH_KEY = "model.d_model"


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
                if r.get("val_loss") is not None and math.isfinite(r["val_loss"]) and "tokens" in r  # not fine-tunings
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


def plot_state_bytes(sweep: Sweep, rows: list[VariantRow], path: Path) -> None:
    """The final metric (a task's answer accuracy, else the validation loss) against each variant's decoding
    cache in bytes (log x), mean ± std over seeds, each point named: recall against state size."""
    plt = _pyplot()
    accuracy = sweep.reports_accuracy
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for row in rows:
        stat = row.final_val_accuracy if accuracy else row.final_val_loss
        if row.state_bytes is None or stat.mean is None:
            continue
        ax.errorbar(row.state_bytes, stat.mean, yerr=stat.std or 0.0, marker="o", capsize=3, label=row.variant.label)
    ax.set_xscale("log")
    ax.set_xlabel("decoding cache of one sequence at the context (bytes, float32)")
    ax.set_ylabel("final answer accuracy" if accuracy else "final validation loss")
    ax.set_title(f"{sweep.source.stem}: mean ± std over seeds {', '.join(map(str, sweep.seeds))}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    save_png(fig, path)


def width_curves(sweep: Sweep, rows: list[VariantRow]) -> dict[str, list[tuple[int, Stat]]]:
    """Per variant of the other axes (its label): each width it ran at, in increasing order, with the final
    metric over its seeds (a task's answer accuracy, else the validation loss)."""
    others = [key for key in sweep.axes if key != WIDTH_KEY]
    short = short_names(others)
    curves: dict[str, list[tuple[int, Stat]]] = {}
    for row in rows:
        overrides = row.variant.overrides
        stat = row.final_val_accuracy if sweep.reports_accuracy else row.final_val_loss
        if WIDTH_KEY not in overrides or stat.mean is None:
            continue  # the base run outside the grid, or a variant none of whose seeds finished
        label = ", ".join(f"{short[k]}={_show(overrides[k])}" for k in others) or "all"
        curves.setdefault(label, []).append((overrides[WIDTH_KEY], stat))
    return {label: sorted(points, key=lambda point: point[0]) for label, points in curves.items()}


def plot_width(sweep: Sweep, rows: list[VariantRow], path: Path) -> None:
    """The final metric against the model width (log₂ x), one line per variant of the other axes, mean ± std
    over seeds: Zoology's (Arora et al., 2023) accuracy-against-width form."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, points in width_curves(sweep, rows).items():
        widths = [width for width, _ in points]
        means = [stat.mean for _, stat in points]
        ax.errorbar(widths, means, yerr=[stat.std or 0.0 for _, stat in points], marker="o", capsize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(sweep.axes[WIDTH_KEY]))
    ax.xaxis.set_major_formatter("{x:.0f}")
    ax.set_xlabel("model width (d_model)")
    ax.set_ylabel("final answer accuracy" if sweep.reports_accuracy else "final validation loss")
    ax.set_title(f"{sweep.source.stem}: mean ± std over seeds {', '.join(map(str, sweep.seeds))}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    save_png(fig, path)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise GptzooError("matplotlib is not installed; install the plots extra: pip install 'gptzoo[plots]'") from None
    return plt
