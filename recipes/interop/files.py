"""What every importer and exporter does with a Hugging Face-style folder: read its JSON, open its
safetensors, know the shapes a run folder stores, stream weights into a new run, and write a
destination beside its final name so that an error leaves nothing half-written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

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
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.replace(tmp, out)  # replaces an empty folder too
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
