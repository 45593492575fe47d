"""The machine a benchmark ran on, for the JSON beside its numbers.

The hosts these benchmarks run on change from day to day (the same two cores may be an AVX2 processor
with a 32 MB last-level cache one day and one with AVX-512, native bf16 and 480 MB the next), and
which one it was decides what the numbers mean: a model whose weights fit in the last-level cache
is read from there between tokens, faster than the memory's bandwidth, and products in bf16 run on
native instructions or not. The benchmarks import it as ``from machine import describe``.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from gptzoo.recipes.generation.stored_weights import native_bf16

CPU_INFO = Path("/proc/cpuinfo")
CPU0_CACHES = Path("/sys/devices/system/cpu/cpu0/cache")
SIZE_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30}


def cpu_name(cpu_info: Path = CPU_INFO) -> str:
    """The processor's model name as the kernel reports it, else what ``platform`` says."""
    if cpu_info.is_file():
        for line in cpu_info.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    return platform.processor() or platform.machine()


def last_level_cache_bytes(caches: Path = CPU0_CACHES) -> int | None:
    """The size of the highest-level data or unified cache the first CPU sees (sysfs), None where unknown."""
    best: tuple[int, int] | None = None
    for index in sorted(caches.glob("index*")):
        if (index / "type").read_text().strip() == "Instruction":
            continue
        size = (index / "size").read_text().strip()  # e.g. "491520K"
        level = int((index / "level").read_text())
        n = int(size[:-1]) * SIZE_UNITS[size[-1]] if size[-1] in SIZE_UNITS else int(size)
        if best is None or level > best[0]:
            best = (level, n)
    return None if best is None else best[1]


def describe() -> dict:
    """The processor, its vector instructions as torch uses them, whether it multiplies bf16 natively, its
    last-level cache, the cores and threads, and the torch build."""
    return {
        "cpu": cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native_bf16(),
        "last_level_cache_bytes": last_level_cache_bytes(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "torch": torch.__version__,
    }
