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
def shared_data():
    """Path to a file in ../shared/data, or skip with the reason when it is absent."""

    def find(name: str) -> Path:
        path = SHARED / "data" / name
        if not path.is_file():
            pytest.skip(f"{path} is absent (tests read shared data from ../shared beside the project)")
        return path

    return find
