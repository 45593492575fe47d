"""Per-layer kinds and patterns: expanded by hand, validated at load, visible in describe."""

import json

import pytest
import torch

from gptzoo.core import ConfigError
from gptzoo.recipes.config.reading import apply_overrides
from gptzoo.recipes.training import costs
from gptzoo.testing import build, tiny_config

GEMMA3_LIKE = {  # five local layers with RoPE base 10,000, then one global layer with base 1,000,000
    "n_layers": 8,
    "positional": {"name": "rope", "base": 10000.0},
    "layer_kinds": {"local": {}, "global": {"positional": {"name": "rope", "base": 1e6}}},
    "layer_pattern": ["local"] * 5 + ["global"],
}


def test_a_repeating_pattern_expands_layer_by_layer(registry):
    config = tiny_config(registry, **GEMMA3_LIKE)
    kinds = [layer.kind for layer in config.layers()]
    assert kinds == ["local", "local", "local", "local", "local", "global", "local", "local"]  # i % 6, cut at 8 layers
    bases = [layer.positional.params.base for layer in config.layers()]
    assert bases == [1e4] * 5 + [1e6] + [1e4] * 2


@torch.no_grad()
def test_each_layer_attends_with_its_kinds_positions(registry):
    model = build(tiny_config(registry, **GEMMA3_LIKE))
    assert list(model.kind_positionals) == ["global"]  # one module for the kind that differs, none per layer
    seen = []
    for block in model.blocks:
        block.attention.register_forward_pre_hook(lambda m, args: seen.append(args[1].positional.params.base))
    model(torch.zeros(1, 4, dtype=torch.long))
    assert seen == [1e4] * 5 + [1e6] + [1e4] * 2


def test_feed_forward_every_second_layer(registry):
    config = tiny_config(
        registry,
        n_layers=4,
        layer_kinds={"dense": {}, "wide": {"feed_forward": {"name": "swiglu", "hidden": 96}}},
        layer_pattern=["dense", "wide"],
    )
    model = build(config)
    assert [type(b.feed_forward).__name__ for b in model.blocks] == ["GELUFeedForward", "SwiGLUFeedForward"] * 2
    gelu = 32 * 128 + 128 + 128 * 32 + 32  # 4 × d_model with biases
    swiglu = 3 * 32 * 96  # gate, up, down without biases
    assert costs.param_counts(model)["feed_forward"] == 2 * gelu + 2 * swiglu


def test_no_positions_on_global_layers_and_an_explicit_list(registry):
    config = tiny_config(
        registry,
        n_layers=3,
        positional="rope",
        layer_kinds={"local": {}, "global": {"positional": "none"}},
        layer_pattern=["local", "global", "local"],
    )
    assert [layer.positional.name for layer in config.layers()] == ["rope", "none", "rope"]
    assert [layer.kind for layer in config.layers()] == ["local", "global", "local"]


@pytest.mark.parametrize(
    "fields, message",
    [
        (
            {"layer_kinds": {"local": {}}, "layer_pattern": ["local", "globl"]},
            "layer_pattern names 'globl', not in layer_kinds (declared: local)",
        ),
        ({"layer_kinds": {"a": {}}, "layer_pattern": ["a", "a", "a"]}, "layer_pattern has 3 entries for n_layers=2"),
        (
            {"layer_kinds": {"a": {"positional": "learned"}}, "layer_pattern": ["a"]},
            "'learned' is added to the input embeddings",
        ),
        (
            {"layer_kinds": {"a": {"attention": {"name": "sdpa", "window": 4}}}, "layer_pattern": ["a"]},
            "layer_kinds.a.attention",
        ),
        (
            {"layer_kinds": {"a": {"feed_forward": "geglu_typo"}}, "layer_pattern": ["a"]},
            "unknown feed_forward 'geglu_typo'",
        ),
        (
            {"layer_kinds": {"a": {"tokenizer": "byte"}}, "layer_pattern": ["a"]},
            "layer_kinds.a.tokenizer: unknown field",
        ),
    ],
)
def test_schedule_errors_name_the_field(registry, fields, message):
    with pytest.raises(ConfigError) as err:
        tiny_config(registry, n_kv_heads=4, **fields)
    assert message in str(err.value)


def test_a_kind_outside_the_pattern_is_still_checked(registry):
    with pytest.raises(ConfigError, match="layer_kinds.odd.positional 'rope'"):
        tiny_config(registry, head_dim=7, n_kv_heads=4, layer_kinds={"odd": {"positional": "rope"}})


def test_pattern_and_kinds_are_settable_from_the_command_line(registry):
    data = {
        "model": {
            "vocab_size": 50,
            "context_length": 16,
            "d_model": 32,
            "n_layers": 4,
            "n_heads": 4,
            "positional": "rope",
        }
    }
    data = apply_overrides(
        data,
        [
            'model.layer_pattern=["local", "global"]',
            "model.layer_kinds.local={}",
            "model.layer_kinds.global.positional.name=rope",
            "model.layer_kinds.global.positional.base=1e6",
        ],
    )
    config = registry.model_config(data["model"])
    assert [layer.positional.params.base for layer in config.layers()] == [1e4, 1e6, 1e4, 1e6]


