"""Compute-matched budgets (train.max_flops) and parameter matching in sweeps, against formulas."""

from pathlib import Path

import pytest

from gptzoo.core import ConfigError
from gptzoo.recipes.config.schema import validate_run_config
from gptzoo.recipes.research.sweep import load_sweep
from gptzoo.recipes.research.sweep.match import parameter_count
from gptzoo.recipes.training.loop import train

V, D, T = 12, 16, 16  # the task's 10 ids + eot + unk; d_model; context


def training_flops_per_token(n_layers):
    """3 × forward; forward = 2 per weight of every matrix multiply + 4·d·T for scores and values (the PaLM convention)."""
    qkv_out, mlp = 4 * D * D, 2 * 4 * D * D
    return 3 * (n_layers * (2 * (qkv_out + mlp) + 4 * D * T) + 2 * V * D)


def task_config(registry, n_layers, **train_fields):
    return validate_run_config(
        {
            "model": {"context_length": T, "d_model": D, "n_layers": n_layers, "n_heads": 2},
            "data": {"task": {"name": "induction", "vocab_size": 10, "val_examples": 8}},
            "train": {
                "batch_size": 2,
                "eval_interval": 1000,
                "eval_batches": 1,
                "sample_tokens": 0,
                "device": "cpu",
                **train_fields,
            },
        },
        "t",
        registry,
    )


def test_a_flops_budget_buys_fewer_tokens_for_a_larger_model(tmp_path, registry):
    tokens_per_step = 2 * T
    budget = 5.5 * training_flops_per_token(1) * tokens_per_step  # 5.5 steps of the 1-layer model
    one = train(task_config(registry, 1, max_flops=budget), tmp_path / "one", progress=False, log=lambda m: None)
    two = train(task_config(registry, 2, max_flops=budget), tmp_path / "two", progress=False, log=lambda m: None)
    assert (one.steps, one.tokens) == (5, 5 * tokens_per_step)  # whole steps within the budget
    expected = int(budget // (training_flops_per_token(2) * tokens_per_step))
    assert expected < 5 and (two.steps, two.tokens) == (expected, expected * tokens_per_step)


def test_one_budget_at_a_time(registry):
    with pytest.raises(
        ConfigError, match="give one of max_steps, epochs, max_tokens, max_flops; got max_steps, max_flops"
    ):
        task_config(registry, 1, max_steps=3, max_flops=1e9)


def mlp_params(d, hidden, gated):
    """A block's feed-forward: GELU/ReLU up and down with biases; SwiGLU gate, up and down without."""
    return 3 * d * hidden if gated else 2 * d * hidden + hidden + d


def test_parameter_matching_sizes_the_feed_forward_to_the_base(tmp_path, registry):
    base = tmp_path / "base.toml"
    base.write_text(
        '[model]\ncontext_length = 16\nd_model = 64\nn_layers = 2\nn_heads = 4\nfeed_forward = { name = "gelu" }\n'
        '[data]\ntask = { name = "induction", vocab_size = 10 }\n[train]\nmax_steps = 2\n'
    )
    sweep_file = tmp_path / "sweep.toml"
    sweep_file.write_text(
        'base = "base.toml"\n[match_params]\nby = "model.feed_forward.hidden"\ntolerance = 0.01\n'
        '[axes]\n"model.feed_forward.name" = ["gelu", "swiglu"]\n'
    )
    sweep = load_sweep(sweep_file, registry)
    gelu, swiglu = sweep.variants
    target = parameter_count(gelu.config, 12)
    assert gelu.matched["value"] == 256 and gelu.matched["params"] == target  # 4 × d_model: the base itself
    # Same everything but the MLPs: 2 layers × (3·64·h) should equal 2 layers × (2·64·256 + 256 + 64) -> h = 171.5
    exact = mlp_params(64, 256, gated=False) / (3 * 64)
    assert swiglu.matched["value"] in (int(exact), int(exact) + 1)
    assert swiglu.config.model.feed_forward.params.hidden == swiglu.matched["value"]
    assert abs(swiglu.matched["params"] - target) <= 2 * 3 * 64 // 2  # within half a step of the width, both layers
    assert abs(swiglu.matched["error"]) <= 0.01

    sweep_file.write_text(sweep_file.read_text().replace("tolerance = 0.01", "multiple_of = 128\ntolerance = 0.001"))
    with pytest.raises(
        ConfigError,
        match=r"match_params for variant 'feed_forward=swiglu': the nearest model.feed_forward.hidden = 128 gives",
    ):
        load_sweep(sweep_file, registry)


def test_parameter_matching_with_sizes_matches_each_size_to_its_own_base(tmp_path, registry):
    base = tmp_path / "base.toml"
    base.write_text(
        '[model]\ncontext_length = 16\nd_model = 32\nn_layers = 1\nn_heads = 4\nfeed_forward = { name = "gelu" }\n'
        '[data]\ntask = { name = "induction", vocab_size = 10 }\n[train]\nmax_steps = 2\n'
    )
    sweep_file = tmp_path / "sweep.toml"
    sweep_file.write_text(
        'base = "base.toml"\n[match_params]\nby = "model.feed_forward.hidden"\ntolerance = 0.01\n'
        '[sizes]\ns = { "model.d_model" = 32 }\nm = { "model.d_model" = 64, "model.n_layers" = 2 }\n'
        '[axes]\n"model.feed_forward.name" = ["gelu", "swiglu"]\n'
    )
    variants = {v.label: v for v in load_sweep(sweep_file, registry).variants}
    for size, d in (("s", 32), ("m", 64)):
        gelu, swiglu = variants[f"size={size}, feed_forward=gelu"], variants[f"size={size}, feed_forward=swiglu"]
        assert (
            gelu.matched["value"] == 4 * d and gelu.matched["params"] == gelu.matched["target"]
        )  # each size's base is itself
        exact = mlp_params(d, 4 * d, gated=False) / (3 * d)  # SwiGLU's width with that size's GELU's MLP parameters
        assert swiglu.matched["target"] == gelu.matched["params"]
        assert swiglu.matched["value"] in (int(exact), int(exact) + 1)


def test_peak_memory_is_each_runs_own(tmp_path):
    import numpy as np
    import torch

    from gptzoo.recipes.training.devices import peak_memory_bytes, reset_peak_memory

    clear_refs = Path("/proc/self/clear_refs")
    if not clear_refs.exists():
        pytest.skip("resetting the peak resident memory needs Linux's /proc/self/clear_refs")
    cpu = torch.device("cpu")
    reset_peak_memory(cpu)
    block = np.ones(200 * 2**20, dtype=np.uint8)  # 200 MiB, touched
    after_block = peak_memory_bytes(cpu)
    del block
    reset_peak_memory(cpu)  # the next run starts here
    assert peak_memory_bytes(cpu) < after_block - 150 * 2**20
