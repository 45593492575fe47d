"""Sweeps: variants against a base with seeds, budgets and parameters matched, paired statistics.

Train every variant of a base config, for several seeds, on the same data and token budget, and
compare them in one table and one plot::

    sweep = load_sweep("configs/ablations/positions.toml")  # every variant validated here
    results = run_sweep(sweep, "out/positions")             # resumes what an earlier call left

One module per job: ``schema`` (the sweep file), ``plan`` (grid, variants, sizes, fairness),
``match`` (parameter matching), ``execute`` (running, reuse; ``ray_executor`` runs on a Ray cluster), ``provenance`` (plugin hashing),
``results`` (reading back, aggregation), ``report`` (CSV and Markdown), ``measured`` (what the machine measured,
kept apart), ``plots``, ``fits``
(power laws) and ``stats`` (paired differences).
"""

from gptzoo.recipes.research.sweep.execute import run_sweep
from gptzoo.recipes.research.sweep.measured import MEASUREMENTS_CSV, MEASUREMENTS_MD
from gptzoo.recipes.research.sweep.plan import load_sweep
from gptzoo.recipes.research.sweep.plots import CURVES_PNG, EXTRAPOLATION_PNG, SCALING_PNG
from gptzoo.recipes.research.sweep.report import RESULTS_CSV, RESULTS_MD, write_results
from gptzoo.recipes.research.sweep.results import RunResult, VariantRow, aggregate
from gptzoo.recipes.research.sweep.schema import RUN_RESULT, RUNS, SWEEP, Sweep, Variant

__all__ = [
    "CURVES_PNG",
    "EXTRAPOLATION_PNG",
    "MEASUREMENTS_CSV",
    "MEASUREMENTS_MD",
    "RESULTS_CSV",
    "RESULTS_MD",
    "RUNS",
    "RUN_RESULT",
    "SCALING_PNG",
    "SWEEP",
    "RunResult",
    "Sweep",
    "Variant",
    "VariantRow",
    "aggregate",
    "load_sweep",
    "run_sweep",
    "write_results",
]
