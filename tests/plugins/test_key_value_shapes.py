"""Keys equal values (``shared_key_value``: Gemma 4's global layers) and a value head size of its own
(``v_head_size``: MiMo-V2-Flash), against transformers' Gemma4TextAttention and MiMoV2FlashAttention
built tiny, whole and through the cache; the kit, compile, and the parameters, FLOPs and cache bytes."""

import pytest
import torch

from gptzoo.core import GPT, AttentionContext, ComponentSpec, ConfigError, Dims
from gptzoo.recipes.training import costs
from gptzoo.testing import check_component, tiny_config

transformers = pytest.importorskip("transformers")

PIECES = [(0, 5), (5, 6), (6, 9), (9, 10), (10, 12)]


def attention(registry, name, dims, **params):
    torch.manual_seed(0)
    return ComponentSpec.resolve("attention", {"name": name, **params}, registry).build(dims).eval()


def context(registry, dims, start, end):
    none = ComponentSpec.resolve("positional", "none", registry).build(dims)
    return AttentionContext(none, torch.arange(start, end)[None], torch.arange(end)[None], offset=start)


def _whole_and_cached(registry, dims, module, hf_forward, T=12):
    x = torch.randn(2, T, 48)
    expected = hf_forward(x)
    torch.testing.assert_close(module(x, context(registry, dims, 0, T)), expected, atol=1e-5, rtol=1e-4)
    cache = module.new_cache(2, T, x.device, x.dtype)
    steps = [module(x[:, s:e], context(registry, dims, s, e), cache) for s, e in PIECES]
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, atol=1e-5, rtol=1e-4)


GEMMA4_DIMS = Dims(
    vocab_size=50, context_length=64, d_model=48, n_heads=4, n_kv_heads=2, n_layers=1, head_dim=16, attn_out_bias=False
)
GEMMA4_GLOBAL = {
    "shared_key_value": True,
    "v_norm": True,
    "qk_norm": "per_head",
    "scale": 1.0,  # Gemma 4 scales q·k by 1: its QK-norm sets the scores' size
}


