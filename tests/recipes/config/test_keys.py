"""Dotted keys: get through tables, lists and objects; set as --set does; flatten to the leaves."""

import datetime
from types import SimpleNamespace

import pytest

from gptzoo.core import ConfigError
from gptzoo.recipes.config import keys
from gptzoo.recipes.config.reading import apply_overrides
from gptzoo.recipes.research.sweep.plan import with_overrides


def test_get_walks_tables_lists_and_attributes():
    data = {"model": {"layers": [SimpleNamespace(attention="sdpa")]}}
    assert keys.get(data, "model.layers.0.attention") == "sdpa"
    assert keys.get(data, "model.layers.1.attention") is keys.MISSING
    assert keys.get(data, "model.norm", None) is None


def test_set_replaces_a_component_spec_when_its_name_changes():
    data = {"model": {"positional": {"name": "rope", "base": 500.0}, "norm": "rmsnorm"}}
    keys.set(data, "model.positional.name", "alibi")
    keys.set(data, "model.norm.eps", 1e-6)  # a component written by name becomes a table
    keys.set(data, "train.lr", 3e-4)  # missing tables are made
    assert data == {
        "model": {"positional": {"name": "alibi"}, "norm": {"name": "rmsnorm", "eps": 1e-6}},
        "train": {"lr": 3e-4},
    }


def test_set_without_components_keeps_a_name_and_its_neighbours():
    # a Hugging Face config.json: "name" is a key like any other, and a string is a value
    data = {"attention": {"name": "sdpa", "window": 8}, "rope_parameters": {}}
    keys.set(data, "attention.name", "sliding_window", components=False)
    keys.set(data, "rope_parameters.rope_theta", 1e6, components=False)
    keys.set(data, "quantization_config.bits", 4, components=False)
    assert data == {
        "attention": {"name": "sliding_window", "window": 8},
        "rope_parameters": {"rope_theta": 1e6},
        "quantization_config": {"bits": 4},
    }
    with pytest.raises(ConfigError, match="key 'act.x': 'act' is a value, not a table"):
        keys.set({"act": "silu"}, "act.x", 1, components=False)


def test_set_through_a_value_names_the_key():
    with pytest.raises(ConfigError, match="key 'model.d_model.x': 'd_model' is a value, not a table"):
        keys.set({"model": {"d_model": 64}}, "model.d_model.x", 1)


def test_flatten_stops_at_lists_and_keeps_empty_tables_unless_told():
    table = {"train": {"lr": 0.1, "betas": [0.9, 0.95]}, "model": {"extra": {}}}
    assert keys.flatten(table) == {"train.lr": 0.1, "train.betas": [0.9, 0.95], "model.extra": {}}
    assert keys.flatten(table, keep_empty=False) == {"train.lr": 0.1, "train.betas": [0.9, 0.95]}


def test_sweep_overrides_as_values_give_what_the_same_set_strings_give():
    base = {"model": {"positional": {"name": "rope", "base": 500.0}}, "train": {"lr": 1e-3}}
    overrides = {
        "model.positional.base": 20.0,
        "model.positional.name": "sinusoidal",
        "model.feed_forward": [{"name": "gelu"}, {"name": "swiglu", "hidden": 384}],
        "train.lr": float("inf"),
        "train.note": 'a "quoted" word',
        "train.warmup": True,
        "train.date": datetime.date(2024, 1, 2),
    }
    as_text = apply_overrides(
        base,
        [
            "model.positional.name=sinusoidal",
            "model.positional.base=20.0",
            'model.feed_forward=[{ name = "gelu" }, { name = "swiglu", hidden = 384 }]',
            "train.lr=inf",
            'train.note="a \\"quoted\\" word"',
            "train.warmup=true",
            "train.date=2024-01-02",
        ],
    )
    assert with_overrides(base, overrides) == as_text
    assert base["model"]["positional"] == {"name": "rope", "base": 500.0}  # the base is left as it was


def test_variants_do_not_share_an_overridden_table():
    spec = {"name": "gelu"}
    first = with_overrides({}, {"model.feed_forward": spec})
    keys.set(first, "model.feed_forward.hidden", 64)
    assert spec == {"name": "gelu"}
