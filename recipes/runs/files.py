"""Writing files so that a crash leaves the old file or the new one, never half of one; the run
folder's file names; and the check every writer makes on its output path first."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gptzoo.core import GptzooError
from gptzoo.recipes.runs.manifest import new_temporary

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
TRAIN_STATE = "train_state.pt"


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_temporary(path.parent, path.name)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def save_png(fig, path: Path) -> None:
    """Lay out a matplotlib figure, write it to ``path`` atomically, and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def check_out_folder(out: Path, flag: str = "--out") -> None:
    """Refuse an output path that is a file or lies under one, before anything is written."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                where = "is a file" if path == out else f"lies under {path}, which is a file"
                raise GptzooError(f"{flag} {out} {where}, not a folder; choose another {flag}")
            return
