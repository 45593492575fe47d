"""Training a GPT on a corpus: the loop that strings the training modules together.

Devices (devices.py), the optimizer and its schedule (optim.py), evaluation (evaluation.py) and
checkpoints (checkpoint.py) each have their module; here are one step, the per-step schedule
and ``train``. The step itself never waits on the device: losses are read back to the host
only when the progress bar updates (every LOG_EVERY steps) and at evaluations.
"""

from __future__ import annotations

import contextlib
import math
import signal
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from gptzoo.core import GPT, CheckpointError, ConfigError, GptzooError, Tokenizer
from gptzoo.recipes.config.schema import RunConfig, TrainConfig
from gptzoo.recipes.data.tokens import TokenWindows, WindowSampler, fit_tokenizer, load_splits
from gptzoo.recipes.runs.folder import (
    CONFIG,
    METRICS,
    TOKENIZER,
    TRAIN_STATE,
    WEIGHTS,
    append_metrics,
    build_tokenizer,
    check_out_folder,
    load_config,
    load_matching_weights,
    load_weights,
    open_run,
    read_metrics,
    unwrap,
    weights_step,
)
from gptzoo.recipes.runs.manifest import Manifest, check_file, read_manifest, run_writer
from gptzoo.recipes.training import distributed
from gptzoo.recipes.training.checkpoint import (
    RUN_FILES,
    Progress,
    check_resume_config,
    committed,
    keep_metrics_until,
    load_train_state,
    restore_rng,
    save_checkpoint,
)
from gptzoo.recipes.training.devices import autocast, peak_memory_bytes, reset_peak_memory, resolve_device, to_device
from gptzoo.recipes.training.evaluation import metrics_record, sample_text
from gptzoo.recipes.training.models import resolve_vocab
from gptzoo.recipes.training.optim import build_optimizer, lr_at, total_steps
from gptzoo.recipes.training.tensorboard import TensorBoardLog
from gptzoo.registry import Registry

LOG_EVERY = 10  # steps between progress-bar updates, the only host-device syncs between evaluations


class NonFiniteLossError(GptzooError):
    """The loss became NaN or infinite: training diverged."""


@dataclass
class TrainSummary:
    out: Path
    steps: int
    tokens: int
    final_val_loss: float | None
    best_val_loss: float | None
    tokens_per_s: float
    peak_memory_bytes: int
    wall_s: float
    stopped: str  # "done" or "interrupted"


def lm_loss(model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
    logits = model(inputs)  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    windows: TokenWindows,
    sampler: WindowSampler | distributed.RankSampler,
    train: TrainConfig,
    lr: float,
    device: torch.device,
    aux_sums: dict[str, Tensor] | None = None,
) -> Tensor:
    """One optimizer step over grad_accum micro-batches; returns the mean language-model loss, still on the device.

    The components' auxiliary losses join the loss being minimised, each times its weight;
    their values are added to ``aux_sums`` by name (averaged over the micro-batches).
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    total = torch.zeros((), device=device)
    for micro_step in range(train.grad_accum):
        inputs, targets = to_device(windows.batch(sampler.take(train.batch_size)), device)  # (B, T) each
        with distributed.grad_sync(model, last_micro_step=micro_step == train.grad_accum - 1):
            with autocast(device, train.dtype):
                loss = lm_loss(model, inputs, targets)
                aux = unwrap(model).auxiliary_losses()
                objective = loss + sum(a.weight * a.value for a in aux.values()) if aux else loss
            (objective / train.grad_accum).backward()
        total += loss.detach() / train.grad_accum
        for name, a in aux.items():
            if aux_sums is not None:
                aux_sums[name] = aux_sums.get(name, 0.0) + a.value.detach().float() / train.grad_accum
    if train.grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


class StopSignals:
    """Turns Ctrl-C and SIGTERM into a flag the loop checks between steps (a second Ctrl-C quits at once)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


# ---- the loop -----------------------------------------------------------------------------


