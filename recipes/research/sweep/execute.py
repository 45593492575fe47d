"""Running a sweep: every (variant, seed) not finished yet, in this process, in a pool of spawned
workers or as Ray tasks (ray_executor); a finished run is reused unless the plugin code it trained
with has changed. Every executor runs the same _execute, so planning, results and reports are shared."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
from tqdm import tqdm

from gptzoo.core import GptzooError
from gptzoo.recipes.config.schema import validate_run_config
from gptzoo.recipes.research.sweep.finetune import finetuned_result
from gptzoo.recipes.research.sweep.measured import save_run_measurements, split_measured
from gptzoo.recipes.research.sweep.provenance import changed_components, provenance
from gptzoo.recipes.research.sweep.report import write_results
from gptzoo.recipes.research.sweep.results import RunResult, read_result
from gptzoo.recipes.research.sweep.schema import RUN_RESULT, RUNS, SWEEP, Sweep
from gptzoo.recipes.runs._lock import LOCK, OWNER
from gptzoo.recipes.runs.files import TRAIN_STATE, write_text_atomic
from gptzoo.recipes.runs.folder import load_config
from gptzoo.recipes.runs.metrics import read_metrics
from gptzoo.recipes.training import costs
from gptzoo.recipes.training.models import meta_model
from gptzoo.registry import Registry

if TYPE_CHECKING:
    from gptzoo.recipes.training.loop import TrainSummary

Trainer = Callable[..., "TrainSummary"]  # gptzoo.recipes.training.loop.train's signature
Finished = Callable[["RunResult", str], None]  # a run's result and where it ran, as each run finishes


@dataclass(frozen=True)
class RunTask:
    variant: str
    seed: int
    folder: Path
    config: dict  # the RunConfig as JSON (validated again where it runs)
    workers: int = 1
    extrapolate: tuple[float, ...] = ()
    finetune_from: str | None = None  # a fine-tuning sweep's: config is then the fine-tuning config


class Executor(Protocol):
    """What runs a sweep's tasks: each task's result goes to ``finished`` as it comes."""

    def check_out(self, out: Path) -> None:
        """Refuse an --out the runs could not write to."""

    def run(self, tasks: list[RunTask], trainer: Trainer | None, finished: Finished) -> None: ...


@dataclass
class ProcessPool:
    """The runs in ``workers`` spawned processes on this machine, each with its share of the cores."""

    workers: int

    def check_out(self, out: Path) -> None:
        pass  # this machine's own folder: the CLI checked it

    def run(self, tasks: list[RunTask], trainer: Trainer | None, finished: Finished) -> None:
        """Stopped (Ctrl-C, or SIGTERM to this process alone, as a scheduler or ``kill PID`` sends it), no
        queued run starts and each running one gets SIGTERM, so it checkpoints and the next sweep resumes it."""
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools
        stopping = context.Event()
        pool = ProcessPoolExecutor(
            self.workers, mp_context=context, initializer=_start_worker, initargs=(threads, stopping)
        )
        try:
            with _terminate_as_interrupt():
                futures = [pool.submit(_execute, task, trainer, None, False, print) for task in tasks]
                for future in as_completed(futures):
                    finished(future.result(), "")
        except BaseException:
            stopping.set()  # the runs a worker already holds queued do not start
            pool.shutdown(wait=False, cancel_futures=True)
            for worker in multiprocessing.active_children():
                worker.terminate()  # SIGTERM: a running run checkpoints and returns
            pool.shutdown(wait=True)
            raise
        pool.shutdown()


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt here, as Ctrl-C does (its default would end this process alone,
    leaving the workers training); only the main thread can set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_sweep(
    sweep: Sweep,
    out: str | Path,
    *,
    trainer: Trainer | None = None,
    registry: Registry | None = None,
    workers: int = 1,
    progress: bool = True,
    log: Callable[[str], None] = tqdm.write,
    executor: Executor | None = None,
) -> list[RunResult]:
    """Train every (variant, seed) not finished yet in ``out``, then write the results.

    ``trainer`` defaults to gptzoo.recipes.training.loop.train; with ``workers`` > 1 or an
    ``executor`` it must be importable by name (the runs happen in other processes) and the runs use
    the default registry. ``executor`` (e.g. ray_executor.RayExecutor) replaces the process pool.
    """
    out = Path(out)
    if workers < 1:
        raise GptzooError(f"workers = {workers}: give 1 or more")
    if executor is None and workers > 1:
        executor = ProcessPool(workers)
    if executor is not None and registry is not None:
        raise GptzooError(
            "a registry built in code cannot reach worker processes: use workers = 1, or install the plugin with an entry point"
        )
    _claim_folder(out, sweep)
    if executor is not None:
        executor.check_out(out)
    results, tasks = _reuse_finished(sweep, out, registry, workers, log)
    if results:
        log(
            f"{len(results)} of {len(results) + len(tasks)} runs already finished in {out}; running the other {len(tasks)}"
        )
    bar = tqdm(
        total=len(results) + len(tasks),
        initial=len(results),
        desc="sweep",
        unit="run",
        position=0,
        disable=not progress,
    )
    with bar:
        if executor is None:
            _run_here(tasks, results, bar, trainer, registry, progress, log)
        else:

            def finished(result: RunResult, where: str) -> None:
                results[result.variant, result.seed] = result
                bar.set_postfix_str(f"{result.variant}-seed{result.seed} {result.status}")
                bar.update()
                if where:
                    log(f"[{result.variant}-seed{result.seed}] {result.status} on {where}")

            executor.run(tasks, trainer, finished)
    ordered = [results[v.slug, s] for v in sweep.variants for s in sweep.seeds]
    write_results(sweep, out, ordered, log)
    return ordered


def _reuse_finished(
    sweep: Sweep, out: Path, registry: Registry | None, workers: int, log: Callable[[str], None]
) -> tuple[dict[tuple[str, int], RunResult], list[RunTask]]:
    """The runs finished in ``out`` with the plugin code installed now, and the tasks to train the others."""
    results: dict[tuple[str, int], RunResult] = {}
    tasks: list[RunTask] = []
    for variant in sweep.variants:
        current = sweep.components(variant, registry)
        for seed in sweep.seeds:
            folder = out / RUNS / variant.run_name(seed)
            previous = read_result(folder)
            if previous is not None and previous.finished:
                changed = changed_components(previous.components, current)
                if not changed:
                    results[variant.slug, seed] = previous
                    if previous.components is None:
                        log(
                            f"[{folder.name}] reused without a record of its plugins' versions (trained before gptzoo kept one); delete {folder} to train it again"
                        )
                    continue
                log(
                    f"[{folder.name}] trained with other plugin code than is installed now ({'; '.join(changed)}): training it again"
                )
                shutil.rmtree(folder)
            config = variant.config.model_copy(update={"train": variant.config.train.model_copy(update={"seed": seed})})
            tasks.append(
                RunTask(
                    variant.slug,
                    seed,
                    folder,
                    config.model_dump(mode="json"),
                    min(workers, len(sweep.variants) * len(sweep.seeds)),
                    tuple(sweep.extrapolate),
                    sweep.finetune_from,
                )
            )
    return results, tasks


def _run_here(
    tasks: list[RunTask],
    results: dict[tuple[str, int], RunResult],
    bar: tqdm,
    trainer: Trainer | None,
    registry: Registry | None,
    progress: bool,
    log: Callable[[str], None],
) -> None:
    """Train the tasks one after the other in this process."""
    for task in tasks:
        bar.set_postfix_str(task.folder.name)
        results[task.variant, task.seed] = _execute(task, trainer, registry, progress, log)
        bar.update()


_stopping: EventType | None = None  # in a pool worker: set once the sweep stops


def _start_worker(threads: int, stopping: EventType) -> None:
    global _stopping
    torch.set_num_threads(threads)  # each worker its share of the cores, not all of them
    _stopping = stopping


def _claim_folder(out: Path, sweep: Sweep) -> None:
    """Write DIR/sweep.json, refusing a folder that holds something else."""
    spec = sweep.spec()
    file = out / SWEEP
    if file.is_file():
        try:
            stored = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise GptzooError(f"{file}: not valid JSON ({err}); is {out} an ablation folder?") from None
        difference = _sweep_difference(stored, spec)
        if difference:
            raise GptzooError(
                f"{out} holds a different sweep (from {stored.get('source')}): {difference}. "
                f"Choose another --out, or delete {out} to start this sweep over"
            )
    elif out.exists() and (not out.is_dir() or any(p.name not in (LOCK, OWNER) for p in out.iterdir())):
        raise GptzooError(
            f"{out} exists and is not an ablation folder (no {SWEEP}); choose a new or empty folder for --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(file, json.dumps(spec, indent=2) + "\n")


def _sweep_difference(stored: dict, spec: dict) -> str:
    """What makes two sweep specs different runs, in words; '' when they are the same sweep."""
    if stored.get("seeds") != spec["seeds"]:
        return f"seeds {stored.get('seeds')} there, {spec['seeds']} here"
    if stored.get("extrapolate", []) != spec["extrapolate"]:
        return f"extrapolate = {stored.get('extrapolate', [])} there, {spec['extrapolate']} here"
    old = {v["slug"]: v["config"] for v in stored.get("variants", [])}
    new = {v["slug"]: v["config"] for v in spec["variants"]}
    if set(old) != set(new):
        return f"variants {sorted(old)} there, {sorted(new)} here"
    changed = [slug for slug in new if old[slug] != new[slug]]
    return f"variant '{changed[0]}' has a different config" if changed else ""


def _execute(
    task: RunTask, trainer: Trainer | None, registry: Registry | None, progress: bool, log: Callable[[str], None]
) -> RunResult:
    """Train one run (resuming from its checkpoint when it has one) and write its ablation.json (what the
    machine measured to its measurements.jsonl).

    A failure or divergence becomes the run's result; only Ctrl-C stops the sweep.
    """
    if _stopping is not None and _stopping.is_set():
        raise KeyboardInterrupt  # queued in a worker of a sweep that has stopped: not started
    resume = (task.folder / TRAIN_STATE).is_file()
    if task.folder.exists() and not resume:
        shutil.rmtree(task.folder)  # a start that left no checkpoint: nothing in it to keep
    load_at_start = _load_per_core()
    result = _train(task, trainer, registry, resume, progress, log)
    result.load_per_core = max(load_at_start, _load_per_core())
    _add_measurements(result, task, registry)
    if result.status != "done":
        log(f"[{task.folder.name}] {result.status}: {result.message}")
    task.folder.mkdir(parents=True, exist_ok=True)
    decided, measured = split_measured(dataclasses.asdict(result))
    save_run_measurements(task.folder, result.steps, measured)  # first: ablation.json marks the run finished
    write_text_atomic(task.folder / RUN_RESULT, json.dumps(decided, indent=2) + "\n")
    return result


def _train(
    task: RunTask,
    trainer: Trainer | None,
    registry: Registry | None,
    resume: bool,
    progress: bool,
    log: Callable[[str], None],
) -> RunResult:
    """The run trained: done, diverged, or failed with the error's message."""
    from gptzoo.recipes.training.loop import NonFiniteLossError

    if trainer is None:
        from gptzoo.recipes.training.loop import train as trainer
    name = task.folder.name
    try:
        if task.finetune_from is not None:
            return finetuned_result(task)
        config = validate_run_config(task.config, f"{task.folder} config", registry)
        summary = trainer(
            config, task.folder, resume=resume, registry=registry, progress=progress, log=lambda m: log(f"[{name}] {m}")
        )
        if summary.stopped == "interrupted":
            raise KeyboardInterrupt  # Ctrl-C: train saved a checkpoint; the sweep stops and resumes from it
        return RunResult.from_summary(task.variant, task.seed, summary)
    except NonFiniteLossError as err:
        return RunResult(task.variant, task.seed, "diverged", str(err))
    except Exception as err:  # noqa: BLE001 -- one failed run is reported, the sweep goes on
        message = str(err) if isinstance(err, GptzooError) else f"{type(err).__name__}: {err}"
        return RunResult(task.variant, task.seed, "failed", message)


