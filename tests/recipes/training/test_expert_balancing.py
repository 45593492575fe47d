"""Auxiliary-loss-free balancing in training: the routing bias moves after every optimizer step, on
the load of every process, and the load's imbalance is logged in metrics.jsonl."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gptzoo.recipes.config.schema import load_run_config, validate_run_config
from gptzoo.recipes.runs.folder import load_run
from gptzoo.recipes.training.distributed import TIMEOUT_ENV
from gptzoo.recipes.training.loop import train

RATE = 0.01


def test_training_moves_the_bias_by_the_rate_each_step_and_logs_the_imbalance(registry, tmp_path, shared_data):
    moe = {"name": "moe", "n_experts": 4, "top_k": 2, "expert_bias": True, "bias_update_rate": RATE}
    data = {
        "model": {
            "context_length": 16,
            "d_model": 32,
            "n_layers": 2,
            "n_heads": 4,
            "tokenizer": "char",
            "layer_pattern": ["dense", "moe"],
            "layer_kinds": {"dense": {}, "moe": {"feed_forward": moe | {"balance_loss_weight": 0.0}}},
        },
        "data": {"source": str(shared_data("the-verdict.txt")), "cache_dir": str(tmp_path / "cache")},
        "train": {
            "max_steps": 4,
            "batch_size": 4,
            "grad_accum": 2,
            "eval_interval": 2,
            "eval_batches": 2,
            "sample_tokens": 0,
        },
    }
    train(validate_run_config(data, "test", registry), tmp_path / "run", registry=registry, progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    # max load / mean load - 1: 0 when balanced, at most E / k - 1 = 1 when two experts take every token.
    assert all(0.0 <= r["aux_moe_imbalance"] <= 1.0 for r in records)

    bias = load_run(tmp_path / "run", registry).model.blocks[1].feed_forward.expert_bias
    # Four steps of ±RATE or 0 each: a whole number of RATEs, at most 4, and not all zero.
    steps = bias / RATE
    torch.testing.assert_close(steps, steps.round(), atol=1e-4, rtol=0)
    assert steps.abs().max() <= 4 + 1e-4 and steps.abs().sum() > 0
    # Each step moves the overloaded experts down and the underloaded ones up, about the mean.
    assert steps.min() < 0 < steps.max()


@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="this torch has no gloo backend",
)
def test_two_processes_move_the_bias_on_the_load_of_both(tmp_path):
    # One process on 8 windows a step, and two on 4 each: the same tokens, so the same load only if
    # the processes add their counts before the update.
    words = np.random.default_rng(0).choice(["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far"], 4000)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(words), encoding="utf-8")
    config = tmp_path / "moe.toml"
    config.write_text(
        f"""
[model]
context_length = 16
d_model = 32
n_layers = 2
n_heads = 2
tokenizer = {{ name = "byte" }}
layer_pattern = ["dense", "moe"]

[model.layer_kinds.dense]

[model.layer_kinds.moe]
feed_forward = {{ name = "moe", n_experts = 4, top_k = 2, expert_bias = true, bias_update_rate = {RATE}, balance_loss_weight = 0.0 }}

[data]
source = "{corpus.as_posix()}"
cache_dir = "{(tmp_path / "cache").as_posix()}"

[train]
max_steps = 5
batch_size = 4
grad_accum = 2
eval_interval = 5
eval_batches = 1
sample_tokens = 0
device = "cpu"
""",
        encoding="utf-8",
    )
    train(load_run_config(config), tmp_path / "one", progress=False, log=lambda text: None)
    command = [sys.executable, "-m", "gptzoo.recipes", "train", str(config), "--out", str(tmp_path / "two")]
    env = os.environ | {"OMP_NUM_THREADS": "1", TIMEOUT_ENV: "60"}
    result = subprocess.run(
        [*command, "--set", "train.batch_size=2", "--nproc", "2"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    one, two = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("one", "two"))
    bias = "blocks.1.feed_forward.expert_bias"
    assert one[bias].abs().sum() > 0
    torch.testing.assert_close(two[bias], one[bias], rtol=0, atol=1e-7)
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=1e-5, msg=name)
