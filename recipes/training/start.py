"""How a training session starts: a new run, a resumed one, or a new one from another run's weights.

Each path gives the same thing, a ``Start``: the config to train (vocab_size resolved), its
tokenizer, and what the model's weights and the training state come from. ``set_up`` turns it
into the ``Run`` the loop trains: model, optimizer and data on this process's device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gptzoo.core import GPT, CheckpointError, ConfigError, Tokenizer
from gptzoo.recipes.config.schema import RunConfig
from gptzoo.recipes.data.tokens import TokenWindows, WindowSampler, fit_tokenizer, load_splits
from gptzoo.recipes.runs.files import CONFIG, TOKENIZER, TRAIN_STATE, WEIGHTS
from gptzoo.recipes.runs.folder import build_tokenizer, load_config, open_run
from gptzoo.recipes.runs.manifest import Manifest, check_file, read_manifest
from gptzoo.recipes.runs.metrics import METRICS, elapsed_at, keep_measurements_until
from gptzoo.recipes.runs.sharded import SHARDED, consolidated, has_sharded_checkpoint, sharded_files
from gptzoo.recipes.runs.weights import load_matching_weights, load_weights, weights_step
from gptzoo.recipes.training import costs, distributed
from gptzoo.recipes.training.checkpoint import (
    RUN_FILES,
    Progress,
    check_resume_config,
    committed,
    keep_metrics_until,
    load_train_state,
    restore_rng,
)
from gptzoo.recipes.training.devices import resolve_device
from gptzoo.recipes.training.models import resolve_vocab
from gptzoo.recipes.training.optim import build_optimizer, total_steps
from gptzoo.recipes.training.sharded import load_sharded_checkpoint
from gptzoo.registry import Registry


@dataclass
class Start:
    config: RunConfig  # model.vocab_size resolved
    tokenizer: Tokenizer  # fitted, when it learns from the corpus
    train_state: dict | None = None  # a resumed run's saved training state...
    manifest: Manifest | None = None  # ...and its folder's manifest
    init_from: Path | None = None  # the run whose weights a new run starts from


def start_run(
    config: RunConfig, out: Path, resume: bool, registry: Registry | None, say: Callable[[str], None]
) -> Start:
    """The start of training ``config`` into ``out``: resuming the run there, or a new run (from scratch or init_from)."""
    manifest = open_run(out) if out.is_dir() else None
    if resume:
        return resumed_run(config, out, manifest, registry)
    if committed(out, manifest):
        raise CheckpointError(f"{out}: already holds a run; pass --resume to continue it, or choose another --out")
    clear_unfinished_run(out, say)
    if config.train.init_from is not None:
        return run_from_weights(config, Path(config.train.init_from), registry)
    return new_run(config, say)


def resumed_run(config: RunConfig, out: Path, manifest: Manifest | None, registry: Registry | None) -> Start:
    """The run in ``out`` continued: its saved config with this one's [train], its tokenizer and training state."""
    if not committed(out, manifest):
        raise CheckpointError(
            f"{out}: holds no committed checkpoint to resume (the run stopped before its first); train without --resume to start over"
        )
    if manifest is not None:
        weights = sharded_files(manifest) if has_sharded_checkpoint(manifest) else [WEIGHTS]
        for name in (CONFIG, *weights, TRAIN_STATE, *(n for n in (TOKENIZER, METRICS) if n in manifest.files)):
            check_file(out, manifest, name)
    state = load_train_state(out)
    if manifest is None and weights_step(out / WEIGHTS) not in (None, state["step"]):
        raise CheckpointError(
            f"{out}: {WEIGHTS} is from step {weights_step(out / WEIGHTS)} but {TRAIN_STATE} from step {state['step']} "
            f"(a crash between saving the two); this folder cannot resume exactly"
        )
    saved = load_config(out, registry, manifest)
    check_resume_config(config, saved, out)
    config = saved.model_copy(update={"train": config.train})
    return Start(config, build_tokenizer(config, out, manifest), train_state=state, manifest=manifest)


def clear_unfinished_run(out: Path, say: Callable[[str], None]) -> None:
    """Remove what a run that stopped before its first checkpoint left in ``out``."""
    leftovers = [name for name in RUN_FILES if (out / name).exists()]
    if leftovers:
        say(
            f"{out} holds no committed checkpoint (a run stopped before its first); starting over (removing {', '.join(leftovers)})"
        )
        for name in leftovers:
            (out / name).unlink()


