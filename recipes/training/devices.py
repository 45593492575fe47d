"""Where training runs: the device a config names, autocast, moving batches there, peak memory."""

from __future__ import annotations

import contextlib
import sys

import torch
from torch import Tensor

from gptzoo.core import ConfigError


def resolve_device(name: str, option: str = "train.device") -> torch.device:
    """The device ``name`` stands for; ``option`` is what the user set it with, named in errors."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"{option} {name!r}: {err}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{option} {name!r}: this torch sees no CUDA device; use auto or cpu")
    return device


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")


def reset_peak_memory(device: torch.device) -> None:
    """Start measuring this run's own peak: CUDA's allocator statistics, or on Linux the process's
    peak resident memory (writing 5 to /proc/self/clear_refs resets VmHWM)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # not Linux: the peak is the process's since it started (the README says so)


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))  # kB
    except (OSError, StopIteration):
        pass
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB, macOS bytes


def to_device(batch: tuple[Tensor, Tensor], device: torch.device) -> tuple[Tensor, Tensor]:
    """Move a batch to the device; on CUDA through pinned memory, so the copy does not make the host wait."""
    if device.type != "cuda":
        return batch[0].to(device), batch[1].to(device)
    return tuple(t.pin_memory().to(device, non_blocking=True) for t in batch)
