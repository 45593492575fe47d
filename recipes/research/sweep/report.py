"""The sweep's tables: results.csv and results.md (the variants, length extrapolation, scaling); what the machine
measured goes to measurements.csv and measurements.md (measured.py)."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from gptzoo.core import GptzooError
from gptzoo.recipes.research.sweep.fits import scaling_fits
from gptzoo.recipes.research.sweep.lr_sensitivity import LR_KEY, LR_PNG, lr_table, plot_lr_curves
from gptzoo.recipes.research.sweep.measured import MEASUREMENTS_MD, csv_cell, write_measurements
from gptzoo.recipes.research.sweep.plan import short_names
from gptzoo.recipes.research.sweep.plots import (
    CURVES_PNG,
    EXTRAPOLATION_PNG,
    SCALING_PNG,
    STATE_BYTES_PNG,
    WIDTH_KEY,
    WIDTH_PNG,
    plot_extrapolation,
    plot_loss_curves,
    plot_scaling,
    plot_state_bytes,
    plot_width,
)
from gptzoo.recipes.research.sweep.results import RunResult, Stat, VariantRow, aggregate, extrapolation_scores
from gptzoo.recipes.research.sweep.schema import Sweep, override_strings
from gptzoo.recipes.research.sweep.stats import MIN_SEEDS_FOR_INTERVAL, PairedDifference
from gptzoo.recipes.runs.files import atomic_path, write_text_atomic

RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"

CSV_COLUMNS = [
    "variant", "label", "base", "status", "seeds", "seeds_ok", "params", "tokens", "flops",
    "final_val_loss_mean", "final_val_loss_std", "best_val_loss_mean", "best_val_loss_std",
    "final_val_accuracy_mean", "final_val_accuracy_std",
    "final_perplexity_mean", "final_perplexity_std", "best_perplexity_mean", "best_perplexity_std",
    "delta_final_val_loss", "delta_final_val_loss_ci95_low", "delta_final_val_loss_ci95_high",
    "delta_final_val_accuracy", "delta_final_val_accuracy_ci95_low", "delta_final_val_accuracy_ci95_high", "paired_seeds",
    "overrides", "flops_per_token", "state_bytes",
]  # fmt: skip


def write_results(
    sweep: Sweep, out: Path, results: list[RunResult], log: Callable[[str], None] = print
) -> list[VariantRow]:
    rows = aggregate(sweep.variants, results)
    with atomic_path(out / RESULTS_CSV) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow([csv_cell(v) for v in _csv_values(row)])
    table = markdown_table(sweep, rows)
    if sweep.extrapolate:
        table += "\n" + extrapolation_table(sweep, results)
    if sweep.sizes:
        table += "\n" + scaling_table(sweep, rows)
    if LR_KEY in sweep.axes:
        table += "\n" + lr_table(sweep, results)
    write_text_atomic(out / RESULTS_MD, table)
    write_measurements(out, rows)
    try:
        plot_loss_curves(sweep, out, out / CURVES_PNG)
        if sweep.extrapolate:
            plot_extrapolation(sweep, results, out / EXTRAPOLATION_PNG)
        if sweep.sizes:
            plot_scaling(sweep, rows, out / SCALING_PNG)
        if LR_KEY in sweep.axes:
            plot_lr_curves(sweep, results, out / LR_PNG)
        if len({row.state_bytes for row in rows if row.state_bytes is not None}) > 1:
            plot_state_bytes(sweep, rows, out / STATE_BYTES_PNG)
        if len(sweep.axes.get(WIDTH_KEY, [])) > 1:
            plot_width(sweep, rows, out / WIDTH_PNG)
    except GptzooError as err:
        log(f"plots skipped: {err}")
    return rows


def _csv_values(row: VariantRow) -> list:
    stats = [row.final_val_loss, row.best_val_loss, row.final_val_accuracy, row.final_perplexity, row.best_perplexity]
    return [
        row.variant.slug, row.variant.label, row.variant.is_base, row.status, row.seeds, row.seeds_ok, row.params, row.tokens, row.flops,
        *[x for s in stats for x in (s.mean, s.std)],
        row.delta_loss.mean, row.delta_loss.low, row.delta_loss.high,
        row.delta_accuracy.mean, row.delta_accuracy.low, row.delta_accuracy.high, row.delta_loss.n,
        " ".join(override_strings(row.variant.overrides)), row.flops_per_token, row.state_bytes,
    ]  # fmt: skip


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
    columns = _columns(sweep, rows)
    lines = [
        _caption(sweep, rows),
        "",
        "| " + " | ".join(c[0] for c in columns) + " |",
        "| " + " | ".join(c[1] for c in columns) + " |",
    ]
    lines += ["| " + " | ".join(cell(row) for _, _, cell in columns) + " |" for row in rows]
    lines += [
        "",
        "state bytes: the decoding cache of one sequence at the trained context, float32 (what `gptzoo describe` "
        "counts: keys and values, windows and recurrent states). FLOPs/token: training FLOPs per token. "
        f"tokens/s, peak memory and wall time: {MEASUREMENTS_MD}.",
    ]
    return "\n".join(lines) + "\n"


def _columns(sweep: Sweep, rows: list[VariantRow]) -> list[tuple[str, str, Callable[[VariantRow], str]]]:
    """The table's columns: header, alignment, cell."""
    is_task = sweep.reports_accuracy
    matched = sweep.variants[0].matched["key"] if sweep.variants[0].matched else None

    return [
        ("variant", "---", lambda row: f"**{row.variant.label}** (base)" if row.variant.is_base else row.variant.label),
        ("params", "---:", lambda row: "—" if row.params is None else f"{row.params:,}"),
        *([(f"matched {short_names([matched])[matched]}", "---:", lambda row: str(row.variant.matched["value"]))] if matched else []),
        ("tokens", "---:", lambda row: "—" if row.tokens is None else f"{row.tokens:,.0f}"),
        ("train FLOPs", "---:", lambda row: "—" if row.flops is None else f"{row.flops:.3g}"),
        ("final val loss", "---:", lambda row: _pm(row.final_val_loss, 4)),
        ("Δ final val loss", "---:", lambda row: _delta(row, row.delta_loss, 4)),
        *([("final val accuracy", "---:", lambda row: _pm(row.final_val_accuracy, 4)),
           ("Δ final val accuracy", "---:", lambda row: _delta(row, row.delta_accuracy, 4))] if is_task else []),
        ("best val loss", "---:", lambda row: _pm(row.best_val_loss, 4)),
        ("final ppl", "---:", lambda row: _pm(row.final_perplexity, 2)),
        ("state bytes", "---:", lambda row: "—" if row.state_bytes is None else f"{row.state_bytes:,}"),
        ("FLOPs/token", "---:", lambda row: "—" if row.flops_per_token is None else f"{row.flops_per_token:.3g}"),
        ("status", "---", lambda row: row.status.replace("|", "\\|")),
    ]  # fmt: skip


def _caption(sweep: Sweep, rows: list[VariantRow]) -> str:
    """What the table shows: the sweep, its seeds, what Δ and its interval mean, the noise floor."""
    seeds = ", ".join(map(str, sweep.seeds))
    is_task = sweep.reports_accuracy
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
    return (
        f"Sweep `{sweep.source.name}` ({sweep.mode}), base `{sweep.base_path.parent if sweep.base_path.suffix == '.json' else sweep.base_path.name}`, seeds {seeds}: mean ± sample std over seeds. "
        f"Δ = variant − base{' at the same size' if sweep.sizes else ''}, paired by seed (mean of the per-seed differences); {interval}. "
        f"Noise floor (the base's seed-to-seed std): {noise}."
    )


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
