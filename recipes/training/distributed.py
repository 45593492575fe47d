"""Training on several processes with torch.distributed: one process (a rank) per device.

torchrun starts the processes and gives each RANK, LOCAL_RANK and WORLD_SIZE in its
environment; ``process_group`` joins them into one job (NCCL between GPUs, gloo on CPUs) and
leaves it again whatever happens. Without torchrun every function here is the single-process
case: world size 1, rank 0, nothing to communicate.

Batch semantics: ``train.batch_size`` is each rank's micro-batch. Every rank walks the same
seeded window order; of each global micro-batch of ``batch_size × world_size`` windows, rank r
takes rows ``[r·batch_size, (r+1)·batch_size)``, so one optimizer step sees
``batch_size × grad_accum × world_size`` windows whatever the number of processes, exactly the
windows one process with that batch would see.

Models: ``ddp`` keeps a whole copy per rank and averages gradients (DistributedDataParallel);
``fsdp`` shards every block's parameters, gradients and optimizer state across ranks
(FSDP2's ``fully_shard``) for models that do not fit on one device. DDP checkpoints gather
the optimizer state on rank 0 and are the same files as any other run; FSDP checkpoints are
written in shards by every rank (training/sharded.py) and consolidated at the end.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from gptzoo.core import ConfigError
from gptzoo.recipes.data.tokens import WindowSampler
from gptzoo.recipes.runs.weights import model_state, unwrap

TIMEOUT_ENV = "GPTZOO_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 300  # how long a collective waits for a missing rank before the job fails


@dataclass(frozen=True)
class World:
    """This process's place in the job: rank of size, and its device index on this machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _running() -> bool:
    return dist.is_available() and dist.is_initialized()


def world() -> World:
    """The job this process belongs to; a world of one when no process group is running."""
    if not _running():
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def launched_world() -> World:
    """The job torchrun started this process in, read from the environment it sets."""
    return World(
        int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
    )


def timeout() -> datetime.timedelta:
    value = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise ConfigError(f"{TIMEOUT_ENV}={value!r}: give the collective timeout as a positive number of seconds")
    return datetime.timedelta(seconds=seconds)


@contextmanager
def process_group(device: str = "auto") -> Iterator[World]:
    """Join the job torchrun started (nothing to do in a single process) and always leave it.

    ``device`` is train.device: a CUDA run uses NCCL with each rank on cuda:LOCAL_RANK, anything
    else gloo. An exception on any rank is reported with its rank and raised on, so the process
    exits non-zero and torchrun stops the other ranks instead of leaving them waiting.
    """
    launched = launched_world()
    if launched.size == 1 or _running():
        yield world()
        return
    use_cuda = torch.cuda.is_available() and (device == "auto" or device.startswith("cuda"))
    if use_cuda:
        torch.cuda.set_device(launched.local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout())
    try:
        yield world()
        # Every rank reaches the teardown before any tears down: a rank whose peer had already
        # closed its connections could abort at exit ("terminate called without an active exception").
        dist.barrier()
    except Exception as err:
        print(
            f"gptzoo: rank {launched.rank} of {launched.size} failed: {type(err).__name__}: {err}",
            file=sys.stderr,
            flush=True,
        )
        raise
    finally:
        dist.destroy_process_group()


def rank_device(device: torch.device, at: World) -> torch.device:
    """Each rank of a multi-process CUDA run on its own GPU, cuda:LOCAL_RANK."""
    return torch.device("cuda", at.local_rank) if device.type == "cuda" and at.size > 1 else device


def launch(train_args: list[str], nproc: int) -> int:
    """Run ``gptzoo train TRAIN_ARGS`` on ``nproc`` processes of this machine under torchrun; its exit code."""
    if launched_world().size > 1:
        raise ConfigError("--nproc: this process was already started by torchrun; leave --nproc out")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        "-m",
        "gptzoo.recipes",
        "train",
        *train_args,
    ]
    process = subprocess.Popen(command)
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:  # the workers got Ctrl-C too: wait while they checkpoint
            continue


# ---- data: one shard of every global batch per rank -------------------------------------


