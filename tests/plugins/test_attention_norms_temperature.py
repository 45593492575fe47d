"""Llama 4's query temperature on NoPE layers, the weightless QK-norm (Llama 4's L2 norm, nanochat's
RMSNorm) and the value norm without a weight (Gemma 3n, Gemma 4): against transformers' own modules
built tiny, whole and through the cache; the kit, compile and validation with each option on."""

import pytest
import torch

from gptzoo.core import GPT, AttentionContext, ComponentSpec, ConfigError, Dims
from gptzoo.recipes.training import costs
from gptzoo.testing import check_component, tiny_config

transformers = pytest.importorskip("transformers")

DIMS = Dims(vocab_size=50, context_length=64, d_model=48, n_heads=4, n_kv_heads=2, n_layers=1, head_dim=16)
PIECES = [(0, 3), (3, 4), (4, 9), (9, 10), (10, 14)]


def attention(registry, name, **params):
    torch.manual_seed(0)
    return ComponentSpec.resolve("attention", {"name": name, **params}, registry).build(DIMS).eval()


def context(registry, start, end):
    none = ComponentSpec.resolve("positional", "none", registry).build(DIMS)
    return AttentionContext(none, torch.arange(start, end)[None], torch.arange(end)[None], offset=start)


@torch.no_grad()
def _load(module, hf):
    module.qkv.weight.copy_(torch.cat([hf.q_proj.weight, hf.k_proj.weight, hf.v_proj.weight]))
    module.out_proj.weight.copy_(hf.o_proj.weight)
    module.out_proj.bias.zero_()


def _whole_and_cached(registry, module, hf_forward, T=14):
    x = torch.randn(2, T, 48)
    expected = hf_forward(x)
    torch.testing.assert_close(module(x, context(registry, 0, T)), expected, atol=1e-5, rtol=1e-4)
    cache = module.new_cache(2, T, x.device, x.dtype)
    steps = [module(x[:, s:e], context(registry, s, e), cache) for s, e in PIECES]
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, atol=1e-5, rtol=1e-4)


