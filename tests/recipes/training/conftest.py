"""What the tests of multi-process training share: a tiny config on a generated corpus, and torchrun."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gptzoo.recipes.training.distributed import TIMEOUT_ENV


def write_tiny_config(folder: Path, n_layers: int = 2, **train: object) -> Path:
    """A byte-level GPT with a tied head on a generated text, trained on the CPU at a constant lr
    (min_lr_ratio 1, no warmup: a run stopped and resumed takes the steps of an uninterrupted one);
    2 micro-batches of 6 windows a step, evaluated and checkpointed every 3. ``train`` overrides [train]."""
    words = np.random.default_rng(0).choice(["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far"], 4000)
    corpus = folder / "corpus.txt"
    corpus.write_text(" ".join(words), encoding="utf-8")
    settings = (
        dict(
            max_steps=9,
            batch_size=6,
            grad_accum=2,
            lr=3e-3,
            min_lr_ratio=1.0,
            eval_interval=3,
            eval_batches=2,
            sample_tokens=0,
            device="cpu",
        )
        | train
    )
    config = folder / "tiny.toml"
    config.write_text(
        f"""
[model]
context_length = 16
d_model = 32
n_layers = {n_layers}
n_heads = 2
dropout = 0.0
tied_head = true
tokenizer = {{ name = "byte" }}

[data]
source = "{corpus.as_posix()}"
cache_dir = "{(folder / "cache").as_posix()}"

[train]
"""
        + "".join(f"{key} = {value!r}\n".replace("'", '"') for key, value in settings.items()),
        encoding="utf-8",
    )
    return config


@pytest.fixture(scope="session")
def tiny_config():
    return write_tiny_config


TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


@pytest.fixture(scope="session")
def torchrun_env() -> dict[str, str]:
    """The environment of a torchrun job: one thread per process (the CPU is shared), and collectives
    that give up after a minute."""
    return os.environ | {"OMP_NUM_THREADS": "1", TIMEOUT_ENV: "60"}


@pytest.fixture(scope="session")
def torchrun(torchrun_env):
    """Run ``python -m torch.distributed.run --standalone --nproc_per_node N ARGS`` to its end; with
    ``check``, fail the test (showing the output's end) unless it succeeded."""

    def run(nproc: int, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [*TORCHRUN, "--standalone", "--nproc_per_node", str(nproc), *args]
        result = subprocess.run(command, env=torchrun_env, capture_output=True, text=True, timeout=180)
        if check:
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result

    return run
