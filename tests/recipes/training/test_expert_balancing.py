"""Auxiliary-loss-free balancing in training: the routing bias moves after every optimizer step and
the load's imbalance is logged in metrics.jsonl."""

import json

import torch

from gptzoo.recipes.config.schema import validate_run_config
from gptzoo.recipes.runs.folder import load_run
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