def run_from_weights(config: RunConfig, source: Path, registry: Registry | None) -> Start:
    """A new run starting from the weights of the run in ``source``, with its tokenizer (the weights mean its ids)."""
    if not (source / CONFIG).is_file():
        raise ConfigError(
            f"train.init_from: {source} is not a run folder (no {CONFIG}); give the folder of an imported or trained run"
        )
    with distributed.main_first():  # an FSDP run stopped early gets its weights file, written by rank 0 alone
        source_manifest = consolidated(source, open_run(source))
    source_config = load_config(source, registry, source_manifest)
    if source_config.model.tokenizer != config.model.tokenizer:
        raise ConfigError(
            f"train.init_from: {source} was trained with tokenizer {source_config.model.tokenizer.model_dump_json()}, this config has "
            f"{config.model.tokenizer.model_dump_json()}; its weights mean its tokenizer's ids, so set model.tokenizer as the source's"
        )
    tokenizer = build_tokenizer(source_config, source, source_manifest)
    return Start(resolve_vocab(config, tokenizer), tokenizer, init_from=source)


def new_run(config: RunConfig, say: Callable[[str], None]) -> Start:
    """A new run from randomly initialised weights, its tokenizer fitted on the corpus when it learns one."""
    tokenizer = config.model.tokenizer.build()
    if tokenizer.needs_fit and not tokenizer.is_fitted:
        say(f"fitting the '{config.model.tokenizer.name}' tokenizer on {config.data.source}")
        fit_tokenizer(config.data, tokenizer)
    return Start(resolve_vocab(config, tokenizer), tokenizer)


@dataclass
class Run:
    """What a training session trains, on what, and where: fixed once set up."""

    out: Path
    config: RunConfig
    tokenizer: Tokenizer
    registry: Registry | None
    world: distributed.World
    device: torch.device
    model: GPT  # the plain model, whose weights checkpoints save
    step_model: nn.Module  # the model as steps and evaluations run it: on the device, distributed, compiled
    optimizer: torch.optim.Optimizer
    sampler: WindowSampler  # the global order of training windows, saved in checkpoints
    rank_sampler: WindowSampler | distributed.RankSampler  # this process's share of it
    train_windows: TokenWindows
    val_windows: TokenWindows
    n_steps: int
    windows_per_step: int  # the global batch
    tokens_per_step: int
    say: Callable[[str], None]


def set_up(
    start: Start,
    out: Path,
    registry: Registry | None,
    world: distributed.World,
    progress: bool,
    say: Callable[[str], None],
) -> tuple[Run, Progress]:
    """The model, optimizer and data ``start`` describes, on this process's device, and where training stands."""
    config, cfg = start.config, start.config.train
    device = distributed.rank_device(resolve_device(cfg.device), world)
    with distributed.main_first():  # rank 0 tokenizes into the cache, the others then read it
        train_windows, val_windows = load_splits(config.data, start.tokenizer, config.model.context_length, progress)
    windows_per_step = cfg.batch_size * cfg.grad_accum * world.size
    torch.manual_seed(cfg.seed)
    model = GPT(config.model)
    n_steps = total_steps(
        cfg, len(train_windows), config.model.context_length, world.size, costs.flops_per_token(model)["training"]
    )
    sharded = has_sharded_checkpoint(start.manifest) and start.train_state is not None
    if start.train_state is not None and not sharded:
        load_weights(model, out / WEIGHTS)
    elif start.init_from is not None:  # start_run opened it (and noted a folder without a manifest)
        say(load_matching_weights(model, start.init_from, read_manifest(start.init_from)))
    model.train()
    # onto the device; FSDP shards in place, so before the optimizer
    wrapped = distributed.wrap(model, cfg.parallel, device, world)
    optimizer = build_optimizer(model, cfg, device)
    at = Progress()
    sampler = WindowSampler(len(train_windows), config.data.seed)
    if (state := start.train_state) is not None:
        if sharded:  # into this session's sharding, after the model is wrapped
            load_sharded_checkpoint(wrapped, optimizer, out / SHARDED)
        else:
            distributed.load_optimizer_state(model, optimizer, state["optimizer"])
        # the training time so far: in the state saved by an earlier gptzoo, else measured up to the checkpoint
        elapsed = state.get("elapsed_s", elapsed_at(out, state["step"]) if world.is_main else None)
        at = Progress(state["step"], state["tokens"], elapsed or 0.0, state["best_val_loss"])
        sampler = WindowSampler(len(train_windows), config.data.seed, **state["data"])
        restore_rng(state["rng"])
        if world.is_main:
            keep_metrics_until(out, at.step, start.manifest)
            keep_measurements_until(out, at.step)
    if world.size > 1:
        torch.manual_seed(distributed.rank_seed(cfg.seed, world, at.step))  # each rank its own dropout masks
    run = Run(
        out=out,
        config=config,
        tokenizer=start.tokenizer,
        registry=registry,
        world=world,
        device=device,
        model=model,
        step_model=torch.compile(wrapped) if cfg.compile else wrapped,
        optimizer=optimizer,
        sampler=sampler,
        rank_sampler=distributed.RankSampler(sampler, world) if world.size > 1 else sampler,
        train_windows=train_windows,
        val_windows=val_windows,
        n_steps=n_steps,
        windows_per_step=windows_per_step,
        tokens_per_step=windows_per_step * config.model.context_length,
        say=say,
    )
    return run, at