def _llama4(T, use_rope):
    from transformers import Llama4TextConfig
    from transformers.masking_utils import causal_mask_function, eager_mask
    from transformers.models.llama4.modeling_llama4 import Llama4TextAttention

    config = Llama4TextConfig(
        hidden_size=48,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_hidden_layers=1,
        use_qk_norm=True,
        no_rope_layers=[int(use_rope)],
        attn_temperature_tuning=True,
        floor_scale=3,  # the temperature steps up every 3 positions, so a short text sees several
        attn_scale=0.4,
        rms_norm_eps=1e-5,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(1)
    hf = Llama4TextAttention(config, layer_idx=0).eval()
    mask = eager_mask(1, T, T, mask_function=causal_mask_function)
    identity = torch.ones(1, T, 8, dtype=torch.complex64)

    def forward(x):
        # transformers counts positions from the cache's length; a whole forward starts at 0
        return hf(x, position_embeddings=identity, attention_mask=mask)[0]

    return hf, forward


@pytest.mark.parametrize("name", ["sdpa", "fused", "per_head"])
@torch.no_grad()
def test_query_temperature_matches_llama4_nope_layer(registry, name):
    hf, hf_forward = _llama4(14, use_rope=False)  # NoPE: temperature on, no QK-norm
    sdpa = attention(registry, "sdpa", query_temperature_floor_scale=3, query_temperature_scale=0.4)
    _load(sdpa, hf)
    module = attention(registry, name, query_temperature_floor_scale=3, query_temperature_scale=0.4)
    module.load_state_dict(sdpa.state_dict())
    _whole_and_cached(registry, module, hf_forward)


@pytest.mark.parametrize("name", ["sdpa", "per_head", "chunked"])
@torch.no_grad()
def test_weightless_qk_norm_matches_llama4_l2_norm(registry, name):
    hf, hf_forward = _llama4(14, use_rope=True)  # RoPE layer: its L2 norm, no temperature
    options = {"qk_norm": "per_head", "qk_norm_weight": False, "qk_norm_eps": 1e-5}
    sdpa = attention(registry, "sdpa", **options)
    assert not list(sdpa.qk_norm.parameters())
    _load(sdpa, hf)
    module = attention(registry, name, **options, **({"chunk_size": 14} if name == "chunked" else {}))
    module.load_state_dict(sdpa.state_dict())
    _whole_and_cached(registry, module, hf_forward)


@torch.no_grad()
def test_weightless_qk_norm_matches_nanochat_attention_with_rotary(registry):
    from transformers import NanoChatConfig
    from transformers.masking_utils import causal_mask_function, eager_mask
    from transformers.models.nanochat.modeling_nanochat import NanoChatAttention, NanoChatRotaryEmbedding

    config = NanoChatConfig(
        hidden_size=48, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=1, rms_norm_eps=1e-6
    )
    config._attn_implementation = "eager"
    torch.manual_seed(1)
    hf = NanoChatAttention(config, layer_idx=0).eval()
    T = 10
    rotary = NanoChatRotaryEmbedding(config)
    mask = eager_mask(1, T, T, mask_function=causal_mask_function)
    dims = Dims(vocab_size=50, context_length=64, d_model=48, n_heads=4, n_kv_heads=4, n_layers=1, attn_out_bias=False)
    torch.manual_seed(0)
    spec = {"name": "sdpa", "qk_norm": "per_head", "qk_norm_weight": False}
    module = ComponentSpec.resolve("attention", spec, registry).build(dims).eval()
    module.qkv.weight.copy_(torch.cat([hf.q_proj.weight, hf.k_proj.weight, hf.v_proj.weight]))
    module.out_proj.weight.copy_(hf.o_proj.weight)
    # nanochat normalises after its rotary, gptzoo before: the same for a weightless norm of each head, since a
    # rotation keeps the RMS. Its rotary is handed in as the position scheme's rotate, so only the norm is compared
    x = torch.randn(2, T, 48)
    cos, sin = rotary(x, torch.arange(T)[None])
    expected = hf(x, position_embeddings=(cos, sin), attention_mask=mask)[0]

    class NanochatRotary(torch.nn.Module):
        def rotate(self, q, k, positions):
            c, s = cos[:, None, positions[0]], sin[:, None, positions[0]]
            return tuple(_nanochat_rotate(t, c, s) for t in (q, k))

        def score_bias(self, q_positions, k_positions):
            return None

    ctx = AttentionContext(NanochatRotary(), torch.arange(T)[None], torch.arange(T)[None])
    torch.testing.assert_close(module(x, ctx), expected, atol=1e-5, rtol=1e-4)


def _nanochat_rotate(x, cos, sin):
    from transformers.models.nanochat.modeling_nanochat import apply_rotary_pos_emb

    return apply_rotary_pos_emb(x, x, cos[:, 0], sin[:, 0])[0]


@pytest.mark.parametrize("name", ["sdpa", "per_head", "sliding_window"])
@torch.no_grad()
def test_value_norm_is_gemma3n_rmsnorm_without_scale_on_each_heads_values(registry, name):
    from transformers.models.gemma3n.modeling_gemma3n import Gemma3nRMSNorm

    window = {"window": 5} if name == "sliding_window" else {}
    plain = attention(registry, "sdpa")
    with torch.no_grad():
        plain.qkv.weight.mul_(5.0)  # values far from unit RMS, so a missing norm shows
    module = attention(registry, name, v_norm=True, **window)
    module.load_state_dict(plain.state_dict())
    x = torch.randn(2, 9, 48)
    norm = Gemma3nRMSNorm(16, eps=1e-6, with_scale=False)
    values = plain.qkv(x)[..., 96:].view(2, 9, 2, 16)  # (B, T, nkv, hs): the value heads
    normed = norm(values)
    # the output is linear in the values: attend with the normed values through plain sdpa's projection
    reference = attention(registry, "sdpa")
    reference.load_state_dict(plain.state_dict())
    ctx = context(registry, 0, 9)
    q, k, _ = reference.project(x, ctx, None)
    bias = ctx.bias(q.dtype, window=window.get("window"))
    expected = reference.merge(reference.explicit(q, k, normed.transpose(1, 2), bias, ctx))
    torch.testing.assert_close(module(x, ctx), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["sdpa", "fused", "per_head", "chunked"])
def test_the_kit_passes_each_option(registry, name):
    chunk = {"chunk_size": 5} if name == "chunked" else {}
    check_component(
        "attention",
        name,
        registry=registry,
        qk_norm="per_head",
        qk_norm_weight=False,
        v_norm=True,
        query_temperature_floor_scale=2.0,
        **chunk,
    )


def test_the_kit_passes_sliding_window_with_the_options(registry):
    check_component(
        "attention", "sliding_window", registry=registry, window=3, qk_norm="across_heads", qk_norm_weight=False
    )
    check_component("attention", "sliding_window", registry=registry, window=3, v_norm=True)
    check_component("attention", "sliding_window", registry=registry, window=3, query_temperature_floor_scale=2.0)


def test_options_compile_with_fullgraph_cost_nothing_and_are_validated(registry):
    options = {"qk_norm": "per_head", "qk_norm_weight": False, "v_norm": True, "query_temperature_floor_scale": 2.0}
    torch.manual_seed(0)
    model = GPT(tiny_config(registry, n_layers=1, attention={"name": "sdpa", **options})).eval()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    idx = torch.randint(0, 50, (2, 10))
    torch.testing.assert_close(compiled(idx), model(idx))
    torch._dynamo.reset()
    plain = GPT(tiny_config(registry, n_layers=1)).eval()
    assert costs.param_counts(model) == costs.param_counts(plain)  # no weights added
    assert costs.flops_per_token(model) == costs.flops_per_token(plain)  # elementwise work, uncounted as for every norm
    assert costs.kv_cache_bytes(model) == costs.kv_cache_bytes(plain)
    with pytest.raises(ConfigError, match="qk_norm_unit_offset.*qk_norm_weight"):
        tiny_config(
            registry,
            attention={"name": "sdpa", "qk_norm": "per_head", "qk_norm_weight": False, "qk_norm_unit_offset": True},
        )
