"""Training a GPT on a corpus: the loop that strings the training modules together.

Devices (devices.py), the optimizer and its schedule (optim.py), evaluation (evaluation.py),
checkpoints (checkpoint.py) and how a session starts (start.py) each have their module; here
are one step and the loop, which follows ``plan_step`` (step_plan.py) for what comes after each
step. The step itself never waits on the device: losses are read back to the host only when the
progress bar updates (every LOG_EVERY steps) and at evaluations.
"""

from __future__ import annotations

import contextlib
import math
import signal
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from gptzoo.core import AuxiliaryLoss, CheckpointError, GptzooError
from gptzoo.recipes.config.schema import RunConfig, TrainConfig
from gptzoo.recipes.data.tokens import TokenWindows, WindowSampler
from gptzoo.recipes.runs._lock import run_writer
from gptzoo.recipes.runs.files import WEIGHTS, check_out_folder
from gptzoo.recipes.runs.metrics import append_measurements, append_metrics, read_metrics
from gptzoo.recipes.runs.sharded import consolidate
from gptzoo.recipes.runs.weights import unwrap
from gptzoo.recipes.training import costs, distributed
from gptzoo.recipes.training.checkpoint import (
    Progress,
    save_checkpoint,
)
from gptzoo.recipes.training.devices import autocast, peak_memory_bytes, reset_peak_memory, to_device
from gptzoo.recipes.training.evaluation import metrics_record, sample_text
from gptzoo.recipes.training.optim import clip_and_step, lr_at
from gptzoo.recipes.training.start import Run, set_up, start_run
from gptzoo.recipes.training.step_plan import StepPlan, plan_step
from gptzoo.recipes.training.tensorboard import TensorBoardLog
from gptzoo.registry import Registry


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


def lm_loss(
    model: nn.Module, inputs: Tensor, targets: Tensor, z_loss_weight: float = 0.0
) -> tuple[Tensor, AuxiliaryLoss | None]:
    """The language-model loss and, with a z-loss weight, the z-loss on the same logits (else None)."""
    logits = model(inputs).float()  # (B, T, V)
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    return loss, AuxiliaryLoss(z_loss(logits), z_loss_weight) if z_loss_weight else None


def z_loss(logits: Tensor) -> Tensor:
    """PaLM's z-loss (Chowdhery et al., 2022; Wortsman et al., 2023): log(Z)² averaged over the tokens, where
    Z = Σ exp(logits) is the softmax's normaliser; weighted, it keeps log Z near 0 so the logits cannot drift."""
    return torch.logsumexp(logits, dim=-1).square().mean()


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

    The components' auxiliary losses (and with train.z_loss the z-loss) join the loss being minimised, each times its weight;
    their values are added to ``aux_sums`` by name (averaged over the micro-batches).
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    total = torch.zeros((), device=device)
    for micro_step in range(train.grad_accum):
        inputs, targets = to_device(windows.batch(sampler.take(train.batch_size)), device)  # (B, T) each
        with distributed.grad_sync(model, last_micro_step=micro_step == train.grad_accum - 1):
            with autocast(device, train.dtype):
                loss, z = lm_loss(model, inputs, targets, train.z_loss)
                aux = unwrap(model).auxiliary_losses(targets) | ({"z_loss": z} if z is not None else {})
                objective = loss + sum(a.weight * a.value for a in aux.values()) if aux else loss
            (objective / train.grad_accum).backward()
        total += loss.detach() / train.grad_accum
        for name, a in aux.items():
            if aux_sums is not None:
                aux_sums[name] = aux_sums.get(name, 0.0) + a.value.detach().float() / train.grad_accum
    clip_and_step(model, optimizer, train.grad_clip)
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


# ---- the loop ---------------------------------------------------------------------------


@dataclass
class Window:
    """What happened since the last evaluation."""

    started: float = field(default_factory=time.perf_counter)
    steps: int = 0
    tokens: int = 0
    aux_sums: dict[str, Tensor] = field(default_factory=dict)  # auxiliary losses summed over the steps

    def tokens_per_s(self) -> float:
        return self.tokens / max(time.perf_counter() - self.started, 1e-9)


