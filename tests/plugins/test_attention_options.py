"""Sliding-window attention, QK-norm, the score scale and soft-capping: against explicit loops,
the published formulas and transformers' Mistral, Qwen3, OLMo 2 and Gemma 2 attention on random weights."""

import math

import pytest
import torch

from gptzoo.core import AttentionContext, ComponentSpec, ConfigError, Dims
from gptzoo.recipes.training import costs
from gptzoo.testing import build, check_component, tiny_config

transformers = pytest.importorskip("transformers")

DIMS = Dims(
    vocab_size=50, context_length=64, d_model=48, n_heads=4, n_kv_heads=2, n_layers=1, head_dim=16, attn_out_bias=False
)


def attention(registry, name, dims=DIMS, **params):
    torch.manual_seed(0)
    return ComponentSpec.resolve("attention", {"name": name, **params}, registry).build(dims).eval()


def positional(registry, name, dims=DIMS, **params):
    return ComponentSpec.resolve("positional", {"name": name, **params}, registry).build(dims)


def context(pos, T, padded=False):
    positions = torch.arange(T)[None]
    return AttentionContext(pos, positions, positions, key_valid=torch.ones(1, T, dtype=torch.bool) if padded else None)


def loop_attention(q, k, v, window=None, scale=None, softcap=None):
    """q (nh, T, hs), k and v (nkv, T, hs): one query and one head at a time, keys t - window + 1 .. t."""
    nh, T, hs = q.shape
    out = torch.zeros(nh, T, v.size(-1), dtype=torch.float64)
    for h in range(nh):
        kv = h // (nh // k.size(0))
        for t in range(T):
            first = 0 if window is None else max(0, t - window + 1)
            scores = [float(q[h, t] @ k[kv, s]) * (scale or 1 / math.sqrt(hs)) for s in range(first, t + 1)]
            if softcap is not None:
                scores = [softcap * math.tanh(s / softcap) for s in scores]
            weights = torch.softmax(torch.tensor(scores, dtype=torch.float64), dim=0)
            out[h, t] = sum(w * v[kv, s].double() for w, s in zip(weights, range(first, t + 1), strict=True))
    return out


def split_heads(module, x):
    """The module's own q, k, v (B=1) before attention, to feed the loop."""
    q, k, v = module.project(x, context(positional_none, x.size(1)), None)
    return q[0], k[0], v[0]


positional_none = None


@pytest.fixture(autouse=True)
def _no_positions(registry):
    global positional_none
    positional_none = positional(registry, "none")


def outputs_before_projection(module, x, ctx, cache=None):
    """What attention computes before out_proj: run forward with out_proj as the identity."""
    saved = module.out_proj
    module.out_proj = torch.nn.Identity()
    try:
        return module(x, ctx, cache)
    finally:
        module.out_proj = saved


# ---- sliding window ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "T,window,padded",
    [
        (20, 4, False),
        (21, 7, False),
        (6, 8, False),
        (20, 4, True),
        (13, 1, False),
        (512, 64, False),
        (517, 8, False),
        (515, 64, True),
    ],
)
@torch.no_grad()
def test_sliding_window_matches_an_explicit_loop(registry, T, window, padded):
    # From 8 windows and 512 tokens on, unpadded: the blocked path (517 = 64 blocks of 8 and a
    # part); shorter, or padded (a mask anyway): the dense windowed mask.
    module = attention(registry, "sliding_window", window=window)
    x = torch.randn(1, T, DIMS.d_model)
    q, k, v = split_heads(module, x)
    expected = loop_attention(q, k, v, window=window)  # (nh, T, hs)
    calls = []
    module._blocks = lambda *args: calls.append(1) or type(module)._blocks(module, *args)
    got = outputs_before_projection(module, x, context(positional_none, T, padded))  # (1, T, nh·hs)
    torch.testing.assert_close(got[0].view(T, 4, 16).transpose(0, 1).double(), expected, atol=1e-5, rtol=1e-5)
    assert bool(calls) == (T >= 512 and not padded)


