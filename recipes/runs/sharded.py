"""A run's sharded checkpoint, and consolidating it into the single weights file every command reads.

An FSDP run checkpoints with torch.distributed.checkpoint (DCP): every process writes its own
shards of the weights and optimizer state into the folder ``sharded/`` (one ``__R_N.distcp``
file or more per process, and ``.metadata``, which says which bytes of which file hold which
part of which tensor), and nothing is gathered onto one process. The manifest names each of
those files like any other. DCP reads the folder back into any sharding, so a run resumes on
another number of processes; or into whole tensors, which is how ``consolidate`` writes
``model.safetensors`` one tensor at a time (the whole model is never in memory at once).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from gptzoo.core import CheckpointError
from gptzoo.recipes.runs._journal import Commit
from gptzoo.recipes.runs._lock import run_writer
from gptzoo.recipes.runs.files import WEIGHTS
from gptzoo.recipes.runs.manifest import Manifest, check_file, note, read_manifest
from gptzoo.recipes.runs.weights import write_safetensors

SHARDED = "sharded"
SHARDED_METADATA = f"{SHARDED}/.metadata"
MODEL = "model"  # the checkpoint's top-level keys: model.NAME for weights, optimizer.* for AdamW's state
OPTIMIZER = "optimizer"


def has_sharded_checkpoint(manifest: Manifest | None) -> bool:
    return manifest is not None and SHARDED_METADATA in manifest.files


def sharded_files(manifest: Manifest) -> list[str]:
    return sorted(name for name in manifest.files if name.startswith(f"{SHARDED}/"))


def single_process_load(state: dict, checkpoint: Path) -> None:
    """dcp.load in this process alone, into ``state`` (whole tensors: DCP gathers each from its shards)."""
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():  # the single process is meant: say nothing about it
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=checkpoint, no_dist=True)


def weight_specs(checkpoint: Path) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """Each weight's dtype and whole shape, by name, from the checkpoint's metadata."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    try:
        metadata = FileSystemReader(checkpoint).read_metadata()
    except Exception as err:  # noqa: BLE001 -- pickle and IO failures all mean an unreadable file
        raise CheckpointError(
            f"{checkpoint / '.metadata'}: cannot read the sharded checkpoint's metadata ({type(err).__name__})"
        ) from None
    prefix = f"{MODEL}."
    return {
        key.removeprefix(prefix): (meta.properties.dtype, tuple(meta.size))
        for key, meta in metadata.state_dict_metadata.items()
        if key.startswith(prefix) and isinstance(meta, TensorStorageMetadata)
    }


def read_weight(checkpoint: Path, name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    state = {MODEL: {name: torch.empty(shape, dtype=dtype)}}
    single_process_load(state, checkpoint)
    return state[MODEL][name]


def consolidate(folder: Path) -> int | None:
    """Write ``model.safetensors`` from the folder's sharded checkpoint and commit it, when the
    checkpoint has none yet; the checkpoint's step, or None when there was nothing to do.

    Takes the folder's writer lock (re-entrant: the training process holds it already).
    """
    folder = Path(folder)
    with run_writer(folder):
        manifest = read_manifest(folder)
        if not has_sharded_checkpoint(manifest) or WEIGHTS in manifest.files:
            return None
        for name in sharded_files(manifest):
            check_file(folder, manifest, name)
        checkpoint = folder / SHARDED
        specs = weight_specs(checkpoint)
        step = {"step": str(manifest.step)} if manifest.step is not None else {}
        commit = Commit(folder, extend_logs=False)
        with commit.stage(WEIGHTS) as f:
            write_safetensors(
                f,
                specs,
                lambda name: read_weight(checkpoint, name, *specs[name]),
                {"format": "pt", "producer": "gptzoo"} | step,
            )
        commit.commit()
    return manifest.step


def consolidated(folder: Path, manifest: Manifest | None) -> Manifest | None:
    """The folder's manifest once its weights file is there: a run that holds only a sharded
    checkpoint (an FSDP run stopped before its end) is consolidated first, with a note."""
    if not has_sharded_checkpoint(manifest) or WEIGHTS in manifest.files:
        return manifest
    step = consolidate(folder)
    if step is not None:
        note(f"{folder}: consolidated the sharded checkpoint of step {step} into {WEIGHTS}")
    return read_manifest(folder)
