"""A learning-rate axis as curves: final loss against the learning rate, one curve per variant of the
other axes, and Wortsman et al.'s LR sensitivity of each curve (results.md and lr_sensitivity.png)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from gptzoo.recipes.research.sweep.plan import _show, short_names
from gptzoo.recipes.research.sweep.plots import _pyplot
from gptzoo.recipes.research.sweep.results import RunResult, Stat
from gptzoo.recipes.research.sweep.schema import Sweep
from gptzoo.recipes.research.sweep.stats import MIN_SEEDS_FOR_INTERVAL, PairedDifference, paired_difference
from gptzoo.recipes.runs.files import save_png

LR_KEY = "train.lr"
LR_PNG = "lr_sensitivity.png"


def lr_sensitivity(final_losses: dict[float, float], initial_loss: float) -> float:
    """Wortsman et al. (2023, "Small-scale proxies for large-scale Transformer training instabilities",
    arXiv:2309.14322, with its Fig. 1) summarise a learning-rate sweep by its LR sensitivity

        E_{η ∈ [a, b]} [ min(ℓ(A(η)), ℓ₀) − ℓ* ],   ℓ* = min_{η ∈ [a, b]} ℓ(A(η)),

    the expected deviation of the final loss ℓ(A(η)) from the best over the range of learning rates,
    a final loss above the loss at initialisation ℓ₀ (a divergent run's, NaN or infinite included)
    counting as ℓ₀. As in the paper, the expectation is the mean over the swept grid (a log-spaced grid
    weighs each decade equally). ``final_losses``: learning rate -> final loss (non-finite when it diverged)."""
    clipped = [min(loss, initial_loss) if math.isfinite(loss) else initial_loss for loss in final_losses.values()]
    return statistics.fmean(clipped) - min(clipped)


@dataclass
class LRCurve:
    """One variant of the other axes across the learning rates: per rate, each seed's final loss, clipped."""

    label: str
    lrs: list[float]
    losses: dict[float, dict[int, float]]  # lr -> seed -> final loss, min(loss, ℓ₀) (a divergent run: ℓ₀)
    diverged: dict[float, int]  # lr -> runs that diverged
    initial: dict[int, float]  # seed -> ℓ₀, the validation loss at step 0
    max_logit: dict[float, list[float]]  # lr -> the seeds' largest attention logit at their last evaluation
    sensitivity: dict[int, float]  # seed -> LR sensitivity over every learning rate (seeds missing a rate: none)
    delta: PairedDifference | None = None  # sensitivity − the first curve's, paired by seed


def lr_curves(sweep: Sweep, results: list[RunResult]) -> list[LRCurve]:
    """The curves of a sweep with a ``train.lr`` axis, in the order of its variants; the first is the reference."""
    lrs = sorted(sweep.axes[LR_KEY])
    others = [key for key in sweep.axes if key != LR_KEY]
    short = short_names(others)
    by_slug = {(r.variant, r.seed): r for r in results}
    curves: dict[str, LRCurve] = {}
    for variant in sweep.variants:
        if LR_KEY not in variant.overrides:
            continue  # the base run outside the grid
        label = ", ".join(f"{short[k]}={_show(variant.overrides[k])}" for k in others) or "all"
        curve = curves.setdefault(label, LRCurve(label, lrs, {}, {}, {}, {}, {}))
        lr = variant.overrides[LR_KEY]
        for seed in sweep.seeds:
            run = by_slug.get((variant.slug, seed))
            if run is None or run.status == "failed":
                continue
            if run.initial_val_loss is not None:
                curve.initial[seed] = run.initial_val_loss
            if run.max_attention_logit is not None:
                curve.max_logit.setdefault(lr, []).append(run.max_attention_logit)
            curve.diverged[lr] = curve.diverged.get(lr, 0) + (run.status == "diverged")
            loss = run.final_val_loss if run.status == "done" and run.final_val_loss is not None else math.inf
            curve.losses.setdefault(lr, {})[seed] = loss
    for curve in curves.values():
        for seeds in curve.losses.values():
            for seed, loss in seeds.items():
                ceiling = curve.initial.get(seed, math.inf)
                seeds[seed] = min(loss, ceiling) if math.isfinite(loss) else ceiling
        for seed in sweep.seeds:
            per_lr = {lr: curve.losses.get(lr, {}).get(seed) for lr in lrs}
            if seed in curve.initial and all(v is not None for v in per_lr.values()):
                curve.sensitivity[seed] = lr_sensitivity(per_lr, curve.initial[seed])  # type: ignore[arg-type]
    ordered = list(curves.values())
    for curve in ordered:
        curve.delta = paired_difference(curve.sensitivity, ordered[0].sensitivity)
    return ordered


def lr_table(sweep: Sweep, results: list[RunResult]) -> str:
    """The curves as a table: final loss per learning rate, the best rate, and the LR sensitivity."""
    curves = lr_curves(sweep, results)
    lrs = sorted(sweep.axes[LR_KEY])
    lines = [
        "Learning-rate sensitivity (Wortsman et al., 2023): final validation loss per learning rate, mean ± sample std "
        "over seeds, a divergent run or one ending above its loss at initialisation ℓ₀ (step 0's, train.eval_at_start) "
        "counted as ℓ₀ (×k: k runs diverged). LR sensitivity = mean over the learning rates of min(loss, ℓ₀) minus the "
        "best of them, per seed, mean ± std; Δ against the first row, paired by seed"
        + (
            f" (95% t interval from {MIN_SEEDS_FOR_INTERVAL} seeds, * where it excludes 0)."
            if len(sweep.seeds) >= MIN_SEEDS_FOR_INTERVAL
            else "."
        ),
        "",
        "| variant | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | best lr | max attention logit at best lr "
        "| LR sensitivity | Δ LR sensitivity |",
        "| --- | " + " | ".join("---:" for _ in lrs) + " | ---: | ---: | ---: | ---: |",
    ]
    for i, curve in enumerate(curves):
        means = {lr: statistics.fmean(s.values()) for lr, s in curve.losses.items() if s}
        cells = []
        for lr in lrs:
            stat = Stat.of(list(curve.losses.get(lr, {}).values()))
            cell = (
                "—"
                if stat.mean is None
                else f"{stat.mean:.4f}" + (f" ± {stat.std:.4f}" if stat.std is not None else "")
            )
            cells.append(cell + (f" ×{curve.diverged[lr]}" if curve.diverged.get(lr) else ""))
        best = min(means, key=means.__getitem__) if means else None
        logit = Stat.of(curve.max_logit.get(best, [])) if best is not None else Stat(None, None)
        sensitivity = Stat.of(list(curve.sensitivity.values()))
        lines.append(
            f"| {curve.label} | "
            + " | ".join(cells)
            + f" | {'—' if best is None else f'{best:g}'} | {'—' if logit.mean is None else f'{logit.mean:.2f}'} | "
            + ("—" if sensitivity.mean is None else f"{sensitivity.mean:.4f}" + (f" ± {sensitivity.std:.4f}" if sensitivity.std is not None else ""))
            + f" | {_delta(curve.delta) if i else 'reference'} |"
        )  # fmt: skip
    if not any(curve.initial for curve in curves):
        lines += ["", "No run logged a step-0 loss: set train.eval_at_start = true for the LR sensitivity."]
    return "\n".join(lines) + "\n"


def _delta(difference: PairedDifference | None) -> str:
    if difference is None or difference.mean is None:
        return "—"
    if difference.low is None:
        return f"{difference.mean:+.4f}"
    mark = " *" if difference.excludes_zero else ""
    return f"{difference.mean:+.4f} [{difference.low:+.4f}, {difference.high:+.4f}]{mark}"


def plot_lr_curves(sweep: Sweep, results: list[RunResult], path: Path) -> None:
    """Final loss against the learning rate (log x), one curve per variant, seeds as a min–max band, ℓ₀ dashed;
    beside it the largest attention logit at the last evaluation against the learning rate (log–log)."""
    plt = _pyplot()
    curves = lr_curves(sweep, results)
    fig, (loss_ax, logit_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for curve in curves:
        lrs = [lr for lr in curve.lrs if curve.losses.get(lr)]
        if not lrs:
            continue
        values = [list(curve.losses[lr].values()) for lr in lrs]
        sensitivity = Stat.of(list(curve.sensitivity.values())).mean
        label = curve.label + (f" (LR sensitivity {sensitivity:.3f})" if sensitivity is not None else "")
        (line,) = loss_ax.plot(lrs, [statistics.fmean(v) for v in values], marker="o", label=label)
        if any(len(v) > 1 for v in values):
            band = ([min(v) for v in values], [max(v) for v in values])
            loss_ax.fill_between(lrs, *band, color=line.get_color(), alpha=0.2, linewidth=0)
        logits = [(lr, statistics.fmean(curve.max_logit[lr])) for lr in curve.lrs if curve.max_logit.get(lr)]
        if logits:
            logit_ax.plot(*zip(*logits, strict=True), marker="o", color=line.get_color(), label=curve.label)
    initial = [loss for curve in curves for loss in curve.initial.values()]
    if initial:
        loss_ax.axhline(
            statistics.fmean(initial), color="black", linestyle="--", linewidth=1, label="loss at initialisation"
        )
    seeds = ", ".join(map(str, sweep.seeds))
    for ax, ylabel, title in (
        (loss_ax, "final validation loss", f"{sweep.source.stem}: mean over seeds {seeds}, band = min–max"),
        (logit_ax, "max attention logit (last evaluation)", "largest q·k/√d over layers, mean over seeds"),
    ):
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if logit_ax.lines:
        logit_ax.set_yscale("log")
    save_png(fig, path)