def prepare_run(
    config: RunConfig, out: Path, resume: bool, registry: Registry | None, say: Callable[[str], None]
) -> tuple[RunConfig, Tokenizer, tuple[dict, Manifest | None] | None]:
    """The config to train (vocab_size resolved), its tokenizer (fitted) and, when resuming, the saved training state and manifest."""
    manifest = open_run(out) if out.is_dir() else None
    if resume:
        if not committed(out, manifest):
            raise CheckpointError(
                f"{out}: holds no committed checkpoint to resume (the run stopped before its first); train without --resume to start over"
            )
        if manifest is not None:
            for name in (CONFIG, WEIGHTS, TRAIN_STATE, *(n for n in (TOKENIZER, METRICS) if n in manifest.files)):
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
        return config, build_tokenizer(config, out, manifest), (state, manifest)
    if committed(out, manifest):
        raise CheckpointError(f"{out}: already holds a run; pass --resume to continue it, or choose another --out")
    leftovers = [name for name in RUN_FILES if (out / name).exists()]
    if leftovers:
        say(
            f"{out} holds no committed checkpoint (a run stopped before its first); starting over (removing {', '.join(leftovers)})"
        )
        for name in leftovers:
            (out / name).unlink()
    if config.train.init_from is not None:  # the source's weights mean its tokenizer's ids
        source = Path(config.train.init_from)
        if not (source / CONFIG).is_file():
            raise ConfigError(
                f"train.init_from: {source} is not a run folder (no {CONFIG}); give the folder of an imported or trained run"
            )
        source_config = load_config(source, registry, source_manifest := open_run(source))
        if source_config.model.tokenizer != config.model.tokenizer:
            raise ConfigError(
                f"train.init_from: {source} was trained with tokenizer {source_config.model.tokenizer.model_dump_json()}, this config has "
                f"{config.model.tokenizer.model_dump_json()}; its weights mean its tokenizer's ids, so set model.tokenizer as the source's"
            )
        tokenizer = build_tokenizer(source_config, source, source_manifest)
        return resolve_vocab(config, tokenizer), tokenizer, None
    tokenizer = config.model.tokenizer.build()
    if tokenizer.needs_fit and not tokenizer.is_fitted:
        say(f"fitting the '{config.model.tokenizer.name}' tokenizer on {config.data.source}")
        fit_tokenizer(config.data, tokenizer)
    return resolve_vocab(config, tokenizer), tokenizer, None


