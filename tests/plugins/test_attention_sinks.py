"""Attention sinks (``sinks``): against transformers' GptOssAttention built tiny with nonzero sinks,
whole and through the cache, full and windowed; SDPA's exact form against the explicit softmax; the
kit and torch.compile with sinks on."""

import pytest
import torch

from gptzoo.core import GPT, AttentionContext, ComponentSpec, Dims, Recorder
from gptzoo.plugins.attention import attention_weights, sdpa_with_sinks
from gptzoo.recipes.training import costs
from gptzoo.testing import check_component, tiny_config

transformers = pytest.importorskip("transformers")

DIMS = Dims(
    vocab_size=50, context_length=64, d_model=48, n_heads=4, n_kv_heads=2, n_layers=1, head_dim=16, qkv_bias=True
)


def attention(registry, name, **params):
    torch.manual_seed(0)
    return ComponentSpec.resolve("attention", {"name": name, **params}, registry).build(DIMS).eval()


def context(registry, start, end):
    none = ComponentSpec.resolve("positional", "none", registry).build(DIMS)
    return AttentionContext(none, torch.arange(start, end)[None], torch.arange(end)[None], offset=start)


def _gpt_oss(T, window=None):
    """GptOssAttention with random weights and sinks, its rotary made the identity (rotation is tested elsewhere)."""
    from transformers import GptOssConfig
    from transformers.masking_utils import causal_mask_function, eager_mask, sliding_window_causal_mask_function
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssAttention

    config = GptOssConfig(
        hidden_size=48,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        attention_bias=True,
        num_hidden_layers=1,
        sliding_window=window or 128,
        layer_types=["sliding_attention" if window else "full_attention"],
    )
    config._attn_implementation = "eager"
    torch.manual_seed(1)
    hf = GptOssAttention(config, layer_idx=0).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.3)
        hf.sinks.copy_(torch.tensor([-1.0, 0.5, 2.0, 0.0]))  # some heads mostly attend to nothing
    mask_function = sliding_window_causal_mask_function(window) if window else causal_mask_function
    mask = eager_mask(1, T, T, mask_function=mask_function)
    identity = (torch.ones(1, T, 8), torch.zeros(1, T, 8))  # gpt-oss rotates the two halves by cos, sin of hs/2
    return hf, lambda x: hf(x, position_embeddings=identity, attention_mask=mask)[0]


@torch.no_grad()
def _load_gpt_oss(module, hf):
    module.qkv.weight.copy_(torch.cat([hf.q_proj.weight, hf.k_proj.weight, hf.v_proj.weight]))
    module.qkv.bias.copy_(torch.cat([hf.q_proj.bias, hf.k_proj.bias, hf.v_proj.bias]))
    module.out_proj.weight.copy_(hf.o_proj.weight)
    module.out_proj.bias.copy_(hf.o_proj.bias)
    module.sinks.copy_(hf.sinks)