@dataclass
class TrainState:
    """What the loop carries from step to step."""

    at: Progress  # where training stands: what a checkpoint saves
    saved_step: int | None  # the last checkpoint's step, kept if the loss diverges
    checked_step: int  # the last step whose loss was read back finite
    nonfinite: Tensor  # on the device: whether any loss since checked_step was NaN or infinite
    last_val_loss: float | None = None
    window: Window = field(default_factory=Window)
    session_started: float = field(default_factory=time.perf_counter)
    session_start_step: int = 0
    elapsed_before_s: float = 0.0  # training time of earlier sessions of a resumed run
    measured_step: int | None = None  # the last step written to measurements.jsonl

    def elapsed_s(self) -> float:
        return self.elapsed_before_s + time.perf_counter() - self.session_started


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
    run, at = set_up(start_run(config, out, resume, registry, say), out, registry, world, progress, say)
    reset_peak_memory(run.device)
    say_what_trains(run, at, resume)
    if at.step >= run.n_steps:
        say(f"{out}: already trained for {at.step} of {run.n_steps} steps; raise train.max_steps to train longer")
        last = read_metrics(out)[-1:] or [{}]
        return TrainSummary(
            out,
            at.step,
            at.tokens,
            last[0].get("val_loss"),
            at.best_val_loss,
            tokens_per_s=0.0,
            peak_memory_bytes=0,
            wall_s=time.perf_counter() - started,
            stopped="done",
        )

    state = TrainState(
        at,
        saved_step=at.step if resume else None,
        checked_step=at.step,
        nonfinite=torch.zeros((), dtype=torch.bool, device=run.device),
        session_start_step=at.step,
        elapsed_before_s=at.elapsed_s,
    )
    bar = tqdm(
        total=run.n_steps, initial=at.step, desc="training", unit="step", disable=not progress, dynamic_ncols=True
    )
    tensorboard = TensorBoardLog(out, at.step) if run.config.train.tensorboard and world.is_main else None
    stopped = train_loop(run, state, bar, tensorboard)
    wall = time.perf_counter() - state.session_started
    consolidate_sharded(run)
    if tensorboard is not None:
        tensorboard.close()
    return TrainSummary(
        out,
        at.step,
        at.tokens,
        state.last_val_loss,
        at.best_val_loss,
        tokens_per_s=(at.step - state.session_start_step) * run.tokens_per_step / max(wall, 1e-9),
        peak_memory_bytes=peak_memory_bytes(run.device),
        wall_s=time.perf_counter() - started,
        stopped=stopped,
    )


def train_loop(run: Run, state: TrainState, bar: tqdm, tensorboard: TensorBoardLog | None) -> str:
    """Train from ``state`` to run.n_steps, or until a signal stops it: returns "done" or "interrupted"."""
    cfg, at = run.config.train, state.at
    if at.step == 0 and (before := plan_step(0, run.n_steps, cfg)).evaluate:
        report(run, state, 0.0, before.sample, tensorboard)
        state.window = Window()
    with StopSignals() as stop, bar:
        while at.step < run.n_steps:
            lr = lr_at(at.step, cfg, run.n_steps)
            aux_sums = state.window.aux_sums
            loss = train_step(
                run.step_model, run.optimizer, run.train_windows, run.rank_sampler, cfg, lr, run.device, aux_sums
            )
            state.nonfinite |= ~torch.isfinite(loss)
            at.step += 1
            at.tokens += run.tokens_per_step
            state.window.steps += 1
            state.window.tokens += run.tokens_per_step
            plan = plan_step(at.step, run.n_steps, cfg)
            if plan.log:
                check_finite(run, state)
                show_progress(run, state, loss, bar)
            if plan.evaluate:
                report(run, state, state.window.tokens_per_s(), plan.sample, tensorboard)
            if plan.checkpoint:
                checkpoint(run, state)
            if plan.evaluate:
                state.window = Window()
            if stop_requested(run, stop, plan) and at.step < run.n_steps:
                checkpoint(run, state)
                by = signal.Signals(stop.received).name if stop.received is not None else "a signal to another process"
                run.say(f"stopped by {by} at step {at.step}; checkpoint saved in {run.out} (continue with --resume)")
                return "interrupted"
    return "done"


def say_what_trains(run: Run, at: Progress, resume: bool) -> None:
    """One line on what trains where (and one on how the processes share the batch)."""
    cfg = run.config.train
    n_params = costs.param_counts(run.model)["total"]
    run.say(
        f"{'resuming at step ' + str(at.step) + ' of' if resume else 'training'} {run.n_steps} steps of {run.tokens_per_step:,} tokens, "
        f"{n_params:,} parameters on {run.device}; {run.train_windows.describe()} for training, "
        f"{run.val_windows.describe()} for validation"
    )
    if run.world.size > 1:
        run.say(
            f"{run.world.size} processes ({cfg.parallel}): effective batch {cfg.batch_size} per process × {cfg.grad_accum} accumulated "
            f"× {run.world.size} processes = {run.windows_per_step} windows, {run.tokens_per_step:,} tokens per step"
        )


def check_finite(run: Run, state: TrainState) -> None:
    """Raise NonFiniteLossError if any rank's loss went NaN or infinite since the last check: the one sync between evaluations."""
    if distributed.any_rank(state.nonfinite, run.device):
        raise diverged(run.out, state)
    state.checked_step = state.at.step


