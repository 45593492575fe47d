"""Statistics for comparing runs over seeds: Student's t quantiles and paired differences.

No SciPy: the t distribution's CDF is the regularized incomplete beta function, evaluated by
its continued fraction (Numerical Recipes, 6.4) and inverted by bisection.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

MIN_SEEDS_FOR_INTERVAL = 3  # with two seeds the t interval (df = 1) is too wide to mean anything


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the CDF of the Beta(a, b) distribution at x."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: int) -> float:
    """P(T ≤ t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: int) -> float:
    """The t with P(T ≤ t) = p, for 0.5 ≤ p < 1 (bisection to 1e-10)."""
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    while high - low > 1e-10:
        mid = (low + high) / 2.0
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2.0


@dataclass(frozen=True)
class PairedDifference:
    """variant − base over the seeds both finished: mean and, from three seeds on, a 95% t interval."""

    n: int
    mean: float | None
    low: float | None = None
    high: float | None = None

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)


def paired_difference(variant: dict[int, float], base: dict[int, float], confidence: float = 0.95) -> PairedDifference:
    """Differences seed by seed (the same seed gives both runs the same data order, so their
    differences cancel what the seed shares), mean ± t_{(1+c)/2, n−1} · s / √n."""
    seeds = sorted(set(variant) & set(base))
    differences = [variant[s] - base[s] for s in seeds]
    if not differences:
        return PairedDifference(0, None)
    mean = statistics.fmean(differences)
    if len(differences) < MIN_SEEDS_FOR_INTERVAL:
        return PairedDifference(len(differences), mean)
    half = (
        t_quantile((1 + confidence) / 2, len(differences) - 1)
        * statistics.stdev(differences)
        / math.sqrt(len(differences))
    )
    return PairedDifference(len(differences), mean, mean - half, mean + half)