def _add_measurements(result: RunResult, task: RunTask, registry: Registry | None) -> None:
    """What the trainer does not report: the plugins, the model's costs, the accuracy, the extrapolation."""
    if task.finetune_from is None:
        result.components = provenance(validate_run_config(task.config, f"{task.folder} config", registry), registry)
    result.params, flops_per_token, result.state_bytes = _model_costs(task.folder, registry)
    if result.tokens is not None and flops_per_token is not None:
        result.flops = float(result.tokens * flops_per_token)
    result.workers = task.workers
    if task.finetune_from is None:
        records = read_metrics(task.folder)
        result.initial_val_loss = next((r["val_loss"] for r in records if r.get("step") == 0), None)
        logits = [
            max(v for v in r["max_attention_logit"] if v is not None)
            for r in records
            if any(r.get("max_attention_logit") or [])
        ]
        result.max_attention_logit = logits[-1] if logits else None
    if result.status == "done" and task.finetune_from is None:
        result.final_val_accuracy = (read_metrics(task.folder)[-1:] or [{}])[0].get("val_accuracy")
        if task.extrapolate:
            result.extrapolation = _extrapolation(task.folder, task.extrapolate, registry)


def _extrapolation(folder: Path, multiples: tuple[float, ...], registry: Registry | None) -> dict:
    """The run's loss and accuracy at each multiple of its context, or why its positions cannot go there."""
    from gptzoo.recipes.research.extrapolate import LengthLimitError, extrapolate
    from gptzoo.recipes.runs.folder import build_tokenizer
    from gptzoo.recipes.training.devices import resolve_device

    config = load_config(folder, registry)
    tokenizer = build_tokenizer(config, folder)
    scores = {}
    for multiple in multiples:
        context = max(1, round(multiple * config.model.context_length))
        try:
            (summary,) = extrapolate(config, folder, tokenizer, [context], resolve_device(config.train.device))
            scores[f"{multiple:g}"] = {"context": context, "loss": summary["loss"], "accuracy": summary["accuracy"]}
        except LengthLimitError as err:
            scores[f"{multiple:g}"] = {"context": context, "refused": str(err)}
    return scores


def _model_costs(folder: Path, registry: Registry | None) -> tuple[int | None, int | None, int | None]:
    """Parameters, training FLOPs per token and the decoding cache of one sequence at the context in bytes
    (float32, as describe counts it) of the model the run saved (its config.json has the vocabulary size filled in)."""
    from gptzoo.recipes.cli.describe import layer_cache, model_cache

    try:
        config = load_config(folder, registry)
    except GptzooError:
        return None, None, None  # the run failed before saving its config
    if config.model.vocab_size is None:
        return None, None, None
    model = meta_model(config.model)
    T = config.model.context_length
    cache = model_cache(model, [layer_cache(mixer, T) for mixer in model.mixers()], T)
    return costs.param_counts(model)["total"], costs.flops_per_token(model)["training"], cache["bytes_per_sequence"]


def _load_per_core() -> float:
    """The 1-minute load average per core: above 1, more work was waiting to run than there were cores."""
    return os.getloadavg()[0] / (os.cpu_count() or 1)
