"""An FSDP run's checkpoints: every rank writes its shards, nothing is gathered onto one process.

Saving: rank 0 (holding the folder's writer lock) makes a temporary folder in the run folder;
every rank writes its shards of the weights and of AdamW's state into it with
torch.distributed.checkpoint (DCP), flushed to disk, and hashes the files it wrote; rank 0
gathers those hashes and commits the folder as ``sharded/`` together with the config,
tokenizer and training state (step, data position, RNG), dropping the weights file of an
earlier consolidation, which this checkpoint supersedes. A crash at any point before the
commit leaves the previous checkpoint whole, and the next writer removes the temporary folder.

Resuming: DCP reads the shards into however this session shards the model (FSDP over another
number of processes, or a whole model on one process or under DDP), so a run resumes on any
number of processes. Layout and consolidation into ``model.safetensors``: runs/sharded.py.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import torch
from torch import nn

from gptzoo.core import Tokenizer
from gptzoo.recipes.config.schema import RunConfig
from gptzoo.recipes.runs._journal import disk_full_error, is_disk_full, new_temporary_folder
from gptzoo.recipes.runs._lock import run_writer
from gptzoo.recipes.runs.files import TRAIN_STATE, WEIGHTS
from gptzoo.recipes.runs.folder import run_commit, stage_config
from gptzoo.recipes.runs.manifest import sha256_of
from gptzoo.recipes.runs.sharded import MODEL, OPTIMIZER, SHARDED, single_process_load
from gptzoo.recipes.runs.weights import unwrap
from gptzoo.recipes.training import distributed
from gptzoo.registry import Registry


def checkpoint_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """What DCP saves and loads: this rank's shards of the weights (a tied weight once, under its
    first name, as in model.safetensors) and of the optimizer state, keyed by parameter name."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    plain = unwrap(model)
    tied = distributed.tied_names(plain)
    weights = {name: t for name, t in get_model_state_dict(plain).items() if name not in tied}
    return {MODEL: weights, OPTIMIZER: get_optimizer_state_dict(plain, optimizer)}


def shard_entries(folder: Path, rank: int) -> dict[str, dict]:
    """Size and sha256 of the files this rank wrote into ``folder`` (its ``__RANK_N.distcp``; rank 0 also ``.metadata``)."""
    names = sorted(p.name for p in folder.glob(f"__{rank}_*.distcp"))
    if rank == 0:
        names.append(".metadata")
    return {name: {"size": (folder / name).stat().st_size, "sha256": sha256_of(folder / name)} for name in names}


def save_sharded_checkpoint(
    out: Path,
    config: RunConfig,
    model: nn.Module,
    tokenizer: Tokenizer,
    optimizer: torch.optim.Optimizer,
    train_state: dict,
    registry: Registry | None = None,
) -> None:
    """Commit this step's sharded checkpoint into ``out``; every rank calls it (see the module's docstring)."""
    import torch.distributed.checkpoint as dcp

    world = distributed.world()
    with run_writer(out) if world.is_main else contextlib.nullcontext():
        # rank 0 makes the folder after run_writer removed what a crashed save left, then the others write into it
        staging = Path(distributed.broadcast_from_main(new_temporary_folder(out, SHARDED) if world.is_main else None))
        try:
            dcp.save(checkpoint_state(model, optimizer), checkpoint_id=staging)
            written = distributed.gather_on_main(shard_entries(staging, world.rank))
        except BaseException as err:
            if world.is_main:
                shutil.rmtree(staging, ignore_errors=True)
            if isinstance(err, Exception) and is_disk_full(err):
                raise disk_full_error(out, f"the sharded checkpoint of step {train_state['step']}") from None
            raise
        if world.is_main:
            commit = run_commit(out, config, train_state["step"], registry)
            try:
                commit.stage_folder(SHARDED, staging, {name: e for entries in written for name, e in entries.items()})
                stage_config(commit, config, tokenizer)
                with commit.stage(TRAIN_STATE) as f:
                    torch.save(train_state, f)
                commit.drop(WEIGHTS)
            except BaseException:
                commit.discard()
                raise
            commit.commit()
    distributed.barrier()


def load_sharded_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, checkpoint: Path) -> None:
    """Load the weights and optimizer state in ``checkpoint`` into this session's model and optimizer,
    however they are sharded; every rank calls it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    state = checkpoint_state(model, optimizer)  # AdamW's state made (a step of lr 0) so DCP has tensors to fill
    if distributed.world().size > 1:
        dcp.load(state, checkpoint_id=checkpoint)
    else:
        single_process_load(state, checkpoint)
    plain = unwrap(model)
    set_model_state_dict(plain, state[MODEL], options=StateDictOptions(strict=False))  # a tied weight comes once
    set_optimizer_state_dict(plain, optimizer, state[OPTIMIZER])
