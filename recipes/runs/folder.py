"""The run folder, the unit every command reads and writes.

    DIR/config.json        the resolved RunConfig (vocab_size filled in)
    DIR/model.safetensors  the weights, in the attention-agnostic layout
    DIR/tokenizer.json     the tokenizer's state, when it has one (bpe, char, word)
    DIR/metrics.jsonl      one JSON object per evaluation
    DIR/train_state.pt     optimizer, scheduler, step and RNG states (tensors only) for --resume
    DIR/manifest.json      every committed file's size and sha256, the step, each component's plugin
    DIR/sharded/           an FSDP run's checkpoint, in shards from every process (see runs/sharded.py)

Files are committed together through the manifest (gptzoo.recipes.runs.manifest): a crash or a full
disk leaves the previous checkpoint whole, and every reader checks what it reads against it.
The pieces a run folder is made of have modules of their own: files (atomic writes, the file
names), weights (safetensors), metrics (the log).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gptzoo.core import GPT, CheckpointError, Tokenizer
from gptzoo.recipes.config.schema import RunConfig, validate_run_config
from gptzoo.recipes.runs._journal import Commit
from gptzoo.recipes.runs._lock import run_writer
from gptzoo.recipes.runs.files import CONFIG, TOKENIZER, WEIGHTS, check_out_folder, read_json
from gptzoo.recipes.runs.manifest import (
    MANIFEST,
    Manifest,
    check_file,
    components_of,
    missing_components,
    note,
    read_manifest,
)
from gptzoo.recipes.runs.memory import check_fits
from gptzoo.recipes.runs.sharded import consolidated
from gptzoo.recipes.runs.weights import load_weights, model_state, write_state
from gptzoo.registry import Registry, default_registry


def build_tokenizer(config: RunConfig, folder: Path | None = None, manifest: Manifest | None = None) -> Tokenizer:
    """The config's tokenizer, with its saved state from ``folder`` when it has one."""
    tokenizer = config.model.tokenizer.build()
    if tokenizer.needs_fit and folder is not None:
        file = folder / TOKENIZER
        if not file.is_file():
            raise CheckpointError(
                f"{file}: missing; the '{config.model.tokenizer.name}' tokenizer's vocabulary is saved there"
            )
        if manifest is not None:
            check_file(folder, manifest, TOKENIZER)
        state = read_json(file, CheckpointError)
        try:
            tokenizer.load_state(state)
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{file}: unreadable tokenizer state ({err})") from None
        size = config.model.vocab_size
        if size is not None and tokenizer.vocab_size > size:
            raise CheckpointError(
                f"{file}: the '{config.model.tokenizer.name}' tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size "
                f"in {folder / CONFIG} is {size}; the two files are not from the same run"
            )
    return tokenizer


def run_commit(folder: Path, config: RunConfig, step: int | None = None, registry: Registry | None = None) -> Commit:
    """A commit of ``folder`` recording who provided each component of ``config``."""
    return Commit(folder, step, components_of(config, registry or default_registry()))


def stage_config(commit: Commit, config: RunConfig, tokenizer: Tokenizer) -> None:
    """Stage config and tokenizer state into ``commit``."""
    commit.stage_text(CONFIG, config.model_dump_json(indent=2) + "\n")
    state = tokenizer.state()
    if state is not None:
        commit.stage_text(TOKENIZER, json.dumps(state, ensure_ascii=False))


def stage_run(
    commit: Commit,
    config: RunConfig,
    weights: dict[str, torch.Tensor],
    tokenizer: Tokenizer,
    metadata: dict[str, str] | None = None,
) -> None:
    """Stage config, tokenizer state and weights into ``commit``."""
    stage_config(commit, config, tokenizer)
    with commit.stage(WEIGHTS) as f:
        write_state(f, weights, {"format": "pt", "producer": "gptzoo"} | (metadata or {}))


def save_run(
    folder: str | Path, config: RunConfig, model: nn.Module, tokenizer: Tokenizer, registry: Registry | None = None
) -> None:
    """Commit config, tokenizer and weights to ``folder`` together (with its manifest)."""
    folder = Path(folder)
    check_out_folder(folder)
    with run_writer(folder):
        commit = run_commit(folder, config, registry=registry)
        stage_run(commit, config, model_state(model), tokenizer)
        commit.commit()


def commit_files(folder: str | Path, files: dict[str, str]) -> None:
    """Write text files into the run ``folder`` and commit them, keeping the rest of its manifest."""
    folder = Path(folder)
    with run_writer(folder):
        commit = Commit(folder)
        for name, text in files.items():
            commit.stage_text(name, text)
        commit.commit()


@dataclass
class Run:
    folder: Path
    config: RunConfig
    model: GPT
    tokenizer: Tokenizer
    manifest: Manifest | None = (
        None  # what the folder committed; None for a run built in memory or saved before manifests
    )


def open_run(folder: str | Path) -> Manifest | None:
    """The run folder's manifest (None for a folder saved before manifests, with a note saying so)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(
            f"{folder}: no such run folder" if not folder.exists() else f"{folder}: a file, not a run folder"
        )
    manifest = read_manifest(folder)
    if manifest is None and (folder / CONFIG).is_file():
        note(
            f"{folder} has no {MANIFEST} (saved before gptzoo checked its run folders), so damage to its files cannot be detected"
        )
    return manifest


UNREAD: Any = object()  # load_config's default manifest: read the folder's own (None is "it has none")


def load_config(folder: str | Path, registry: Registry | None = None, manifest: Manifest | None = UNREAD) -> RunConfig:
    """The run's config.json, validated (checked against ``manifest`` when given; else the folder's own is read)."""
    folder = Path(folder)
    if manifest is UNREAD:
        manifest = open_run(folder)
    file = folder / CONFIG
    if not file.is_file():
        raise CheckpointError(f"{file}: missing; is {folder} a gptzoo run folder?")
    if manifest is not None:
        check_file(folder, manifest, CONFIG)
    data = read_json(file, CheckpointError)
    registry = registry or default_registry()
    missing = missing_components(manifest, registry, file)
    if missing:
        raise CheckpointError(missing)
    return validate_run_config(data, str(file), registry)


def load_run(folder: str | Path, registry: Registry | None = None, device: str | torch.device = "cpu") -> Run:
    """Read a run folder back: config, tokenizer and model with its weights (in eval mode), each file checked.

    A run holding only a sharded checkpoint is consolidated into its weights file first."""
    folder = Path(folder)
    manifest = consolidated(folder, open_run(folder))
    config = load_config(folder, registry, manifest)
    tokenizer = build_tokenizer(config, folder, manifest)
    with ThreadPoolExecutor(1) as pool:  # hash the weights while the model is built (both release the GIL)
        checked = (
            pool.submit(check_file, folder, manifest, WEIGHTS)
            if manifest is not None and (folder / WEIGHTS).is_file()
            else None
        )
        check_fits(config.model, str(folder / CONFIG), device)
        model = GPT(config.model)
        if checked is not None:
            checked.result()
    load_weights(model, folder / WEIGHTS)
    return Run(folder, config, model.to(device).eval(), tokenizer, manifest)