@torch.no_grad()
def test_sliding_window_decoding_past_the_window_equals_the_full_forward_with_a_cache_of_one_window(registry):
    window = 5
    model = build(
        tiny_config(
            registry, attention={"name": "sliding_window", "window": window}, positional="rope", context_length=48
        )
    )
    idx = torch.randint(0, 50, (2, 48))
    expected = model(idx)
    cache = model.new_cache(2)
    steps = [model(idx[:, :3], cache=cache)] + [model(idx[:, t : t + 1], cache=cache) for t in range(3, 48)]
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, atol=1e-5, rtol=1e-5)
    held = sum(layer.k.numel() + layer.v.numel() for layer in cache.layers)
    assert held == 2 * 2 * 2 * 2 * 8 * window  # batch × layers × (k, v) × kv heads × head size × a window of tokens
    assert costs.kv_cache_bytes(model, 48) == costs.kv_cache_bytes(model, window) == held * 4 // 2  # fp32, one sequence


@torch.no_grad()
def test_sliding_window_with_a_window_past_the_context_is_sdpa(registry):
    window = tiny_config(registry, attention={"name": "sliding_window", "window": 64}, context_length=16)
    reference = build(tiny_config(registry, attention="sdpa", context_length=16))
    model = build(window, seed=1)
    model.load_state_dict(reference.state_dict())
    idx = torch.randint(0, 50, (2, 16))
    torch.testing.assert_close(model(idx), reference(idx))


def test_sliding_window_flops_count_the_window(registry):
    window, full = attention(registry, "sliding_window", window=8), attention(registry, "sdpa")
    assert full.flops_per_token(64) - window.flops_per_token(64) == 4 * 4 * 16 * (64 - 8)


def _mistral(window, T):
    from transformers import MistralConfig
    from transformers.masking_utils import eager_mask, sliding_window_causal_mask_function
    from transformers.models.mistral.modeling_mistral import MistralAttention, MistralRotaryEmbedding

    config = MistralConfig(
        hidden_size=48,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=window,
        rope_theta=10000.0,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(1)
    module = MistralAttention(config, layer_idx=0).eval()
    rotary = MistralRotaryEmbedding(config)
    mask = eager_mask(1, T, T, mask_function=sliding_window_causal_mask_function(window))
    return module, rotary, mask


def _load_hf(module, hf):
    module.qkv.weight.copy_(torch.cat([hf.q_proj.weight, hf.k_proj.weight, hf.v_proj.weight]))
    module.out_proj.weight.copy_(hf.o_proj.weight)


def _hf_forward(hf, rotary, x, mask):
    position_embeddings = rotary(x, torch.arange(x.size(1))[None])
    return hf(x, position_embeddings=position_embeddings, attention_mask=mask)[0]


@torch.no_grad()
def test_sliding_window_matches_transformers_mistral_attention(registry):
    T, window = 24, 6
    hf, rotary, mask = _mistral(window, T)
    module = attention(registry, "sliding_window", window=window)
    _load_hf(module, hf)
    x = torch.randn(2, T, 48)
    expected = _hf_forward(hf, rotary, x, mask)
    rope = positional(registry, "rope", base=10000.0)
    torch.testing.assert_close(module(x, context(rope, T)), expected, atol=1e-5, rtol=1e-4)
    # The same through the ring cache, token by token after a 2-token prefill.
    cache = module.new_cache(2, T, x.device, x.dtype)
    steps = []
    for start, end in [(0, 2)] + [(t, t + 1) for t in range(2, T)]:
        positions, keys = torch.arange(start, end)[None], torch.arange(end)[None]
        steps.append(module(x[:, start:end], AttentionContext(rope, positions, keys, offset=start), cache))
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, atol=1e-5, rtol=1e-4)


def test_the_kit_passes_sliding_window_with_options(registry):
    check_component("attention", "sliding_window", registry=registry, window=3, qk_norm="per_head", softcap=3.0)


# ---- QK-norm, score scale, soft-capping ------------------------------------------------------


@pytest.mark.parametrize("name", ["sdpa", "fused", "per_head"])
@pytest.mark.parametrize(
    "options", [{"qk_norm": "per_head"}, {"qk_norm": "across_heads", "scale": 0.3, "softcap": 2.0}]
)
def test_the_kit_passes_each_variant_with_options(registry, name, options):
    check_component("attention", name, registry=registry, **options)


@pytest.mark.parametrize("name", ["sdpa", "fused", "per_head", "sliding_window"])
@torch.no_grad()
def test_softcap_and_scale_follow_the_formula(registry, name):
    T = 10
    module = attention(registry, name, scale=0.7, softcap=1.5, **({"window": 4} if name == "sliding_window" else {}))
    x = torch.randn(1, T, DIMS.d_model)
    fused = attention(registry, "fused")
    fused.load_state_dict(module.state_dict())
    q, k, v = split_heads(fused, x)
    expected = loop_attention(q, k, v, window=4 if name == "sliding_window" else None, scale=0.7, softcap=1.5)
    got = outputs_before_projection(module, x, context(positional_none, T))
    torch.testing.assert_close(got[0].view(T, 4, 16).transpose(0, 1).double(), expected, atol=1e-5, rtol=1e-5)


