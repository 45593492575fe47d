"""Running a sweep's runs as Ray tasks, on an existing cluster or a local instance started for the sweep.

Every node must see --out (shared storage): a run writes its run folder there, and the driver reads the
results back from it, as with the process pool. A task lost with its node is retried by Ray, and the
retried run resumes from the last checkpoint its run folder committed (training's --resume path).
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from gptzoo.core import GptzooError
from gptzoo.recipes.research.sweep.execute import Finished, RunTask, Trainer, _execute
from gptzoo.recipes.research.sweep.results import RunResult

INSTALL = "--executor ray needs Ray: pip install 'gptzoo[ray]'"


class RayMissingError(GptzooError):
    """Ray is not installed."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise RayMissingError(INSTALL) from None
    return ray


@dataclass(frozen=True)
class Resources:
    """What one run asks Ray for."""

    cpus: float = 1.0
    gpus: float = 0.0


@dataclass
class RayExecutor:
    """The runs as Ray tasks. ``address``: a cluster's (else RAY_ADDRESS, else a local instance);
    ``resources``: the sweep's default per run; ``per_variant``: a variant slug's own; ``retries``: how
    many times a task lost with its worker or node is run again."""

    address: str | None = None
    resources: Resources = field(default_factory=Resources)
    per_variant: dict[str, Resources] = field(default_factory=dict)
    retries: int = 3

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise GptzooError(f"retries = {self.retries}: give 0 or more")
        self.ray = import_ray()
        self.started_here = False

    def _connect(self) -> None:
        if self.ray.is_initialized():
            return
        address = (
            self.address or os.environ.get("RAY_ADDRESS") or "local"
        )  # local: a new instance, not a cluster found here
        self.ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        self.started_here = True

    def check_out(self, out: Path) -> None:
        """Write and remove a file in ``out`` from a task, so that a folder the nodes cannot see fails now."""
        self._connect()
        probe = self.ray.remote(num_cpus=0)(_probe_writable)
        error = self.ray.get(probe.remote(str(out.resolve())))
        if error:
            raise GptzooError(
                f"--out {out}: not writable from a Ray task ({error}); --out must be storage every node of the cluster sees"
            )

    def run(self, tasks: list[RunTask], trainer: Trainer | None, finished: Finished) -> None:
        self._connect()
        try:
            remote = self.ray.remote(_execute_on_node)
            pending = {}
            for task in tasks:
                asked = self.per_variant.get(task.variant, self.resources)
                ref = remote.options(
                    num_cpus=asked.cpus, num_gpus=asked.gpus, max_retries=self.retries, retry_exceptions=False
                ).remote(task, trainer, asked.cpus)
                pending[ref] = task
            while pending:
                (ref,), _ = self.ray.wait(list(pending), num_returns=1)
                task = pending.pop(ref)
                try:
                    result, where = self.ray.get(ref)
                except self.ray.exceptions.RayError as err:  # lost more often than it may be retried
                    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                    result, where = RunResult(task.variant, task.seed, "failed", f"{type(err).__name__}: {reason}"), ""
                finished(result, where)
        finally:
            if self.started_here:
                self.ray.shutdown()
                self.started_here = False


def _execute_on_node(task: RunTask, trainer: Trainer | None, cpus: float) -> tuple[RunResult, str]:
    """One run in a Ray worker, with threads for the CPUs it asked for; returns where it ran too."""
    import torch

    torch.set_num_threads(max(1, int(cpus)))
    return _execute(task, trainer, None, False, print), f"{socket.gethostname()} (node {_node_id()[:8]})"


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _probe_writable(out: str) -> str:
    """'' when this node can create a file in ``out``, else why not."""
    probe = Path(out) / f".ray-probe-{uuid.uuid4().hex}"
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
        probe.write_text("", encoding="utf-8")
        probe.unlink()
    except OSError as err:
        return f"{socket.gethostname()}: {err.strerror or err}"
    return ""
