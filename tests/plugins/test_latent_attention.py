"""Multi-head latent attention against transformers' DeepseekV3Attention on random weights, its
absorbed decoding against the explicit decompression, and its cache and sizes against the formulas."""

import pytest
import torch

from gptzoo.core import AttentionContext, ComponentSpec, ConfigError, Dims
from gptzoo.recipes.training import costs
from gptzoo.testing import build, check_component, tiny_config

C, NH, DR, DN, DV, R, RQ = 48, 4, 8, 12, 10, 20, 24
DIMS = Dims(
    vocab_size=50, context_length=64, d_model=C, n_heads=NH, n_kv_heads=NH, n_layers=1, head_dim=DR, attn_out_bias=False
)
SIZES = {"kv_lora_rank": R, "qk_nope_head_dim": DN, "v_head_dim": DV}


def latent(registry, dims=DIMS, **params):
    torch.manual_seed(0)
    return ComponentSpec.resolve("attention", {"name": "latent", **params}, registry).build(dims).eval()


def rope(registry, dims=DIMS):
    return ComponentSpec.resolve("positional", {"name": "rope", "base": 10000.0}, registry).build(dims)


@pytest.mark.parametrize("q_lora_rank", [None, RQ])
@torch.no_grad()
def test_latent_attention_matches_transformers_deepseek_v3(registry, q_lora_rank):
    transformers = pytest.importorskip("transformers")
    from transformers.masking_utils import causal_mask_function, eager_mask
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention, DeepseekV3RotaryEmbedding

    config = transformers.DeepseekV3Config(
        hidden_size=C,
        num_attention_heads=NH,
        num_key_value_heads=NH,
        q_lora_rank=q_lora_rank,
        kv_lora_rank=R,
        qk_nope_head_dim=DN,
        qk_rope_head_dim=DR,
        v_head_dim=DV,
        rope_interleave=False,
        rope_theta=10000.0,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(1)
    hf = DeepseekV3Attention(config, layer_idx=0).eval()
    for norm in [hf.kv_a_layernorm] + ([hf.q_a_layernorm] if q_lora_rank else []):
        norm.weight.normal_(1.0, 0.2)
    T = 12
    x = torch.randn(2, T, C)
    cos_sin = DeepseekV3RotaryEmbedding(config)(x, torch.arange(T)[None])
    expected = hf(
        x, position_embeddings=cos_sin, attention_mask=eager_mask(1, T, T, mask_function=causal_mask_function)
    )[0]

    module = latent(registry, q_lora_rank=q_lora_rank, **SIZES)
    module.load_state_dict({key.replace("o_proj", "out_proj"): value for key, value in hf.state_dict().items()})
    positions = torch.arange(T)[None]
    torch.testing.assert_close(
        module(x, AttentionContext(rope(registry), positions, positions)), expected, atol=1e-5, rtol=1e-4
    )


@pytest.mark.parametrize("padded", [False, True])
@torch.no_grad()
def test_absorbed_decoding_equals_the_explicit_decompression(registry, padded):
    module = latent(registry, q_lora_rank=RQ, **SIZES)
    x = torch.randn(2, 9, C)
    valid = torch.ones(2, 9, dtype=torch.bool)
    if padded:
        valid[1, :3] = False
    cache = module.new_cache(2, 9, x.device, x.dtype)
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    module(
        x[:, :8],
        AttentionContext(
            rope(registry), positions[:, :8], positions[:, :8], key_valid=valid[:, :8] if padded else None
        ),
        cache,
    )
    ctx = AttentionContext(rope(registry), positions[:, 8:], positions, offset=8, key_valid=valid if padded else None)
    assert module.absorbing_is_cheaper(1, 9)  # so forward takes the absorbed path
    absorbed, explicit = module.absorbed, module.explicit
    calls = []
    module.absorbed = lambda *args: calls.append(args) or absorbed(*args)  # record what forward passes
    module(x[:, 8:], ctx, cache)
    (args,) = calls  # (q_nope, q_rot, kv, bias, is_causal)
    assert args[2].shape == (2, 1, 9, R + DR) and (args[3] is not None) == padded
    torch.testing.assert_close(absorbed(*args), explicit(*args), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mask", ["causal", "per_head_bias", "padding", "chunk_after_cache"])
@torch.no_grad()
def test_absorbed_attention_equals_the_explicit_one_under_every_mask(registry, mask):
    """The absorbed path folds the heads into query rows: every mask shape must follow them."""
    module = latent(registry, **SIZES)
    B, T, Tk = 2, 5, 5 if mask in ("causal", "per_head_bias") else 9
    q_nope, q_rot, kv = torch.randn(B, NH, T, DN), torch.randn(B, NH, T, DR), torch.randn(B, 1, Tk, R + DR)
    causal = torch.ones(T, Tk, dtype=torch.bool).tril(Tk - T)  # query t sees keys up to Tk - T + t
    bias, is_causal = {
        "causal": (None, True),
        "per_head_bias": (torch.randn(1, NH, T, Tk).masked_fill(~causal, float("-inf")), False),  # ALiBi-like
        "padding": (
            causal & torch.tensor([[True] * Tk, [False] * 3 + [True] * (Tk - 3)])[:, None, None],
            False,
        ),  # (B, 1, T, Tk)
        "chunk_after_cache": (causal, False),
    }[mask]
    torch.testing.assert_close(
        module.absorbed(q_nope, q_rot, kv, bias, is_causal),
        module.explicit(q_nope, q_rot, kv, bias, is_causal),
        atol=1e-5,
        rtol=1e-4,
    )


def test_the_path_is_chosen_by_cost(registry):
    module = latent(registry, **SIZES)  # dn + dv = 22 < 2r = 40: decompressing once is cheaper over a whole sequence
    assert module.absorbing_is_cheaper(1, 64)
    assert not module.absorbing_is_cheaper(64, 64)


@torch.no_grad()
def test_the_cache_holds_the_latent_and_the_rotary_key_only(registry):
    model = build(
        tiny_config(registry, attention={"name": "latent", **SIZES}, positional="rope", context_length=32)
    )  # head_dim 8
    assert costs.kv_cache_bytes(model, 32) == 2 * (R + 8) * 32 * 4  # layers × (r + dr) × tokens × fp32
    assert costs.kv_cache_bytes(model, 32, torch.bfloat16) == 2 * (R + 8) * 32 * 2
    cache = model.new_cache(1, 32)
    assert [tuple(layer.kv.shape) for layer in cache.layers] == [(1, 1, 32, R + 8)] * 2


def test_parameters_and_flops_follow_the_formula(registry):
    module = latent(registry, q_lora_rank=RQ, **SIZES)
    expected = C * RQ + RQ + RQ * NH * (DN + DR) + C * (R + DR) + R + R * NH * (DN + DV) + NH * DV * C
    assert sum(p.numel() for p in module.parameters()) == expected  # the two RMSNorm weights: RQ and R
    matrices = C * RQ + RQ * NH * (DN + DR) + C * (R + DR) + R * NH * (DN + DV) + NH * DV * C
    assert module.flops_per_token(64) == 2 * matrices + 2 * NH * (DN + DR + DV) * 64


def test_grouped_key_value_heads_are_refused_at_load(registry):
    with pytest.raises(ConfigError, match="attention 'latent'.*leave n_kv_heads unset"):
        tiny_config(registry, attention="latent", n_kv_heads=2)


def test_the_kit_passes_latent_attention_with_a_query_latent(registry):
    check_component("attention", "latent", registry=registry, q_lora_rank=12, **SIZES)