def test_head_dim_apart_from_d_model(registry):
    # Qwen3-0.6B's attention: d_model 1024, 16 query heads and 8 key/value heads of 128, no biases.
    config = registry.model_config(
        {
            "vocab_size": 10,
            "context_length": 8,
            "d_model": 1024,
            "n_layers": 1,
            "n_heads": 16,
            "n_kv_heads": 8,
            "head_dim": 128,
            "attn_out_bias": False,
            "positional": "rope",
            "norm": "rmsnorm",
            "feed_forward": "swiglu",
        }
    )
    with torch.device("meta"):
        from gptzoo.core import GPT

        model = GPT(config)
    assert costs.param_counts(model)["attention"] == 1024 * (16 + 2 * 8) * 128 + 16 * 128 * 1024
    assert model.blocks[0].attention.out_proj.bias is None
    assert costs.kv_cache_bytes(model, 1) == 2 * 8 * 128 * 4


@torch.no_grad()
def test_head_dim_model_runs_and_caches(registry):
    from gptzoo.testing import check_kv_cache, check_padded_batch

    model = build(tiny_config(registry, head_dim=12, positional="rope", attn_out_bias=False))
    assert model.blocks[0].attention.qkv.weight.shape == ((4 + 2 * 2) * 12, 32)
    check_kv_cache(model)
    check_padded_batch(model)


def test_describe_prints_each_layer(tmp_path, capsys):
    from gptzoo.recipes.cli import main

    config = tmp_path / "gemma3-like.toml"
    config.write_text("""
[model]
vocab_size = 50
context_length = 16
d_model = 32
n_layers = 7
n_heads = 4
positional = { name = "rope" }
layer_pattern = ["local", "local", "local", "local", "local", "global"]
[model.layer_kinds.local]
[model.layer_kinds.global]
positional = { name = "rope", base = 1000000.0 }
""")
    assert main(["describe", str(config), "--json"]) == 0
    layers = json.loads(capsys.readouterr().out)["layers"]
    assert [(r["layer"], r["kind"], r["positional"]) for r in layers] == [
        (i, "global" if i == 5 else "local", "rope(base=1000000.0)" if i == 5 else "rope") for i in range(7)
    ]
    assert main(["describe", str(config)]) == 0
    out = capsys.readouterr().out
    assert "global  rope(base=1000000.0)" in out and out.count("  local  ") == 6


GEMMA4_LIKE = {  # local layers: 2 key/value heads of 8; global layers wider: 1 key/value head of 16
    "n_layers": 3,
    "head_dim": 8,
    "n_kv_heads": 2,
    "attn_out_bias": False,
    "positional": "rope",
    "layer_kinds": {"local": {}, "global": {"head_dim": 16, "n_kv_heads": 1}},
    "layer_pattern": ["local", "global", "local"],
}


def test_a_kind_sets_its_own_head_size_and_key_value_heads(registry):
    config = tiny_config(registry, **GEMMA4_LIKE)
    assert [(config.dims(i).head_size, config.dims(i).n_kv_heads) for i in range(3)] == [(8, 2), (16, 1), (8, 2)]
    assert (config.dims().head_size, config.dims().n_kv_heads) == (8, 2)  # the model-level ones
    model = build(config)
    assert model.blocks[1].attention.qkv.weight.shape == ((4 + 2 * 1) * 16, 32)
    assert model.blocks[1].attention.out_proj.weight.shape == (32, 4 * 16)
    local, wide = 32 * (4 + 2 * 2) * 8 + 4 * 8 * 32, 32 * (4 + 2 * 1) * 16 + 4 * 16 * 32
    assert costs.param_counts(model)["attention"] == 2 * local + wide
    assert costs.kv_cache_bytes(model, 10) == 4 * 10 * (2 * (2 * 2 * 8) + 2 * 1 * 16)  # float32, keys and values
    # The global layers rotate their 16-wide heads with a position module built for them.
    assert list(model.kind_positionals) == ["global"]
    assert model.kind_positionals["global"].rotary_dim == 16 and model.positional.rotary_dim == 8


@torch.no_grad()
def test_kinds_with_their_own_head_sizes_cache_and_pad(registry):
    from gptzoo.testing import check_kv_cache, check_padded_batch

    model = build(tiny_config(registry, **GEMMA4_LIKE))
    check_kv_cache(model)
    check_padded_batch(model)


@pytest.mark.parametrize(
    "kind, message",
    [
        ({"n_kv_heads": 3}, "layer_kinds.global.n_kv_heads=3: n_heads=4 must be divisible by it"),
        ({"head_dim": 7}, "layer 1 (global): positional 'rope': rotary needs an even number"),
        ({"head_dim": 0}, "layer_kinds.global.head_dim"),
    ],
)
def test_a_kinds_head_shape_is_checked_at_load(registry, kind, message):
    fields = {**GEMMA4_LIKE, "layer_kinds": {"local": {}, "global": kind}}
    with pytest.raises(ConfigError) as err:
        tiny_config(registry, **fields)
    assert message in str(err.value)


def test_a_kinds_head_size_is_settable_from_the_command_line(registry):
    data = {"model": {**tiny_config(registry, **GEMMA4_LIKE).model_dump(mode="json")}}
    data = apply_overrides(data, ["model.layer_kinds.global.head_dim=32"])
    assert registry.model_config(data["model"]).dims(1).head_size == 32
