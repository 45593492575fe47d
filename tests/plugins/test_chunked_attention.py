"""Chunked attention (``chunked``): against transformers' Llama4TextAttention under its chunked mask,
whole and through the cache; chunk isolation in a model; the kit, the bounded cache and compile."""

import pytest
import torch

from gptzoo.core import GPT, AttentionContext, ComponentSpec, Dims
from gptzoo.recipes.cli.describe import layer_cache
from gptzoo.recipes.training import costs
from gptzoo.testing import check_component, tiny_config

transformers = pytest.importorskip("transformers")

DIMS = Dims(vocab_size=50, context_length=64, d_model=48, n_heads=4, n_kv_heads=2, n_layers=1, head_dim=16)


def attention(registry, name, **params):
    torch.manual_seed(0)
    return ComponentSpec.resolve("attention", {"name": name, **params}, registry).build(DIMS).eval()


def context(registry, start, end):
    none = ComponentSpec.resolve("positional", "none", registry).build(DIMS)
    return AttentionContext(none, torch.arange(start, end)[None], torch.arange(end)[None], offset=start)


def _llama4(T, chunk_size):
    """Llama4TextAttention with random weights on a RoPE layer, its rotation made the identity."""
    from transformers import Llama4TextConfig
    from transformers.masking_utils import chunked_causal_mask_function, eager_mask
    from transformers.models.llama4.modeling_llama4 import Llama4TextAttention

    config = Llama4TextConfig(
        hidden_size=48,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_hidden_layers=1,
        attention_chunk_size=chunk_size,
        use_qk_norm=False,
        no_rope_layers=[1],
    )
    config._attn_implementation = "eager"
    torch.manual_seed(1)
    hf = Llama4TextAttention(config, layer_idx=0).eval()
    mask = eager_mask(1, T, T, mask_function=chunked_causal_mask_function(chunk_size, torch.zeros(1, dtype=torch.long)))
    identity = torch.ones(1, T, 8, dtype=torch.complex64)
    return hf, lambda x: hf(x, position_embeddings=identity, attention_mask=mask)[0]


@torch.no_grad()
def test_chunked_matches_transformers_llama4_text_attention_whole_and_cached(registry):
    T, C = 14, 4
    hf, hf_forward = _llama4(T, C)
    module = attention(registry, "chunked", chunk_size=C)
    module.qkv.weight.copy_(torch.cat([hf.q_proj.weight, hf.k_proj.weight, hf.v_proj.weight]))
    module.out_proj.weight.copy_(hf.o_proj.weight)
    module.out_proj.bias.zero_()
    x = torch.randn(2, T, 48)
    expected = hf_forward(x)
    torch.testing.assert_close(module(x, context(registry, 0, T)), expected, atol=1e-5, rtol=1e-4)
    cache = module.new_cache(2, None, x.device, x.dtype)  # a ring of one chunk
    assert cache.k.shape == (2, 2, C, 16)
    pieces = [(0, 3), (3, 4), (4, 9), (9, 10), (10, 11), (11, 14)]
    steps = [module(x[:, s:e], context(registry, s, e), cache) for s, e in pieces]
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_a_query_sees_its_own_chunk_only(registry):
    C, T = 4, 14
    model = GPT(tiny_config(registry, attention={"name": "chunked", "chunk_size": C}, n_layers=1, context_length=T))
    model.eval()
    idx = torch.randint(0, 50, (1, T))
    logits = model(idx)
    for t in (4, 9, 13):  # first, middle and last of its chunk
        start = t // C * C
        before, inside = idx.clone(), idx.clone()
        before[:, :start] = (idx[:, :start] + 1) % 50
        inside[:, start] = (idx[:, start] + 1) % 50
        torch.testing.assert_close(model(before)[:, t], logits[:, t], atol=1e-6, rtol=0)
        assert not torch.allclose(model(inside)[:, t], logits[:, t])


def test_the_kit_passes_chunked_attention(registry):
    check_component("attention", "chunked", registry=registry, chunk_size=5)


def test_the_kit_passes_chunked_attention_with_sinks(registry):
    check_component("attention", "chunked", registry=registry, chunk_size=4, sinks=True)


def test_chunked_declares_a_bounded_cache_of_one_chunk(registry):
    impl = registry.resolve("attention", "chunked")
    params = impl.Params(chunk_size=8)
    assert (impl.declared_cache_kind(params), impl.receptive_field(params), impl.cache_window(params)) == (
        "window",
        None,
        8,
    )
    model = GPT(
        tiny_config(registry, attention={"name": "chunked", "chunk_size": 8}, positional="rope", context_length=32)
    )
    per_token = 2 * 2 * 8 * 4  # keys and values, 2 key/value heads of 8, fp32
    assert costs.kv_cache_bytes(model, 5) == 2 * 5 * per_token  # two layers
    assert costs.kv_cache_bytes(model, 100) == 2 * 8 * per_token  # one chunk, however long the text
    row = layer_cache(model.blocks[0].attention, 32)
    assert (row["cache_kind"], row["window"], row["max_cache_bytes"]) == ("window", 8, 8 * per_token)
    assert model.new_cache(1).keep == 8 and model.extension_refusal() is None


def test_chunked_flops_count_keys_up_to_one_chunk(registry):
    def attention_flops(attention, context):
        return costs.flops_per_token(GPT(tiny_config(registry, attention=attention, context_length=32)), context)[
            "attention"
        ]

    chunked, plain = {"name": "chunked", "chunk_size": 8}, {"name": "sdpa"}
    assert attention_flops(chunked, 8) == attention_flops(plain, 8)  # a chunk's worth of keys: no difference
    # PaLM's 4 · n_heads · head_size FLOPs per key, in 2 layers of 4 heads of 8, for the 24 keys past the chunk
    assert attention_flops(plain, 32) - attention_flops(chunked, 32) == 2 * 4 * 4 * 8 * 24


def test_chunked_compiles_with_fullgraph(registry):
    torch.manual_seed(0)
    model = GPT(tiny_config(registry, n_layers=1, attention={"name": "chunked", "chunk_size": 4})).eval()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    idx = torch.randint(0, 50, (2, 10))
    torch.testing.assert_close(compiled(idx), model(idx))
    torch._dynamo.reset()
