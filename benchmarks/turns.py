"""Timing callables in turns, so that a change in the machine's load falls on all of them alike.

After ``warmup`` untimed passes (each callable once per pass, in order), each repetition calls every
callable once, the order reversed every other repetition: whichever runs first in a repetition can be
favoured by caches and clock boost. The benchmarks import it as ``from turns import in_turns``
(or ``measured_in_turns``, for callables that measure themselves).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable, Mapping
from typing import NamedTuple


class Turns(NamedTuple):
    """Per callable's name: the medians over the timed repetitions, and its first call's seconds."""

    seconds: dict[Hashable, float]  # wall-clock
    cpu_seconds: dict[Hashable, float]  # the calling thread's CPU time (which a busy machine disturbs less)
    first_seconds: dict[Hashable, float]  # wall-clock of the first warm-up call (a compiled call's compiling)


def in_turns(calls: Mapping[Hashable, Callable[[], object]], reps: int, warmup: int = 1) -> Turns:
    """Call each of ``calls`` ``warmup`` times untimed, then ``reps`` times in turns; what Turns says."""
    first: dict[Hashable, float] = {}
    for _ in range(warmup):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            first.setdefault(name, time.perf_counter() - start)
    wall: dict[Hashable, list[float]] = {name: [] for name in calls}
    cpu: dict[Hashable, list[float]] = {name: [] for name in calls}
    for rep in range(reps):
        for name in list(calls)[:: 1 if rep % 2 == 0 else -1]:
            cpu_start = time.thread_time()
            start = time.perf_counter()  # read inside the CPU clock's reads: the wall-clock times the call alone
            calls[name]()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.thread_time() - cpu_start)
    return Turns(
        {name: statistics.median(s) for name, s in wall.items()},
        {name: statistics.median(s) for name, s in cpu.items()},
        first,
    )


def measured_in_turns(timers: Mapping[Hashable, Callable[[], float]], reps: int, warmup: int = 1) -> dict:
    """The median of what each timer measures itself and returns (e.g. tokens/s, or seconds with its setup left
    out), the timers called as ``in_turns`` calls them; the warm-up calls' values are left out."""
    measured: dict[Hashable, list[float]] = {name: [] for name in timers}
    in_turns({name: lambda t=timer, m=measured[name]: m.append(t()) for name, timer in timers.items()}, reps, warmup)
    return {name: statistics.median(m[warmup:]) for name, m in measured.items()}