@pytest.mark.parametrize("name", ["sdpa", "fused", "per_head", "sliding_window"])
@torch.no_grad()
def test_sinks_match_transformers_gpt_oss_attention_whole_and_cached(registry, name):
    T = 12
    window = 4 if name == "sliding_window" else None
    hf, hf_forward = _gpt_oss(T, window)
    sdpa = attention(registry, "sdpa", sinks=True)
    _load_gpt_oss(sdpa, hf)
    module = attention(registry, name, sinks=True, **({"window": window} if window else {}))
    module.load_state_dict(sdpa.state_dict())  # through the shared state-dict layout
    x = torch.randn(2, T, 48)
    expected = hf_forward(x)
    torch.testing.assert_close(module(x, context(registry, 0, T)), expected, atol=1e-5, rtol=1e-4)
    cache = module.new_cache(2, T, x.device, x.dtype)
    pieces = [(0, 5), (5, 6), (6, 9), (9, 10), (10, 12)]
    steps = [module(x[:, s:e], context(registry, s, e), cache) for s, e in pieces]
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("is_causal", [True, False])
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_sdpa_with_sinks_is_the_explicit_softmax_values_and_gradients(is_causal, n_kv_heads):
    torch.manual_seed(0)
    # a leading (B, blocks) pair, as the sliding window's blocks call it
    q = torch.randn(2, 3, 4, 6, 8, requires_grad=True)
    k, v = torch.randn(2, 3, n_kv_heads, 6, 8, requires_grad=True), torch.randn(2, 3, n_kv_heads, 6, 8)
    sinks = torch.tensor([-2.0, 0.0, 1.0, 3.0], requires_grad=True)
    causal = torch.full((6, 6), float("-inf")).triu(1)
    bias = None if is_causal else causal + torch.randn(3, 4, 6, 6)  # a score bias per block and head
    got = sdpa_with_sinks(q, k, v, bias, sinks, 0.3, 0.0, is_causal, n_kv_heads != 4)
    groups = 4 // n_kv_heads
    weights = attention_weights(
        q, k.repeat_interleave(groups, -3), causal if is_causal else bias, 0.3, None, sinks
    )  # (..., 4, 6, 6)
    assert (weights.sum(-1) < 1).all()  # the sinks take a share of every row
    expected = weights @ v.repeat_interleave(groups, -3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    grads = torch.autograd.grad(got.square().sum(), (q, k, sinks))
    expected_grads = torch.autograd.grad(expected.square().sum(), (q, k, sinks))
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_sliding_window_blocks_with_sinks_equal_the_windowed_mask(registry):
    module = attention(registry, "sliding_window", sinks=True, window=4)
    module.sinks.copy_(torch.tensor([-1.0, 0.5, 2.0, 0.0]))
    q, k, v = torch.randn(2, 4, 19, 16), torch.randn(2, 2, 19, 16), torch.randn(2, 2, 19, 16)
    ctx = context(registry, 0, 19)
    expected = module.explicit(q, k, v, ctx.bias(q.dtype, window=4), ctx)
    torch.testing.assert_close(module._blocks(q, k, v, ctx), expected, atol=1e-5, rtol=1e-4)


def test_inspection_follows_the_sinks_param_and_rows_sum_below_one(registry):
    for name in ("sdpa", "fused", "per_head", "sliding_window"):
        impl = registry.resolve("attention", name)
        assert impl.declared_inspection(impl.Params()) == "probabilities"
        assert impl.declared_inspection(impl.Params(sinks=True)) == "partial_probabilities"
    model = GPT(tiny_config(registry, attention={"name": "sdpa", "sinks": True})).eval()
    recorder = Recorder()
    with torch.no_grad():
        model(torch.randint(0, 50, (2, 16)), recorder=recorder)
    assert recorder.offers == ["partial_probabilities"] * 2
    # sinks start at logit 0: each row's keys share what is left after exp(0) in the denominator
    rows = recorder.attentions[0].sum(-1)  # (B, nh, T)
    assert ((rows > 0) & (rows < 1)).all()


@pytest.mark.parametrize("name", ["sdpa", "fused", "per_head"])
def test_the_kit_passes_attention_with_sinks(registry, name):
    check_component("attention", name, registry=registry, sinks=True)


def test_the_kit_passes_sliding_window_with_sinks(registry):
    check_component("attention", "sliding_window", registry=registry, window=3, sinks=True)


def test_sinks_compile_with_fullgraph_and_count_their_parameters(registry):
    torch.manual_seed(0)
    model = GPT(tiny_config(registry, n_layers=1, attention={"name": "sdpa", "sinks": True})).eval()
    with torch.no_grad():
        model.blocks[0].attention.sinks.normal_()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    idx = torch.randint(0, 50, (2, 10))
    torch.testing.assert_close(compiled(idx), model(idx))
    torch._dynamo.reset()
    plain = GPT(tiny_config(registry, n_layers=1)).eval()
    assert costs.param_counts(model)["attention"] - costs.param_counts(plain)["attention"] == 4  # one logit per head
    assert costs.kv_cache_bytes(model) == costs.kv_cache_bytes(plain)  # a sink has no key or value to cache
    assert costs.flops_per_token(model) == costs.flops_per_token(
        plain
    )  # one add per head and query, uncounted as norms are
