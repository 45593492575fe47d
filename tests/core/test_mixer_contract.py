"""The token-mixer contract: declared position hooks, layers without a sublayer, residual scales,
and decoding past the context with bounded bookkeeping."""

import pytest
import torch

from gptzoo.core import GPT, AttentionContext, ConfigError
from gptzoo.recipes.training import costs
from gptzoo.registry import make_registry

REGISTRY = make_registry(entry_points=False)
TINY = {"vocab_size": 50, "context_length": 16, "d_model": 32, "n_layers": 2, "n_heads": 4}


def model(**fields) -> GPT:
    torch.manual_seed(0)
    return GPT(REGISTRY.model_config({**TINY, **fields})).eval()


def test_a_scheme_acting_through_a_hook_the_mixer_never_calls_is_refused_naming_both():
    with pytest.raises(
        ConfigError, match=r"layer 0: positional 'alibi' acts through score_bias, which attention 'none'"
    ):
        model(attention="none", positional="alibi")


def test_a_layer_kind_may_drop_positions_for_its_mixer():
    config = REGISTRY.model_config(
        {
            **TINY,
            "positional": "rope",
            "layer_kinds": {"mix": {}, "feed": {"attention": "none", "positional": "none"}},
            "layer_pattern": ["mix", "feed"],
        }
    )
    assert [layer.attention.name for layer in config.layers()] == ["sdpa", "none"]


def test_a_layer_without_a_mixer_is_its_feed_forward_on_the_residual_stream():
    m = model(attention="none", n_layers=1, positional="none")
    block = m.blocks[0]
    assert block.attn_norm is None and not any("attn" in name for name, _ in block.named_parameters())
    x = torch.randn(2, 5, 32)
    expected = x + block.feed_forward(block.ffn_norm(x))  # pre-norm, by hand
    torch.testing.assert_close(block(x, None), expected)


def test_a_layer_without_a_feed_forward_holds_only_its_mixer():
    m = model(feed_forward="none", n_layers=1)
    assert m.blocks[0].ffn_norm is None and costs.param_counts(m)["feed_forward"] == 0


@pytest.mark.parametrize(
    "block", ["pre_norm", "post_norm", "normed_residual", "sublayer_output_norm", "sandwich", "parallel"]
)
def test_branch_and_stream_scales_follow_the_formula(block):
    alpha, beta = 0.5, 0.25
    plain = model(block=block, n_layers=1, positional="none")
    scaled = model(block={"name": block, "stream_scale": alpha, "branch_scale": beta}, n_layers=1, positional="none")
    scaled.load_state_dict(plain.state_dict())
    b, s = plain.blocks[0], scaled.blocks[0]
    x = torch.randn(2, 5, 32)
    positions = torch.arange(5)[None]
    ctx = AttentionContext(plain.positional, positions, positions)
    attn = lambda h: b.attention(h, ctx)  # noqa: E731
    if block == "pre_norm":
        h = alpha * x + beta * attn(b.attn_norm(x))
        expected = alpha * h + beta * b.feed_forward(b.ffn_norm(h))
    elif block == "post_norm":
        h = b.attn_norm(alpha * x + beta * attn(x))
        expected = b.ffn_norm(alpha * h + beta * b.feed_forward(h))
    elif block == "normed_residual":
        n = b.attn_norm(x)
        h = alpha * n + beta * attn(n)
        n = b.ffn_norm(h)
        expected = alpha * n + beta * b.feed_forward(n)
    elif block == "sublayer_output_norm":
        h = alpha * x + beta * b.attn_norm(attn(x))
        expected = alpha * h + beta * b.ffn_norm(b.feed_forward(h))
    elif block == "sandwich":
        h = alpha * x + beta * b.attn_out_norm(attn(b.attn_norm(x)))
        expected = alpha * h + beta * b.ffn_out_norm(b.feed_forward(b.ffn_norm(h)))
    else:
        expected = alpha * x + beta * (attn(b.attn_norm(x)) + b.feed_forward(b.ffn_norm(x)))
    torch.testing.assert_close(s(x, ctx), expected)


def test_a_windowed_model_decodes_past_its_context_with_flat_bookkeeping():
    m = model(attention={"name": "sliding_window", "window": 4}, positional="rope")
    assert m.extension_refusal() is None
    cache = m.new_cache(1)
    assert cache.max_len is None
    idx = torch.randint(0, 50, (1, 3 * TINY["context_length"]))
    with torch.no_grad():
        steps = [m(idx[:, t : t + 1], cache=cache) for t in range(idx.size(1))]
        torch.testing.assert_close(torch.cat(steps, 1), m(idx))
    assert cache.positions.shape == (1, 4) and cache.length == idx.size(1)


def test_a_model_that_cannot_extend_says_which_layer_and_why():
    assert "every layer's token mixer keeps every key and value" in model(positional="rope").extension_refusal()
    windowed = model(attention={"name": "sliding_window", "window": 4}, positional="learned")
    assert "LearnedPositions cannot run past the context" in windowed.extension_refusal()
    assert windowed.new_cache(1).max_len == TINY["context_length"]


def test_a_hybrid_decodes_past_its_context_its_softmax_layers_growing_alone():
    m = model(
        positional="rope",
        layer_kinds={"local": {"attention": {"name": "sliding_window", "window": 4}}, "global": {}},
        layer_pattern=["local", "global"],
    )
    assert m.extension_refusal() is None and not m.bounded_cache()
    assert m.new_cache(1).max_len == TINY["context_length"]  # a length is needed for the growing layer
    n = 3 * TINY["context_length"]
    cache = m.new_cache(1, n)
    idx = torch.randint(0, 50, (1, n))
    with torch.no_grad():
        steps = [m(idx[:, t : t + 1], cache=cache) for t in range(n)]
        torch.testing.assert_close(torch.cat(steps, 1), m(idx))
    window_bytes, kv_bytes = (2 * cache.layers[i].k.numel() * 4 for i in (0, 1))  # keys and values, float32
    assert (window_bytes, kv_bytes) == (2 * 4 * 4 * 8 * 4, 2 * 4 * n * 8 * 4)  # 4 heads of 8: window 4, every token


def test_a_composite_holding_a_state_decodes_past_the_context():
    # sdpa beside a short convolution in every layer (Falcon-H1's shape): cropping would drop the convolution's window.
    m = model(
        positional="rope", attention={"name": "parallel_mixers", "mixers": [{"name": "sdpa"}, {"name": "short_conv"}]}
    )
    assert m.extension_refusal() is None and not m.bounded_cache()


def test_layers_without_a_mixer_hold_no_state_to_keep():
    m = model(
        positional="rope",
        layer_kinds={"a": {}, "f": {"attention": "none", "positional": "none"}},
        layer_pattern=["a", "f"],
    )
    assert "keeps every key and value" in m.extension_refusal()
