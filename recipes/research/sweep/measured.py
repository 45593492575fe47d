"""What the machine measured in a sweep (speed, memory, wall time, load), kept apart from its results, so that
the same sweep twice writes the same results.csv, results.md and ablation.json, byte for byte.

Each run's measurements are the last record of its measurements.jsonl (beside training's); the sweep's,
one row per variant, are measurements.csv and measurements.md.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from gptzoo.recipes.research.sweep.results import MEASURED_RESULT, VariantRow
from gptzoo.recipes.runs.files import atomic_path, write_text_atomic
from gptzoo.recipes.runs.metrics import append_measurements

MEASUREMENTS_CSV = "measurements.csv"
MEASUREMENTS_MD = "measurements.md"
CSV_COLUMNS = ["variant", "label", "tokens_per_s", "peak_memory_bytes", "wall_s", "workers", "speed_shared"]


def split_measured(result: dict) -> tuple[dict, dict]:
    """A run's result (RunResult as a dict): what its seeds decide, and what the machine measured."""
    measured = {k: result[k] for k in MEASURED_RESULT}
    return {k: v for k, v in result.items() if k not in MEASURED_RESULT}, measured


def save_run_measurements(folder: Path, step: int | None, measured: dict) -> None:
    """The run's measured fields as the last record of its measurements.jsonl, at its last step."""
    append_measurements(folder, {"step": step or 0, **measured})


def write_measurements(out: Path, rows: list[VariantRow]) -> None:
    with atomic_path(out / MEASUREMENTS_CSV) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            values = [row.variant.slug, row.variant.label, row.tokens_per_s, row.peak_memory_bytes, row.wall_s]
            writer.writerow([csv_cell(v) for v in [*values, row.workers, row.shared]])
    write_text_atomic(out / MEASUREMENTS_MD, measurements_table(rows))


def csv_cell(value: object) -> object:
    """A value as the sweep's CSV files write it: empty for none, true/false, floats to 6 significant digits."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:.6g}" if isinstance(value, float) else value


def measurements_table(rows: list[VariantRow]) -> str:
    def speed(row: VariantRow) -> str:
        marks = " †" * (row.workers > 1) + " ‡" * row.loaded
        return "—" if row.tokens_per_s is None else f"{row.tokens_per_s:,.0f}{marks}"

    columns: list[tuple[str, str, Callable[[VariantRow], str]]] = [
        ("variant", "---", lambda row: f"**{row.variant.label}** (base)" if row.variant.is_base else row.variant.label),
        ("tokens/s", "---:", speed),
        ("peak memory", "---:", lambda row: "—" if not row.peak_memory_bytes else f"{row.peak_memory_bytes / 2**20:,.1f} MiB"),
        ("wall", "---:", lambda row: "—" if row.wall_s is None else f"{row.wall_s:.1f} s"),
    ]  # fmt: skip
    lines = [
        "Measured: training tokens/s and wall time (mean over seeds), peak memory (the largest of the runs' own peaks: "
        "the GPU allocator's, or the process's resident memory since the run began).",
        "",
        "| " + " | ".join(c[0] for c in columns) + " |",
        "| " + " | ".join(c[1] for c in columns) + " |",
        *("| " + " | ".join(cell(row) for _, _, cell in columns) + " |" for row in rows),
    ]
    shared = max((row.workers for row in rows), default=1)
    lines += [
        "",
        "Measured on a machine other processes may have shared"
        + (
            f"; † = measured with up to {shared} runs training at once (--workers {shared}): not comparable between rows."
            if shared > 1
            else "."
        )
        + (
            " ‡ = measured while the machine had more work than cores (its 1-minute load average per core above 1 "
            "at a run's start or end): not comparable between rows."
            if any(row.loaded for row in rows)
            else ""
        ),
    ]
    return "\n".join(lines) + "\n"