def train(
    config: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    registry: Registry | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainSummary:
    """Train ``config`` into the run folder ``out`` (or continue the run there with ``resume``).

    Evaluates and logs to metrics.jsonl every train.eval_interval steps and at the end (and
    before the first step with train.eval_at_start); checkpoints at each evaluation, or every
    train.checkpoint_interval steps, and at the end; Ctrl-C or SIGTERM checkpoints and returns with ``stopped="interrupted"``. Raises
    NonFiniteLossError if the loss diverges, leaving the last good checkpoint in place.
    """
    out = Path(out)
    world = distributed.world()
    check_out_folder(out)
    if resume and not out.is_dir():
        raise CheckpointError(f"{out}: no such run folder to resume")
    with run_writer(out) if world.is_main else contextlib.nullcontext():  # one writer per folder: a second is refused
        return _train(config, out, resume, registry, progress, log, world)


def _train(
    config: RunConfig,
    out: Path,
    resume: bool,
    registry: Registry | None,
    progress: bool,
    log: Callable[[str], None],
    world: distributed.World,
) -> TrainSummary:
    started = time.perf_counter()
    progress = progress and world.is_main  # one progress bar and one voice: rank 0's
    say = (tqdm.write if progress and log is print else log) if world.is_main else (lambda text: None)
    config, tokenizer, saved = prepare_run(config, out, resume, registry, say)
    state, manifest = saved if saved is not None else (None, None)
    cfg = config.train
    device = distributed.rank_device(resolve_device(cfg.device), world)

    with distributed.main_first():  # rank 0 tokenizes into the cache, the others then read it
        train_windows, val_windows = load_splits(config.data, tokenizer, config.model.context_length, progress)
    windows_per_step = cfg.batch_size * cfg.grad_accum * world.size  # the global batch
    tokens_per_step = windows_per_step * config.model.context_length

    torch.manual_seed(cfg.seed)
    model = GPT(config.model)
    n_steps = total_steps(
        cfg, len(train_windows), config.model.context_length, world.size, model.flops_per_token()["training"]
    )
    if state is not None:
        load_weights(model, out / WEIGHTS)
    elif cfg.init_from is not None:
        source = Path(cfg.init_from)  # prepare_run opened it (and noted a folder without a manifest)
        say(load_matching_weights(model, source, read_manifest(source)))
    model.train()
    wrapped = distributed.wrap(
        model, cfg.parallel, device, world
    )  # onto the device; FSDP shards in place, so before the optimizer
    optimizer = build_optimizer(model, cfg, device)
    at = Progress()
    sampler = WindowSampler(len(train_windows), config.data.seed)
    if state is not None:
        distributed.load_optimizer_state(model, optimizer, state["optimizer"])
        at = Progress(state["step"], state["tokens"], state["elapsed_s"], state["best_val_loss"])
        sampler = WindowSampler(len(train_windows), config.data.seed, **state["data"])
        restore_rng(state["rng"])
        if world.is_main:
            keep_metrics_until(out, at.step, manifest)
    if world.size > 1:
        torch.manual_seed(distributed.rank_seed(cfg.seed, world, at.step))  # each rank its own dropout masks
    rank_sampler = distributed.RankSampler(sampler, world) if world.size > 1 else sampler
    step_model = torch.compile(wrapped) if cfg.compile else wrapped
    reset_peak_memory(device)

    n_params = unwrap(model).param_counts()["total"]
    say(
        f"{'resuming at step ' + str(at.step) + ' of' if resume else 'training'} {n_steps} steps of {tokens_per_step:,} tokens, "
        f"{n_params:,} parameters on {device}; {train_windows.describe()} for training, {val_windows.describe()} for validation"
    )
    if world.size > 1:
        say(
            f"{world.size} processes ({cfg.parallel}): effective batch {cfg.batch_size} per process × {cfg.grad_accum} accumulated "
            f"× {world.size} processes = {windows_per_step} windows, {tokens_per_step:,} tokens per step"
        )
    summary = TrainSummary(out, at.step, at.tokens, None, at.best_val_loss, 0.0, 0, 0.0, "done")
    if at.step >= n_steps:
        say(f"{out}: already trained for {at.step} of {n_steps} steps; raise train.max_steps to train longer")
        last = read_metrics(out)[-1:] or [{}]
        summary.final_val_loss = last[0].get("val_loss")
        summary.wall_s = time.perf_counter() - started
        return summary

    session_start_step, elapsed_before = at.step, at.elapsed_s
    saved_step = at.step if resume else None
    loop_start = window_start = time.perf_counter()
    window_tokens = 0
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)  # any non-finite loss since the last check
    checked_step = at.step
    bar = tqdm(total=n_steps, initial=at.step, desc="training", unit="step", disable=not progress, dynamic_ncols=True)
    tensorboard = TensorBoardLog(out, at.step) if cfg.tensorboard and world.is_main else None

    def report(tokens_per_s: float) -> None:
        """Evaluate, log to metrics.jsonl, print the losses and a sample."""
        record = metrics_record(
            step_model, train_windows, val_windows, cfg, device, at.step, at.tokens, n_steps, tokens_per_s
        )
        if not math.isfinite(record["val_loss"]) or not math.isfinite(record["train_loss"]):
            raise _diverged(out, saved_step, checked_step, at.step)
        at.elapsed_s = elapsed_before + time.perf_counter() - loop_start
        record["elapsed_s"] = round(at.elapsed_s, 3)
        record |= {
            "processes": world.size,
            "effective_batch_size": windows_per_step,
            "tokens_per_step": tokens_per_step,
        }
        record |= {
            f"aux_{name}": distributed.mean_over_ranks(total).item() / max(window_steps, 1)
            for name, total in aux_sums.items()
        }
        at.best_val_loss = min(record["val_loss"], at.best_val_loss or math.inf)
        summary.final_val_loss = record["val_loss"]
        if world.is_main:
            out.mkdir(parents=True, exist_ok=True)
            append_metrics(out, record)
            if tensorboard is not None:
                tensorboard.log(record)
        say(
            f"step {at.step}: train loss {record['train_loss']:.4f}, val loss {record['val_loss']:.4f}, "
            f"perplexity {record['perplexity']:.1f}, lr {record['lr']:.2e}, {record['tokens_per_s']:,.0f} tokens/s"
        )
        if cfg.sample_tokens:
            say(textwrap.indent(sample_text(step_model, tokenizer, cfg), "  | "))

    aux_sums: dict[str, Tensor] = {}  # auxiliary losses summed over the steps since the last evaluation
    window_steps = 0
    if cfg.eval_at_start and at.step == 0:
        report(0.0)
        window_start = time.perf_counter()
    with StopSignals() as stop, bar:
        while at.step < n_steps:
            loss = train_step(
                step_model, optimizer, train_windows, rank_sampler, cfg, lr_at(at.step, cfg, n_steps), device, aux_sums
            )
            nonfinite |= ~torch.isfinite(loss)
            window_steps += 1
            at.step += 1
            at.tokens += tokens_per_step
            window_tokens += tokens_per_step
            evaluating = at.step % cfg.eval_interval == 0 or at.step == n_steps
            interval = cfg.checkpoint_interval
            checkpointing = at.step == n_steps or (
                evaluating if interval is None else bool(interval) and at.step % interval == 0
            )
            reporting = at.step % LOG_EVERY == 0 or evaluating or checkpointing
            if reporting:
                if distributed.any_rank(nonfinite, device):  # the one sync between evaluations
                    raise _diverged(out, saved_step, checked_step, at.step)
                checked_step = at.step
                rate = window_tokens / max(time.perf_counter() - window_start, 1e-9)
                mean_loss = distributed.mean_over_ranks(loss)  # every rank takes part, though only rank 0 shows it
                aux_shown = {
                    name: f"{distributed.mean_over_ranks(total).item() / window_steps:.4f}"
                    for name, total in aux_sums.items()
                }
                bar.set_postfix(loss=f"{mean_loss.item():.4f}", **aux_shown, tok_s=f"{rate:,.0f}")
                bar.update(at.step - bar.n)
            if evaluating:
                report(window_tokens / max(time.perf_counter() - window_start, 1e-9))
            if checkpointing:
                at.elapsed_s = elapsed_before + time.perf_counter() - loop_start
                save_checkpoint(out, config, model, tokenizer, optimizer, at, sampler, registry)
                saved_step = at.step
            if evaluating:
                window_start, window_tokens, window_steps = time.perf_counter(), 0, 0
                aux_sums.clear()
            stopping = stop.received is not None
            if world.size > 1:  # every rank must stop after the same step: agree where they sync anyway
                stopping = reporting and distributed.any_rank(stopping, device)
            if stopping and at.step < n_steps:
                at.elapsed_s = elapsed_before + time.perf_counter() - loop_start
                save_checkpoint(out, config, model, tokenizer, optimizer, at, sampler, registry)
                by = signal.Signals(stop.received).name if stop.received is not None else "a signal to another process"
                say(f"stopped by {by} at step {at.step}; checkpoint saved in {out} (continue with --resume)")
                summary.stopped = "interrupted"
                break

    wall = time.perf_counter() - loop_start
    if tensorboard is not None:
        tensorboard.close()
    summary.steps, summary.tokens, summary.best_val_loss = at.step, at.tokens, at.best_val_loss
    summary.tokens_per_s = (at.step - session_start_step) * tokens_per_step / max(wall, 1e-9)
    summary.peak_memory_bytes = peak_memory_bytes(device)
    summary.wall_s = time.perf_counter() - started
    return summary


def _diverged(out: Path, saved_step: int | None, good_step: int, step: int) -> NonFiniteLossError:
    kept = (
        f"the last good checkpoint in {out} (step {saved_step}) is kept"
        if saved_step is not None
        else "no checkpoint was saved"
    )
    return NonFiniteLossError(
        f"the loss became NaN or infinite between steps {good_step} and {step}: training diverged; {kept}. "
        f"Lower train.lr, add train.warmup_steps or set train.grad_clip"
    )