def shard(indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s contiguous share of a global micro-batch: rows [r·B, (r+1)·B) of W·B."""
    if len(indices) % world_size:
        raise ValueError(f"a global batch of {len(indices)} does not split evenly over {world_size} ranks")
    per_rank = len(indices) // world_size
    return indices[rank * per_rank : (rank + 1) * per_rank]


class RankSampler:
    """A WindowSampler's shared order, of which this rank keeps its shard of every draw.

    Every rank advances the same sampler by the global batch, so all ranks hold the same
    position and any rank's state resumes the whole job.
    """

    def __init__(self, sampler: WindowSampler, at: World):
        self.sampler = sampler
        self.world = at

    def take(self, n: int) -> np.ndarray:
        return shard(self.sampler.take(n * self.world.size), self.world.rank, self.world.size)

    def state(self) -> dict[str, int]:
        return self.sampler.state()


def eval_batches(indices: np.ndarray, batch_size: int, at: World) -> list[np.ndarray]:
    """This rank's evaluation batches: every size-th window, in as many batches on every rank.

    FSDP gathers weights inside each forward, so ranks must run the same number of forwards;
    a rank with fewer windows gets empty batches at the end.
    """
    mine = indices[at.rank :: at.size]
    per_rank = -(-len(indices) // at.size)  # the most windows any rank has
    return [mine[start : start + batch_size] for start in range(0, per_rank, batch_size)]


# ---- collectives --------------------------------------------------------------------------


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums over ranks (the values themselves in a single process)."""
    if not _running():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def mean_over_ranks(value: Tensor) -> Tensor:
    """The mean of a scalar tensor over ranks (the tensor itself in a single process)."""
    if not _running():
        return value
    value = value.detach().clone()
    dist.all_reduce(value)  # gloo has no AVG
    return value / dist.get_world_size()


def any_rank(flag: bool | Tensor, device: torch.device) -> bool:
    """True on every rank when it is true on any, so all ranks take the same branch."""
    tensor = torch.as_tensor(flag, device=device).to(torch.int32)
    if _running():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def broadcast_from_main(value: object) -> object:
    """Rank 0's ``value`` on every rank (any picklable value)."""
    if not _running():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_on_main(value: object) -> list[object] | None:
    """Every rank's ``value``, in rank order, on rank 0; None on the others."""
    if not _running():
        return [value]
    gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def barrier() -> None:
    if _running():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (it may write a cache), the other ranks after it (they read it)."""
    at = world()
    if not at.is_main:
        barrier()
    yield
    if at.is_main:
        barrier()


# ---- models -------------------------------------------------------------------------------


def wrap(model: nn.Module, parallel: str, device: torch.device, at: World) -> nn.Module:
    """Move ``model`` to ``device``; return what the training step runs: the model, DDP around it, or it sharded by FSDP.

    FSDP shards the parameters in place, so build the optimizer after this call.
    """
    if at.size == 1:
        return model.to(device)
    if parallel == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (at.size,))
        # Each call moves one block to the device and keeps this rank's shard: the whole model is
        # never on one device. In the forward, one block's full weights are gathered at a time.
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)  # the rest: embeddings, final norm, head
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model.to(device), device_ids=[device.index] if device.type == "cuda" else None)


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(unwrap(model), FSDPModule)


def grad_sync(model: nn.Module, last_micro_step: bool) -> AbstractContextManager:
    """DDP averages gradients in every backward; within an accumulation only the last needs to.

    FSDP keeps reducing every micro-step: skipping it would hold unsharded gradients.
    """
    from torch.nn.parallel import DistributedDataParallel

    ddp = getattr(model, "_orig_mod", model)
    if isinstance(ddp, DistributedDataParallel) and not last_micro_step:
        return ddp.no_sync()
    return nullcontext()


def tied_names(model: nn.Module) -> set[str]:
    """State-dict names that repeat an earlier name's tensor (a tied head's weight)."""
    seen, tied = set(), set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            tied.add(name)
        seen.add(id(tensor))
    return tied


def full_model_state(model: nn.Module) -> dict[str, Tensor]:
    """The whole model's weights on the CPU in the shared layout (what save_weights writes).

    Under FSDP every rank must call it (the shards are gathered); only rank 0 gets the tensors.
    """
    if not is_sharded(model):
        return model_state(model)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(unwrap(model), options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    tied = tied_names(unwrap(model))
    return {name: t.contiguous() for name, t in state.items() if name not in tied}


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The full optimizer state keyed by parameter name, on the CPU, so any number of ranks
    and either parallelism can resume it. Under FSDP every rank must call it; rank 0 gets it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    state = get_optimizer_state_dict(
        unwrap(model), optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    # Each group its own betas tuple, as a resumed optimizer has them (loading gives lists): a resumed run
    # then saves the bytes an uninterrupted one saves, where the groups would share the config's tuple.
    for group in state["param_groups"]:
        if "betas" in group:
            group["betas"] = tuple(float(beta) for beta in group["betas"])
    return state


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load what ``optimizer_state`` saved (each rank keeps its shard under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(unwrap(model), optimizer, state, options=StateDictOptions(full_state_dict=True))


def rank_seed(seed: int, at: World, step: int) -> int:
    """A seed of this rank's own for dropout, so ranks do not draw the same masks."""
    return int(np.random.SeedSequence([seed, at.rank, step]).generate_state(1)[0])
