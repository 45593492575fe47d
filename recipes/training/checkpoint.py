"""Checkpoints of a training run: saving one, reading the training state back, checking a folder can resume."""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gptzoo.core import CheckpointError, Tokenizer
from gptzoo.recipes.config.schema import RunConfig
from gptzoo.recipes.data.tokens import WindowSampler
from gptzoo.recipes.runs._lock import run_writer
from gptzoo.recipes.runs.files import CONFIG, TOKENIZER, TRAIN_STATE, WEIGHTS, refused_global, write_text_atomic
from gptzoo.recipes.runs.folder import run_commit, stage_run
from gptzoo.recipes.runs.manifest import Manifest
from gptzoo.recipes.runs.metrics import MEASUREMENTS, METRICS, read_metrics
from gptzoo.recipes.runs.sharded import SHARDED
from gptzoo.recipes.training import distributed
from gptzoo.recipes.training.sharded import save_sharded_checkpoint
from gptzoo.registry import Registry


@dataclass
class Progress:
    """Where training stands; everything a resumed run needs besides weights and optimizer."""

    step: int = 0
    tokens: int = 0
    elapsed_s: float = 0.0
    best_val_loss: float | None = None


def save_checkpoint(
    out: Path,
    config: RunConfig,
    model: nn.Module,
    tokenizer: Tokenizer,
    optimizer: torch.optim.Optimizer,
    progress: Progress,
    sampler: WindowSampler,
    registry: Registry | None = None,
) -> None:
    """Commit config, tokenizer, weights and training state as one checkpoint (see recipes/runs/_journal.py).

    A failure while saving (a full disk, a crash) leaves the previous checkpoint whole. With
    several processes only rank 0 writes while the others wait; under FSDP every rank writes
    its shards instead (training/sharded.py).
    """
    world = distributed.world()
    if distributed.is_sharded(model):
        save_sharded_checkpoint(out, config, model, tokenizer, optimizer, training_state(progress, sampler), registry)
        return
    if not world.is_main:
        distributed.barrier()
        return
    state = training_state(progress, sampler) | {"optimizer": distributed.optimizer_state(model, optimizer)}
    with run_writer(out):
        commit = run_commit(out, config, progress.step, registry)
        try:
            stage_run(commit, config, distributed.full_model_state(model), tokenizer, {"step": str(progress.step)})
            with commit.stage(TRAIN_STATE) as f:
                torch.save(state, f)
            commit.drop(SHARDED)  # a run resumed without FSDP: its weights are whole again
        except BaseException:
            commit.discard()
            raise
        commit.commit()
    distributed.barrier()


def training_state(progress: Progress, sampler: WindowSampler) -> dict:
    """Where training stands, the data's position and the RNG's state (a checkpoint's train_state.pt, with
    the optimizer's state when it is not sharded); none of what the machine measured (measurements.jsonl), so
    that the same run twice saves the same bytes."""
    return {
        "step": progress.step,
        "tokens": progress.tokens,
        "best_val_loss": progress.best_val_loss,
        "data": sampler.state(),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
    }


def load_train_state(out: Path, name: str = TRAIN_STATE) -> dict:
    """The training state saved in ``out`` (pretraining's train_state.pt, or the file ``name``)."""
    file = out / name
    if not file.is_file():
        raise CheckpointError(
            f"{file}: missing, so there is nothing to resume; train without --resume (into a new --out) first"
        )
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # torch's advice to retry with weights_only=False is never passed on
        if (name := refused_global(err)) is not None:
            raise CheckpointError(
                f"{file}: holds Python objects other than tensors and plain values; gptzoo does not unpickle those (it may run code), "
                f"so this file cannot be resumed (it holds {name}, which unpickling would import and call)"
            ) from None
        raise CheckpointError(
            f"{file}: cannot read the training state (UnpicklingError); the file is truncated or corrupt"
        ) from None
    except Exception as err:  # noqa: BLE001 -- zip and IO failures all mean an unreadable file
        raise CheckpointError(
            f"{file}: cannot read the training state ({type(err).__name__}); the file is truncated or corrupt"
        ) from None


def restore_rng(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])


RUN_FILES = (CONFIG, TOKENIZER, WEIGHTS, TRAIN_STATE, METRICS, MEASUREMENTS)  # what train writes into a run folder


def committed(out: Path, manifest: Manifest | None) -> bool:
    """Whether ``out`` holds a committed run (or one saved before manifests, which has weights or a training state)."""
    return manifest is not None or any((out / name).exists() for name in (WEIGHTS, TRAIN_STATE))


def check_resume_config(config: RunConfig, saved: RunConfig, out: Path) -> None:
    """A resumed run may change [train] (e.g. more steps) but not the model or the data it was trained on."""
    ignore = {"data": {"cache_dir"}}
    differences = []
    for section in ("model", "data"):
        given = getattr(config, section).model_dump(mode="json", exclude=ignore.get(section))
        before = getattr(saved, section).model_dump(mode="json", exclude=ignore.get(section))
        if section == "model" and given["vocab_size"] is None:
            given["vocab_size"] = before["vocab_size"]
        differences += [
            f"{section}.{key}: {before.get(key)!r} in the run, {given.get(key)!r} now"
            for key in sorted(set(given) | set(before))
            if given.get(key) != before.get(key)
        ]
    if differences:
        raise CheckpointError(
            f"{out / CONFIG}: the run was trained with another config; cannot resume it with this one:\n  "
            + "\n  ".join(differences)
        )


def keep_metrics_until(out: Path, step: int, manifest: Manifest | None) -> None:
    """Drop evaluations logged after the checkpoint (a crash after them), so a resumed log has no repeats."""
    file = out / METRICS
    if manifest is not None:  # the manifest commits the log's first bytes: cut what came after
        committed_size = manifest.files.get(METRICS, {}).get("size", 0)
        if file.is_file() and file.stat().st_size > committed_size:
            os.truncate(file, committed_size)
        return
    records = read_metrics(out)
    kept = [r for r in records if r.get("step", 0) <= step]
    if len(kept) < len(records):
        write_text_atomic(file, "".join(json.dumps(r) + "\n" for r in kept))
