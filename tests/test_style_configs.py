"""Each shipped *-style assembly trains through `gptzoo train` on the embedded corpus and then
generates through `gptzoo generate` (issue 13: "each trains ... and generates")."""

import json
import math
from pathlib import Path

import pytest

from gptzoo.recipes.cli import main

STYLES = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*-style.toml"))
SHORT = [
    "train.max_steps=2",
    "train.eval_interval=2",
    "train.eval_batches=1",
    "train.batch_size=2",
    "train.sample_tokens=0",
]


@pytest.fixture(scope="module")
def token_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("token-cache")  # shared: most styles tokenize the corpus alike


def test_there_are_style_configs():
    assert len(STYLES) >= 7  # llama, mistral, mla, moe, olmo2, neox, gemma3


@pytest.mark.slow
@pytest.mark.parametrize("config", STYLES, ids=lambda p: p.stem)
def test_style_config_trains_and_generates(config, tmp_path, token_cache, capsys):
    run = tmp_path / "run"
    overrides = [*SHORT, f"data.cache_dir={token_cache}"]
    assert main(["train", str(config), "--out", str(run), *(a for o in overrides for a in ("--set", o))]) == 0
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()][-1]
    assert last["step"] == 2 and math.isfinite(last["val_loss"])
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "The", "--max-new-tokens", "4", "--no-stream"]) == 0
    assert capsys.readouterr().out.startswith("The")
