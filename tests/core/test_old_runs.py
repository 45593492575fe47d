"""Run folders saved by gptzoo 0.1 (before block layouts, per-layer kinds and component-owned
caches) load unchanged: the same config, the same weights, the same logits as when saved."""

import json
from pathlib import Path

import pytest
import torch

from gptzoo.recipes.runs.folder import load_run

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "runs-v0.1"


@pytest.mark.parametrize("name,block", [("gpt2-pre", "pre_norm"), ("post-rope", "post_norm")])
def test_saved_run_loads_with_its_logits(name, block):
    run = load_run(FIXTURES / name)
    expected = json.loads((FIXTURES / name / "expected_logits.json").read_text())
    assert run.config.model.block.name == block  # read from the old norm_placement
    assert run.tokenizer.encode(expected["text"]) == expected["ids"][0]
    with torch.no_grad():
        logits = run.model(torch.tensor(expected["ids"]))
    torch.testing.assert_close(logits[0, -1], torch.tensor(expected["logits_last"]), rtol=0, atol=1e-6)
    assert logits.sum().item() == pytest.approx(expected["logits_sum"], abs=1e-3)
