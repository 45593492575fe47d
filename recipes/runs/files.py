"""Writing files so that a crash leaves the old file or the new one, never half of one; the run
folder's file names; the check every writer makes on its output path first; and the one reader of
JSON files a user gives or a folder holds, with one error style."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gptzoo.core import ConfigError, GptzooError
from gptzoo.recipes.runs._journal import new_temporary

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
TRAIN_STATE = "train_state.pt"


def read_json(file: Path, error: type[GptzooError] = ConfigError) -> Any:
    """The JSON value in ``file``; ``error`` with one line naming the file when it cannot be read or parsed."""
    try:
        text = Path(file).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{file}: not valid JSON: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise error(f"{file}: cannot be read ({err.strerror or err})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{file}: not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    except RecursionError:
        raise error(f"{file}: its objects or arrays nest too deeply to read") from None


def refused_global(err: Exception) -> str | None:
    """The Python object (module.name) torch.load(weights_only=True) refused to unpickle, or None when
    ``err`` is another failure. torch 2.13 words it "unsupported GLOBAL posix.system whose module posix
    is blocked" or "Unsupported global: GLOBAL __main__.Evil was not an allowed global"."""
    found = re.search(r"unsupported global(?::\s*GLOBAL)?\s+([\w.]+)", str(err), re.IGNORECASE)
    return found.group(1) if found else None


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
