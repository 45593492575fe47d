import os
from pathlib import Path

import pytest
import torch

# Tests run tiny models, where a second thread costs more than it gives (and starves when
# the machine is busy); subprocesses the tests start inherit the setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
if (SHARED / "tiktoken").is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken"))


@pytest.fixture
def registry():
    """A fresh registry per test: built-ins plus installed entry points, no shared state."""
    from gptzoo.registry import make_registry

    return make_registry()


@pytest.fixture
def benchmark_module(monkeypatch):
    """``benchmark_module("turns")``: a module of benchmarks/ imported afresh, as the benchmarks import each
    other (by name, with their folder on the path)."""
    import importlib
    import sys

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))

    def load(name: str):
        monkeypatch.delitem(sys.modules, name, raising=False)
        return importlib.import_module(name)

    return load


@pytest.fixture
def shared_data():
    """Path to a file in ../shared/data, or skip with the reason when it is absent."""

    def find(name: str) -> Path:
        path = SHARED / "data" / name
        if not path.is_file():
            pytest.skip(f"{path} is absent (tests read shared data from ../shared beside the project)")
        return path

    return find


@pytest.fixture
def peak_rss_growth():
    """``measure("gptzoo.recipes.interop.gpt2:import_gpt2", src, out)`` runs that importer in a fresh
    interpreter and returns how many bytes its peak resident memory grew by during the call."""
    import subprocess
    import sys

    def measure(function: str, src: Path, out: Path) -> int:
        module, name = function.split(":")
        script = (
            "import resource, sys\n"
            f"from {module} import {name}\n"
            "from gptzoo.registry import default_registry\n"
            "default_registry()\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            f"{name}(sys.argv[1], sys.argv[2])\n"
            "print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", script, str(src), str(out)], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        before, after = map(int, done.stdout.split())
        return (after - before) * 1024  # ru_maxrss is in KiB on Linux

    return measure
