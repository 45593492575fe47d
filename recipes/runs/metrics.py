"""The run's metrics log: one JSON object per line, appended as training evaluates."""

from __future__ import annotations

import json
from pathlib import Path

from gptzoo.core import CheckpointError
from gptzoo.recipes.runs._journal import disk_full_error, is_disk_full

METRICS = "metrics.jsonl"


def append_metrics(folder: Path, record: dict) -> None:
    try:
        with open(folder / METRICS, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as err:  # a line cut short is dropped on --resume: the manifest commits the log up to the checkpoint
        if is_disk_full(err):
            raise disk_full_error(folder, f"{METRICS} (step {record.get('step')})") from None
        raise


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
