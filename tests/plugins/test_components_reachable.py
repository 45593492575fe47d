"""Every component of issue 24 is reachable from ``--set`` and sweeps as an ablation axis, validated
at load: each row turns a component on over configs/tiny.toml with --set overrides, then a sweep with
the same overrides as its [set] table varies one of its params. (MTP and hyper-connections have their
own such tests in test_mtp.py and test_hyper_connections.py.)"""

from pathlib import Path

import pytest

from gptzoo.core import GPT
from gptzoo.recipes.config.schema import load_run_config
from gptzoo.recipes.research.sweep.plan import load_sweep

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.toml"
MOE = {"model.feed_forward.name": "moe", "model.feed_forward.n_experts": 4, "model.feed_forward.top_k": 2}
ROPE = {"model.positional.name": "rope"}
SHARED = {"model.kv_shared_layers": 1}
BLOCK = {"model.block.name": "pre_norm"}

# (component, --set overrides that turn it on, the axis, its two values)
CASES = [
    ("attention sinks", {"model.attention.sinks": True}, "model.attention.sinks", [False, True]),
    ("chunked attention", {"model.attention.name": "chunked"}, "model.attention.chunk_size", [4, 8]),
    (
        "NoPE query temperature",
        {"model.attention.query_temperature_scale": 0.1},
        "model.attention.query_temperature_floor_scale",
        [2.0, 8.0],
    ),
    (
        "weightless QK-norm",
        {"model.attention.qk_norm": "per_head"},
        "model.attention.qk_norm_weight",
        [True, False],
    ),
    ("value norm", {}, "model.attention.v_norm", [False, True]),
    ("keys equal values", {"model.attention.v_norm": True}, "model.attention.shared_key_value", [False, True]),
    ("value head size", {}, "model.attention.v_head_size", [16, 24]),
    (
        "head size per layer kind",
        {
            "model.layer_pattern": ["local", "global"],
            "model.layer_kinds.local.head_dim": 32,
            "model.layer_kinds.global.n_kv_heads": 2,
            **ROPE,
        },
        "model.layer_kinds.global.head_dim",
        [32, 64],
    ),
    ("cross-layer KV sharing", {}, "model.kv_shared_layers", [0, 1]),
    (
        "DeepSeek Sparse Attention",
        {"model.attention.name": "sparse_latent", "model.attention.index_head_dim": 32, **ROPE},
        "model.attention.index_topk",
        [8, 16],
    ),
    (
        "gpt-oss experts and router",
        {**MOE, "model.feed_forward.router_bias": True, "model.feed_forward.expert_biases": True},
        "model.feed_forward.activation",
        ["swiglu", "clamped_swiglu"],
    ),
    (
        "sigmoid-gated shared expert",
        {**MOE, "model.feed_forward.n_shared_experts": 1},
        "model.feed_forward.shared_expert_gate",
        [False, True],
    ),
    (
        "Llama 4 routing",
        {**MOE, "model.feed_forward.scoring": "sigmoid", "model.feed_forward.top_k": 1},
        "model.feed_forward.weights_at",
        ["output", "input"],
    ),
    (
        "aux-loss-free balancing",
        {**MOE, "model.feed_forward.expert_bias": True},
        "model.feed_forward.bias_update_rate",
        [0.0, 0.001],
    ),
    ("squared ReLU and xIELU", {}, "model.feed_forward.name", ["squared_relu", "xielu"]),
    ("logit scaling", {}, "model.head.logit_scale", [1.0, 0.0625]),
    ("per-layer embeddings", BLOCK, "model.block.per_layer_input", [4, 8]),
    ("Gemma 4 layer scalar", BLOCK, "model.block.layer_scalar", [False, True]),
    (
        "Gemma 4 double-wide MLP",
        {"model.feed_forward.name": "swiglu", **SHARED},
        "model.feed_forward.double_wide_kv_shared",
        [False, True],
    ),
]


def _read(config, path: str):
    """The value at a dotted --set path, through a component spec's params and a dict's keys."""
    value = config
    for part in path.split("."):
        if isinstance(value, dict):
            value = value[part]
        elif hasattr(value, part):
            value = getattr(value, part)
        else:
            value = getattr(value.params, part)
    return value


def _toml(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml, value)) + "]"
    return str(value)


@pytest.mark.parametrize("component, overrides, axis, values", CASES, ids=[c[0] for c in CASES])
def test_set_reaches_the_component_and_an_axis_sweeps_it(component, overrides, axis, values, tmp_path):
    overrides = {"model.vocab_size": 512, **overrides}  # the tokenizer's, known before it is trained
    sets = [f"{path}={_toml(value)}" for path, value in overrides.items()]
    config = load_run_config(TINY, [*sets, f"{axis}={_toml(values[1])}"])
    assert _read(config, axis) == values[1]
    for path, value in overrides.items():
        assert _read(config, path) == value
    GPT(config.model)  # the assembled model builds

    sweep = tmp_path / "sweep.toml"
    table = "\n".join(f'"{path}" = {_toml(value)}' for path, value in overrides.items())
    axis_values = ", ".join(map(_toml, values))
    sweep.write_text(f'base = "{TINY}"\nseeds = [0]\n[set]\n{table}\n[axes]\n"{axis}" = [{axis_values}]\n')
    assert set(values) <= {_read(v.config, axis) for v in load_sweep(sweep).variants}