@pytest.mark.parametrize("name", ["sdpa", "fused", "chunked"])
@torch.no_grad()
def test_shared_key_value_matches_gemma4_global_attention(registry, name):
    from transformers import Gemma4TextConfig
    from transformers.masking_utils import causal_mask_function, eager_mask
    from transformers.models.gemma4.modeling_gemma4 import Gemma4TextAttention

    config = Gemma4TextConfig(
        hidden_size=48,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        global_head_dim=16,
        num_global_key_value_heads=2,
        num_hidden_layers=1,
        layer_types=["full_attention"],
        attention_k_eq_v=True,
        vocab_size=50,
        intermediate_size=64,
        num_kv_shared_layers=0,
        rms_norm_eps=1e-6,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(1)
    hf = Gemma4TextAttention(config, layer_idx=0).eval()
    assert hf.v_proj is None  # the keys' projection gives the values
    for norm in (hf.q_norm, hf.k_norm):
        norm.weight.normal_(1.0, 0.3)
    T = 12
    mask = eager_mask(1, T, T, mask_function=causal_mask_function)
    identity = (torch.ones(1, T, 16), torch.zeros(1, T, 16))

    def hf_forward(x):
        return hf(x, position_embeddings=identity, attention_mask=mask, shared_kv_states={})[0]

    chunk = {"chunk_size": T} if name == "chunked" else {}
    module = attention(registry, name, GEMMA4_DIMS, **GEMMA4_GLOBAL, **chunk)
    assert module.qkv.weight.shape == ((4 + 2) * 16, 48)  # query heads, key heads: no value rows
    module.qkv.weight.copy_(torch.cat([hf.q_proj.weight, hf.k_proj.weight]))
    module.out_proj.weight.copy_(hf.o_proj.weight)
    module.qk_norm.q_norm.copy_(hf.q_norm.weight)
    module.qk_norm.k_norm.copy_(hf.k_norm.weight)
    _whole_and_cached(registry, GEMMA4_DIMS, module, hf_forward, T)


MIMO_DIMS = Dims(
    vocab_size=50, context_length=64, d_model=48, n_heads=4, n_kv_heads=2, n_layers=1, head_dim=16, attn_out_bias=False
)


@pytest.mark.parametrize("value_scale", [None, 0.707])  # attention_value_scale: none, and MiMo-V2-Flash's
@pytest.mark.parametrize("layer", ["full_attention", "sliding_attention"])
@torch.no_grad()
def test_value_head_size_matches_mimo_v2_flash_attention(registry, layer, value_scale):
    from transformers import MiMoV2FlashConfig
    from transformers.masking_utils import causal_mask_function, eager_mask, sliding_window_causal_mask_function
    from transformers.models.mimo_v2_flash.modeling_mimo_v2_flash import MiMoV2FlashAttention

    window = 4
    config = MiMoV2FlashConfig(
        hidden_size=48,
        num_attention_heads=4,
        num_key_value_heads=1,  # its sliding layers double it
        head_dim=16,
        v_head_dim=8,
        num_hidden_layers=1,
        layer_types=[layer],
        sliding_window=window,
        attention_value_scale=value_scale,
        attention_bias=False,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(1)
    hf = MiMoV2FlashAttention(config, layer_idx=0).eval()
    sliding = layer == "sliding_attention"
    for p in hf.parameters():
        p.normal_(0.0, 0.3)
    T = 12
    mask_function = sliding_window_causal_mask_function(window) if sliding else causal_mask_function
    mask = eager_mask(1, T, T, mask_function=mask_function)
    identity = (torch.ones(1, T, 16), torch.zeros(1, T, 16))

    def hf_forward(x):
        return hf(x, position_embeddings=identity, attention_mask=mask)[0]

    dims = Dims(**{**MIMO_DIMS.__dict__, "n_kv_heads": 2 if sliding else 1})
    params = {"v_head_size": 8, "value_scale": value_scale or 1.0} | (
        {"sinks": True, "window": window} if sliding else {}
    )
    module = attention(registry, "sliding_window" if sliding else "sdpa", dims, **params)
    module.qkv.weight.copy_(torch.cat([hf.q_proj.weight, hf.k_proj.weight, hf.v_proj.weight]))
    module.out_proj.weight.copy_(hf.o_proj.weight)
    if sliding:
        module.sinks.copy_(hf.sinks)
    assert module.out_proj.weight.shape == (48, 4 * 8)
    _whole_and_cached(registry, dims, module, hf_forward, T)


@pytest.mark.parametrize("name", ["sdpa", "fused", "sliding_window", "chunked"])
def test_the_kit_passes_each_option(registry, name):
    extra = {"window": 3} if name == "sliding_window" else {"chunk_size": 4} if name == "chunked" else {}
    check_component("attention", name, registry=registry, v_head_size=12, sinks=True, **extra)
    check_component("attention", name, registry=registry, shared_key_value=True, v_norm=True, **extra)


def test_counts_compile_and_validation(registry):
    base = {"name": "sdpa"}
    plain = GPT(tiny_config(registry, n_layers=1, attention=base)).eval()
    shared = GPT(tiny_config(registry, n_layers=1, attention={**base, "shared_key_value": True})).eval()
    wide = GPT(tiny_config(registry, n_layers=1, attention={**base, "v_head_size": 12})).eval()
    C, nh, nkv, hs = 32, 4, 2, 8  # tiny_config's dims
    # no value projection: nkv·hs rows of C weights fewer (tiny_config's qkv has no bias)
    assert costs.param_counts(plain)["attention"] - costs.param_counts(shared)["attention"] == nkv * hs * C
    assert costs.kv_cache_bytes(shared, 10) == costs.kv_cache_bytes(plain, 10)  # keys and values are still both cached
    # values 12 wide: nkv·(12 − 8) more value rows, out_proj reads nh·(12 − 8) more columns
    extra = nkv * 4 * C + nh * 4 * C
    assert costs.param_counts(wide)["attention"] - costs.param_counts(plain)["attention"] == extra
    assert costs.kv_cache_bytes(wide, 10) == 10 * nkv * (hs + 12) * 4  # fp32 keys and values
    # per token at context 16: 2 FLOPs per weight, and the weighted sum over 16 values is 4 features wider per head
    added = 2 * (nkv * 4 * C + nh * 4 * C) + 2 * nh * 4 * 16
    assert costs.flops_per_token(wide, 16)["attention"] - costs.flops_per_token(plain, 16)["attention"] == added
    torch.manual_seed(0)
    compiled = torch.compile(wide, backend="aot_eager", fullgraph=True)
    idx = torch.randint(0, 50, (2, 10))
    torch.testing.assert_close(compiled(idx), wide(idx))
    torch._dynamo.reset()
    with pytest.raises(ConfigError, match="shared_key_value.*v_head_size"):
        tiny_config(registry, attention={**base, "shared_key_value": True, "v_head_size": 4})
    with pytest.raises(ConfigError, match="per_head.*shared_key_value"):
        tiny_config(registry, attention={"name": "per_head", "v_head_size": 4})
