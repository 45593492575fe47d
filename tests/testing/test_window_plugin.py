"""A third-party sliding-window attention with its own cache passes the conformance kit, and the
kit catches variants that break what they declare."""

import importlib.util
from pathlib import Path

import pytest
import torch

from gptzoo.core import GPT
from gptzoo.recipes.training import costs
from gptzoo.registry import make_registry
from gptzoo.testing import build, check_component, check_receptive_field, tiny_config

PLUGIN = Path(__file__).resolve().parents[2] / "examples" / "plugins" / "window_attention.py"


def load_plugin():
    spec = importlib.util.spec_from_file_location("window_attention", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def window_registry():
    registry = make_registry(entry_points=False)
    registry.register_plugin(load_plugin(), name="window_attention", distribution="zoo-window", version="0.1")
    return registry


@pytest.mark.parametrize("window", [3, 12])
def test_window_attention_passes_the_kit(window_registry, window):
    check_component("attention", "window", registry=window_registry, window=window)


def test_the_kit_tests_past_the_window(window_registry, monkeypatch):
    lengths = []
    original = GPT.__init__

    def record(self, config):
        lengths.append(config.context_length)
        original(self, config)

    monkeypatch.setattr(GPT, "__init__", record)
    check_component("attention", "window", registry=window_registry, window=12)
    assert min(lengths) > 2 * 12  # every model the kit built holds more than two windows


def test_a_variant_that_sees_beyond_its_declared_window_fails(window_registry):
    plugin = load_plugin()

    class Leaky(plugin.WindowAttention):  # declares a window, attends to everything
        def forward(self, x, ctx, cache=None):
            B, T, _ = x.shape
            q, k, v = self.qkv(x).split(self.sizes, dim=-1)
            q, k, v = (t.view(B, T, -1, self.dims.head_size).transpose(1, 2) for t in (q, k, v))
            y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            return self.out_proj(y.transpose(1, 2).reshape(B, T, -1))

    window_registry.add("attention", "leaky", Leaky)
    with pytest.raises(AssertionError, match="receptive field 4: tokens before position"):
        check_receptive_field(window_registry, {"name": "leaky", "window": 4}, 4)


def test_a_variant_declaring_an_equivalence_it_lacks_fails(window_registry):
    plugin = load_plugin()
    window_registry.add(
        "attention", "claims_sdpa", type("ClaimsSdpa", (plugin.WindowAttention,), {"equivalent_to": "sdpa"})
    )
    with pytest.raises(AssertionError, match="attention 'claims_sdpa' with sdpa's weights"):
        check_component("attention", "claims_sdpa", registry=window_registry, window=2)


@torch.no_grad()
def test_decoding_memory_stays_at_the_window(window_registry):
    window = 4
    model = build(tiny_config(window_registry, attention={"name": "window", "window": window}, context_length=64))
    cache = model.new_cache(1)
    for t in range(4 * window * 4):
        model(torch.tensor([[t % 50]]), cache=cache)
        held = sum(layer.k.numel() + layer.v.numel() for layer in cache.layers)
        assert held == 2 * 2 * 2 * 8 * (window - 1)  # layers × (k, v) × kv heads × head size × kept tokens
    per_layer = 2 * 2 * 8 * (window - 1) * 4  # fp32 bytes
    assert costs.kv_cache_bytes(model, 64) == 2 * per_layer
