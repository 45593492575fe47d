"""``gptzoo train`` with a fault on rank 1 at its second step; test_distributed runs it under torchrun:

    python rank_fault.py raise|sigterm train CONFIG --out DIR ...

``raise`` raises an exception there, ``sigterm`` sends that process alone SIGTERM.
"""

import os
import signal
import sys

from gptzoo.recipes import cli
from gptzoo.recipes.training import loop as train_module

fault = sys.argv[1]
real_step, steps = train_module.train_step, []


def step_with_a_fault_on_rank_1(*args, **kwargs):
    steps.append(1)
    if os.environ["RANK"] == "1" and len(steps) == 2:
        if fault == "raise":
            raise RuntimeError("injected failure on rank 1")
        signal.raise_signal(signal.SIGTERM)
    return real_step(*args, **kwargs)


train_module.train_step = step_with_a_fault_on_rank_1
raise SystemExit(cli.main(sys.argv[2:]))
