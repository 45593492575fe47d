"""The run's logs: metrics.jsonl, what training computed (one JSON object per evaluation), and
measurements.jsonl, what the machine measured (speed, memory, time), apart so that the same command
twice with the same seeds gives the same metrics.jsonl, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

from gptzoo.core import CheckpointError
from gptzoo.recipes.runs._journal import disk_full_error, is_disk_full
from gptzoo.recipes.runs.files import write_text_atomic

METRICS = "metrics.jsonl"
# One JSON object per line, keyed by "step": at each evaluation tokens_per_s, peak_memory_bytes and elapsed_s,
# at a checkpoint between evaluations elapsed_s alone. Outside the manifest: nothing reproducible depends on it.
MEASUREMENTS = "measurements.jsonl"
MEASURED = ("tokens_per_s", "peak_memory_bytes", "elapsed_s")  # in metrics.jsonl's records before measurements.jsonl


def append_metrics(folder: Path, record: dict, name: str = METRICS) -> None:
    try:
        with open(folder / name, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as err:  # a line cut short is dropped on --resume: the manifest commits the log up to the checkpoint
        if is_disk_full(err):
            raise disk_full_error(folder, f"{name} (step {record.get('step')})") from None
        raise


def append_measurements(folder: Path, record: dict) -> None:
    append_metrics(folder, record, MEASUREMENTS)


def read_metrics(folder: Path) -> list[dict]:
    file = Path(folder) / METRICS
    if not file.is_file():
        return []
    records = []
    with open(file, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise CheckpointError(
                    f"{file}, line {number}: not a JSON record ({type(err).__name__}: {err}); the file is damaged"
                ) from None
            if not isinstance(record, dict):
                raise CheckpointError(f"{file}, line {number}: not a JSON object; the file is damaged")
            records.append(record)
    return records


def read_measurements(folder: Path) -> list[dict]:
    """What the machine measured, step by step: measurements.jsonl's records after those that a folder written
    by an earlier gptzoo, before that file, keeps in metrics.jsonl. A line a kill cut short is skipped."""
    folder = Path(folder)
    logged = [
        {"step": r["step"]} | {k: r[k] for k in MEASURED if k in r}
        for r in read_metrics(folder)
        if isinstance(r.get("step"), int) and any(k in r for k in MEASURED)
    ]
    return logged + _measurement_lines(folder / MEASUREMENTS)


def _measurement_lines(file: Path) -> list[dict]:
    try:
        lines = file.read_bytes().splitlines()
    except FileNotFoundError:
        return []
    records = []
    for raw in lines:
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


def keep_measurements_until(folder: Path, step: int) -> None:
    """Drop what was measured after the checkpoint of ``step`` (a kill after it), as metrics.jsonl's lines are."""
    file = folder / MEASUREMENTS
    records = _measurement_lines(file)
    kept = [r for r in records if r["step"] <= step]
    if file.is_file() and (len(kept) < len(records) or not file.read_bytes().endswith(b"\n")):
        write_text_atomic(file, "".join(json.dumps(r) + "\n" for r in kept))


def elapsed_at(folder: Path, step: int) -> float | None:
    """The training time measured up to ``step`` (across resumes), from the last record at or before it."""
    times = [r["elapsed_s"] for r in read_measurements(folder) if r["step"] <= step and "elapsed_s" in r]
    return times[-1] if times else None
