"""Scaling fits: the power law loss ≈ a · C^(−b) through each group's sizes."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from gptzoo.recipes.research.sweep.results import VariantRow
from gptzoo.recipes.research.sweep.schema import Sweep


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
