"""What every importer and exporter does with a Hugging Face-style folder: read its JSON, open its
safetensors, know the shapes a run folder stores, stream weights into a new run, and write a
destination beside its final name so that an error leaves nothing half-written.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import SafetensorError, safe_open
from tqdm import tqdm

from gptzoo.core import CheckpointError, ConfigError, GptzooError, ModelConfig
from gptzoo.recipes.config.schema import RunConfig
from gptzoo.recipes.runs.files import CONFIG, WEIGHTS, check_out_folder, read_json
from gptzoo.recipes.runs.folder import run_commit
from gptzoo.recipes.runs.weights import write_safetensors
from gptzoo.recipes.training.models import meta_model
from gptzoo.registry import Registry

HUB_SNAPSHOTS = "snapshots"  # huggingface_hub's cache: snapshots/<revision>/<file> links to ../../blobs/<hash>
HUB_BLOBS = "blobs"


def checkpoint_file(folder: Path, name: Any, what: str = "file") -> Path:
    """``folder / name``, once ``name`` is a plain file name and the file, links followed, lies inside
    ``folder``: a checkpoint from a stranger must not make an importer read another file of this
    machine. The one place outside it is huggingface_hub's cache, whose snapshot folders link each
    file to the cache's ``blobs`` folder of the same model. CheckpointError otherwise; the file
    may be absent (the caller checks)."""
    if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        raise CheckpointError(
            f"{folder}: {what} {json.dumps(name)} is not a plain file name; a checkpoint names only files inside its folder"
        )
    path = folder / name
    try:
        home, target = folder.resolve(), path.resolve()
    except (OSError, RuntimeError) as err:  # RuntimeError: a loop of links
        raise CheckpointError(f"{path}: cannot follow its links ({err})") from None
    inside = target.is_relative_to(home) or (
        home.parent.name == HUB_SNAPSHOTS and target.is_relative_to(home.parent.parent / HUB_BLOBS)
    )
    if not inside:
        raise CheckpointError(
            f"{path}: a link to a file outside {folder}; a checkpoint's files are read only from inside its folder (copy the file in)"
        )
    return path


FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # safetensors' names; every weight of a family's table is one of them


def not_floating_point(handle: Any, keys: Iterable[str]) -> list[str]:
    """Each of ``keys`` whose safetensors header declares a dtype other than a float, as "name (dtype)":
    converting it would read integer bits as numbers."""
    return [f"{key} ({dtype})" for key in keys if (dtype := handle.get_slice(key).get_dtype()) not in FLOAT_DTYPES]


def read_hf_config(file: Path) -> dict:
    """A JSON object from a Hugging Face folder (config.json, tokenizer_config.json, ...)."""
    data = read_json(file, ConfigError)
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: expected a JSON object")
    return data


def weight_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every weight a run folder stores for ``config`` (a tied weight once)."""
    model = meta_model(config)
    seen: set[int] = set()
    shapes = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:  # the tied head is the embedding's very Parameter
            seen.add(id(tensor))
            shapes[name] = tuple(tensor.shape)
    return shapes


def write_float32(
    f: BinaryIO, shapes: dict[str, tuple[int, ...]], read: Callable[[str], torch.Tensor], desc: str
) -> None:
    """Stream float32 tensors, one at a time from ``read``, into a safetensors file ``f``."""
    progress = lambda names: tqdm(names, desc=desc, unit="tensor")  # noqa: E731
    write_safetensors(
        f,
        {name: (torch.float32, shape) for name, shape in shapes.items()},
        read,
        {"format": "pt", "producer": "gptzoo"},
        progress,
    )


def write_imported_run(
    folder: Path,
    config: RunConfig,
    shapes: dict[str, tuple[int, ...]],
    read: Callable[[str], torch.Tensor],
    desc: str,
    registry: Registry | None,
) -> None:
    """Commit config.json and streamed float32 weights to the new run ``folder``, with its manifest."""
    commit = run_commit(folder, config, registry=registry)
    commit.stage_text(CONFIG, config.model_dump_json(indent=2) + "\n")
    with commit.stage(WEIGHTS) as weights_file:
        write_float32(weights_file, shapes, read, desc)
    commit.commit()


@contextmanager
def open_safetensors(path: Path) -> Iterator:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            yield f
    except SafetensorError as err:
        raise CheckpointError(f"{path}: cannot read the weights ({err}); the file is truncated or corrupt") from None


def refuse_existing(out: Path) -> None:
    check_out_folder(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GptzooError(f"{out} already exists and is not empty; choose a new folder (nothing was written)")


@contextmanager
def new_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out``, renamed to ``out`` when the block succeeds.

    Refuses an ``out`` that exists with something in it: nothing the user had is overwritten.
    """
    refuse_existing(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(out)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    held = os.open(tmp, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)  # while held, this folder is being written; a killed writer's lock goes with it
    try:
        yield tmp
        os.replace(tmp, out)  # replaces an empty folder too
    finally:
        os.close(held)
        if tmp.exists():
            shutil.rmtree(tmp)


def _remove_abandoned(out: Path) -> None:
    """Remove the temporary folders of writers of ``out`` that were killed (whose lock nobody holds)."""
    for stale in out.parent.glob(f".{glob.escape(out.name)}.*.tmp"):
        if not stale.is_dir() or stale.is_symlink():
            continue
        try:
            held = os.open(stale, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a writer is at work in it
            os.close(held)
            continue
        try:
            shutil.rmtree(stale, ignore_errors=True)
        finally:
            os.close(held)
