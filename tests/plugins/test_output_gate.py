"""The gated attention output (``output_gate``): against transformers' Qwen3NextAttention on a tiny
random layer, and the head-wise gate against its formula written out."""

import pytest
import torch

from gptzoo.core import AttentionContext, ComponentSpec, ConfigError, Dims
from gptzoo.testing import check_component, tiny_config

transformers = pytest.importorskip("transformers")

DIMS = Dims(
    vocab_size=50, context_length=64, d_model=48, n_heads=4, n_kv_heads=2, n_layers=1, head_dim=16, attn_out_bias=False
)
QWEN3_NEXT_NORM = {"qk_norm": "per_head", "qk_norm_unit_offset": True}


def attention(registry, name, dims=DIMS, **params):
    torch.manual_seed(0)
    return ComponentSpec.resolve("attention", {"name": name, **params}, registry).build(dims).eval()


def positional(registry, name, **params):
    return ComponentSpec.resolve("positional", {"name": name, **params}, registry).build(DIMS)


def context(pos, start, end):
    return AttentionContext(pos, torch.arange(start, end)[None], torch.arange(end)[None], offset=start)


def _qwen3_next(T):
    from transformers import Qwen3NextConfig
    from transformers.masking_utils import causal_mask_function, eager_mask
    from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextAttention, Qwen3NextRotaryEmbedding

    config = Qwen3NextConfig(
        hidden_size=48,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        partial_rotary_factor=0.25,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        attention_bias=False,
        num_hidden_layers=1,
        layer_types=["full_attention"],
    )
    config._attn_implementation = "eager"
    torch.manual_seed(1)
    hf = Qwen3NextAttention(config, layer_idx=0).eval()
    with torch.no_grad():
        for norm in (hf.q_norm, hf.k_norm):
            norm.weight.normal_(0.0, 0.2)  # not zeros, so a misplaced weight shows
    rotary = Qwen3NextRotaryEmbedding(config)
    mask = eager_mask(1, T, T, mask_function=causal_mask_function)

    def forward(x):
        return hf(x, position_embeddings=rotary(x, torch.arange(T)[None]), attention_mask=mask)[0]

    return hf, forward


@torch.no_grad()
def _load_qwen3_next(module, hf):
    """Qwen3-Next's q_proj holds each head's query rows followed by its gate rows."""
    query_and_gate = hf.q_proj.weight.view(DIMS.n_heads, 2, DIMS.head_size, DIMS.d_model)
    query, gate = query_and_gate[:, 0].reshape(-1, DIMS.d_model), query_and_gate[:, 1].reshape(-1, DIMS.d_model)
    module.qkv.weight.copy_(torch.cat([query, hf.k_proj.weight, hf.v_proj.weight]))
    module.gate_proj.weight.copy_(gate)
    module.out_proj.weight.copy_(hf.o_proj.weight)
    module.qk_norm.q_norm.copy_(hf.q_norm.weight)
    module.qk_norm.k_norm.copy_(hf.k_norm.weight)


@pytest.mark.parametrize("name", ["sdpa", "fused", "per_head", "sliding_window"])
@torch.no_grad()
def test_elementwise_gate_matches_transformers_qwen3_next_attention(registry, name):
    T = 12
    hf, hf_forward = _qwen3_next(T)
    module = attention(registry, "sdpa", output_gate="elementwise", **QWEN3_NEXT_NORM)
    _load_qwen3_next(module, hf)
    window = {"window": T} if name == "sliding_window" else {}  # a window of the whole text is full attention
    other = attention(registry, name, output_gate="elementwise", **QWEN3_NEXT_NORM, **window)
    other.load_state_dict(module.state_dict())  # through the shared state-dict layout
    x = torch.randn(2, T, 48)
    expected = hf_forward(x)
    rope = positional(registry, "rope", base=10000.0, fraction=0.25)
    torch.testing.assert_close(other(x, context(rope, 0, T)), expected, atol=1e-5, rtol=1e-4)
    # The same through the cache: a prefill of 5 tokens, then one at a time.
    cache = other.new_cache(2, T, x.device, x.dtype)
    steps = [other(x[:, s:e], context(rope, s, e), cache) for s, e in [(0, 5)] + [(t, t + 1) for t in range(5, T)]]
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["sdpa", "sliding_window"])
@torch.no_grad()
def test_per_head_gate_scales_each_heads_output_by_one_sigmoid(registry, name):
    T = 10
    window = {"window": 4} if name == "sliding_window" else {}
    module = attention(registry, name, output_gate="per_head", **window)
    assert module.gate_proj.weight.shape == (DIMS.n_heads, DIMS.d_model)
    with torch.no_grad():
        module.gate_proj.weight.normal_(0.0, 0.5)
    ungated = attention(registry, name, **window)
    ungated.load_state_dict({k: v for k, v in module.state_dict().items() if not k.startswith("gate_proj")})
    ungated.out_proj = torch.nn.Identity()
    x = torch.randn(2, T, 48)
    ctx = context(positional(registry, "none"), 0, T)
    heads = ungated(x, ctx).view(2, T, DIMS.n_heads, DIMS.head_size)
    gates = 1 / (1 + torch.exp(-(x @ module.gate_proj.weight.T)))  # (B, T, nh)
    expected = module.out_proj((heads * gates[..., None]).flatten(-2))
    torch.testing.assert_close(module(x, ctx), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["sdpa", "fused", "per_head"])
@pytest.mark.parametrize("gate", ["elementwise", "per_head"])
def test_the_kit_passes_gated_attention(registry, name, gate):
    check_component("attention", name, registry=registry, output_gate=gate)


def test_the_kit_passes_gated_sliding_window(registry):
    check_component("attention", "sliding_window", registry=registry, window=3, output_gate="elementwise")


def test_gate_costs_its_projection_and_is_validated_at_load(registry):
    plain, gated = attention(registry, "sdpa"), attention(registry, "sdpa", output_gate="elementwise")
    assert gated.flops_per_token(64) - plain.flops_per_token(64) == 2 * DIMS.d_model * DIMS.n_heads * DIMS.head_size
    with pytest.raises(ConfigError, match="output_gate.*'none', 'elementwise' or 'per_head'"):
        tiny_config(registry, attention={"name": "sdpa", "output_gate": "yes"})
