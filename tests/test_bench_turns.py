"""benchmarks/turns.py: callables timed in turns, on a clock the test drives."""

import pytest


@pytest.fixture
def turns(benchmark_module):
    return benchmark_module("turns")


class Clock:
    """A wall clock and a thread CPU clock that move only when a call says so."""

    def __init__(self):
        self.wall, self.cpu = 0.0, 0.0

    def perf_counter(self):
        return self.wall

    def thread_time(self):
        return self.cpu


def test_order_reverses_every_other_repetition_after_the_warm_up_passes(turns, monkeypatch):
    monkeypatch.setattr(turns, "time", Clock())
    log = []
    turns.in_turns({name: (lambda name=name: log.append(name)) for name in "abc"}, reps=3, warmup=2)
    assert "".join(log) == "abc" + "abc" + "abc" + "cba" + "abc"  # two warm-up passes, then three in turns


def test_medians_of_the_timed_calls_and_the_first_call_s_seconds(turns, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(turns, "time", clock)
    # (wall, cpu) seconds of each call in order: one warm-up, then three timed repetitions
    steps = {"a": [(9, 8), (1, 1), (5, 2), (3, 3)], "b": [(7, 0), (2, 0.5), (4, 1.5), (6, 2.5)]}

    def call(name):
        wall, cpu = steps[name].pop(0)
        clock.wall += wall
        clock.cpu += cpu

    result = turns.in_turns({"a": lambda: call("a"), "b": lambda: call("b")}, reps=3)
    assert result.seconds == {"a": 3, "b": 4}  # the warm-up's 9 and 7 left out
    assert result.cpu_seconds == {"a": 2, "b": 1.5}
    assert result.first_seconds == {"a": 9, "b": 7}


def test_thread_cpu_seconds_leave_out_a_sleep(turns):
    import time

    result = turns.in_turns({"sleep": lambda: time.sleep(0.05)}, reps=1, warmup=0)
    assert result.seconds["sleep"] >= 0.05
    assert result.cpu_seconds["sleep"] < 0.025
    assert result.first_seconds == {}


def test_measured_in_turns_takes_the_median_of_what_each_timer_returns(turns, monkeypatch):
    monkeypatch.setattr(turns, "time", Clock())
    values = {"then": [100, 100, 1, 7, 3], "now": [0, 0, 10, 30, 20]}
    timers = {name: (lambda v=v: v.pop(0)) for name, v in values.items()}
    assert turns.measured_in_turns(timers, reps=3, warmup=2) == {"then": 3, "now": 20}