def test_qk_norm_is_validated_at_load(registry):
    with pytest.raises(ConfigError, match="qk_norm.*'none', 'per_head' or 'across_heads'"):
        tiny_config(registry, attention={"name": "sdpa", "qk_norm": "yes"})
    with pytest.raises(ConfigError, match="softcap.*greater than 0"):
        tiny_config(registry, attention={"name": "sdpa", "softcap": 0})


def _qwen3_or_olmo2(family):
    if family == "qwen3":
        from transformers import Qwen3Config as Config
        from transformers.models.qwen3.modeling_qwen3 import (
            Qwen3Attention as HFAttention,
        )
        from transformers.models.qwen3.modeling_qwen3 import (
            Qwen3RotaryEmbedding as Rotary,
        )
    else:
        from transformers import Olmo2Config as Config
        from transformers.models.olmo2.modeling_olmo2 import (
            Olmo2Attention as HFAttention,
        )
        from transformers.models.olmo2.modeling_olmo2 import (
            Olmo2RotaryEmbedding as Rotary,
        )
    config = Config(
        hidden_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6, rope_theta=10000.0
    )
    config.head_dim = 16
    config._attn_implementation = "eager"
    torch.manual_seed(1)
    hf = HFAttention(config, layer_idx=0).eval()
    for norm in (hf.q_norm, hf.k_norm):
        norm.weight.normal_(1.0, 0.2)  # not ones, so a misplaced weight shows
    return hf, Rotary(config)


@pytest.mark.parametrize("family,qk_norm", [("qwen3", "per_head"), ("olmo2", "across_heads")])
@pytest.mark.parametrize("name", ["sdpa", "per_head"])
@torch.no_grad()
def test_qk_norm_matches_transformers(registry, family, qk_norm, name):
    from transformers.masking_utils import causal_mask_function, eager_mask

    T = 12
    hf, rotary = _qwen3_or_olmo2(family)
    module = attention(registry, "sdpa", qk_norm=qk_norm)
    _load_hf(module, hf)
    module.qk_norm.q_norm.copy_(hf.q_norm.weight)
    module.qk_norm.k_norm.copy_(hf.k_norm.weight)
    if name != "sdpa":  # through the shared state-dict layout
        other = attention(registry, name, qk_norm=qk_norm)
        other.load_state_dict(module.state_dict())
        module = other
    x = torch.randn(2, T, 48)
    expected = _hf_forward(hf, rotary, x, eager_mask(1, T, T, mask_function=causal_mask_function))
    rope = positional(registry, "rope", base=10000.0)
    torch.testing.assert_close(module(x, context(rope, T)), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("sliding", [False, True])
@torch.no_grad()
def test_softcap_scale_and_window_match_transformers_gemma2_attention(registry, sliding):
    from transformers import Gemma2Config
    from transformers.masking_utils import causal_mask_function, eager_mask, sliding_window_causal_mask_function
    from transformers.models.gemma2.modeling_gemma2 import Gemma2Attention, Gemma2RotaryEmbedding

    T, window = 16, 5
    config = Gemma2Config(
        hidden_size=48,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=24,
        attn_logit_softcapping=2.0,
        sliding_window=window,
        rope_theta=10000.0,
        layer_types=["sliding_attention" if sliding else "full_attention"],
        num_hidden_layers=1,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(1)
    hf = Gemma2Attention(config, layer_idx=0).eval()
    mask_function = sliding_window_causal_mask_function(window) if sliding else causal_mask_function
    x = torch.randn(2, T, 48) * 3  # scores large enough for the cap to bite
    expected = _hf_forward(hf, Gemma2RotaryEmbedding(config), x, eager_mask(1, T, T, mask_function=mask_function))
    params = {"scale": 24**-0.5, "softcap": 2.0} | ({"window": window} if sliding else {})
    module = attention(registry, "sliding_window" if sliding else "sdpa", **params)
    _load_hf(module, hf)
    rope = positional(registry, "rope", base=10000.0)
    torch.testing.assert_close(module(x, context(rope, T)), expected, atol=1e-5, rtol=1e-4)