def show_progress(run: Run, state: TrainState, loss: Tensor, bar: tqdm) -> None:
    """The progress bar at this step: the loss (averaged over the ranks), auxiliary losses, tokens/s."""
    rate = state.window.tokens_per_s()
    mean_loss = distributed.mean_over_ranks(loss)  # every rank takes part, though only rank 0 shows it
    aux_shown = {
        name: f"{distributed.mean_over_ranks(total).item() / state.window.steps:.4f}"
        for name, total in state.window.aux_sums.items()
    }
    bar.set_postfix(loss=f"{mean_loss.item():.4f}", **aux_shown, tok_s=f"{rate:,.0f}")
    bar.update(state.at.step - bar.n)


def report(run: Run, state: TrainState, tokens_per_s: float, sample: bool, tensorboard: TensorBoardLog | None) -> None:
    """Evaluate, log to metrics.jsonl and what the machine measured to measurements.jsonl (both to TensorBoard),
    print the losses and, with ``sample``, a sample."""
    cfg, at = run.config.train, state.at
    record = metrics_record(
        run.step_model,
        run.train_windows,
        run.val_windows,
        cfg,
        run.device,
        at.step,
        at.tokens,
        run.n_steps,
    )
    if not math.isfinite(record["val_loss"]) or not math.isfinite(record["train_loss"]):
        raise diverged(run.out, state)
    at.elapsed_s = state.elapsed_s()
    measured = {
        "step": at.step,
        "tokens_per_s": round(tokens_per_s, 1),
        "peak_memory_bytes": peak_memory_bytes(run.device),
        "elapsed_s": round(at.elapsed_s, 3),
    }
    record |= {
        "processes": run.world.size,
        "effective_batch_size": run.windows_per_step,
        "tokens_per_step": run.tokens_per_step,
    }
    record |= {
        f"aux_{name}": distributed.mean_over_ranks(total).item() / max(state.window.steps, 1)
        for name, total in state.window.aux_sums.items()
    }
    at.best_val_loss = min(record["val_loss"], at.best_val_loss or math.inf)
    state.last_val_loss = record["val_loss"]
    if run.world.is_main:
        run.out.mkdir(parents=True, exist_ok=True)
        append_metrics(run.out, record)
        append_measurements(run.out, measured)
        state.measured_step = at.step
        if tensorboard is not None:
            tensorboard.log(record | measured)
    run.say(
        f"step {at.step}: train loss {record['train_loss']:.4f}, val loss {record['val_loss']:.4f}, "
        f"perplexity {record['perplexity']:.1f}, lr {record['lr']:.2e}, {tokens_per_s:,.0f} tokens/s"
    )
    if sample:
        run.say(textwrap.indent(sample_text(run.step_model, run.tokenizer, cfg), "  | "))


def checkpoint(run: Run, state: TrainState) -> None:
    """Save a checkpoint of this step (through the module's save_checkpoint, which tests replace); the training
    time up to it goes to measurements.jsonl (before the commit: a resume drops it with the uncommitted step)."""
    state.at.elapsed_s = state.elapsed_s()
    if run.world.is_main and state.measured_step != state.at.step:
        append_measurements(run.out, {"step": state.at.step, "elapsed_s": round(state.at.elapsed_s, 3)})
        state.measured_step = state.at.step
    save_checkpoint(run.out, run.config, run.model, run.tokenizer, run.optimizer, state.at, run.sampler, run.registry)
    state.saved_step = state.at.step


def consolidate_sharded(run: Run) -> None:
    """Under FSDP, rank 0 writes the last (sharded) checkpoint's model.safetensors, which every other command
    reads, while the other ranks wait."""
    if not distributed.is_sharded(run.model):
        return
    if run.world.is_main and (step := consolidate(run.out)) is not None:
        run.say(f"consolidated the sharded checkpoint of step {step} into {run.out / WEIGHTS}")
    distributed.barrier()


def stop_requested(run: Run, stop: StopSignals, plan: StepPlan) -> bool:
    """Whether a signal asks to stop after this step; with several processes, every rank must stop after
    the same one, so they agree at the steps where they sync anyway."""
    stopping = stop.received is not None
    if run.world.size > 1:
        stopping = plan.log and distributed.any_rank(stopping, run.device)
    return stopping


def diverged(out: Path, state: TrainState) -> NonFiniteLossError:
    kept = (
        f"the last good checkpoint in {out} (step {state.saved_step}) is kept"
        if state.saved_step is not None
        else "no checkpoint was saved"
    )
    return NonFiniteLossError(
        f"the loss became NaN or infinite between steps {state.checked_step} and {state.at.step}: training diverged; "
        f"{kept}. Lower train.lr, add train.warmup_steps or set train.grad_clip"
    )
