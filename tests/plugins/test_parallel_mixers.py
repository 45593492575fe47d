"""parallel_mixers (Falcon-H1's parallel hybrid layer): against transformers' FalconH1DecoderLayer's
attention and Mamba-2 with their multipliers, the sum of its parts run alone with the same weights,
declarations that follow its parts, its config errors, and the kit."""

import math

import pytest
import torch

from gptzoo.core import GPT, AttentionContext, ComponentSpec, ConfigError, Dims, Recorder
from gptzoo.recipes.training import costs
from gptzoo.testing import check_component, tiny_config

DIMS = Dims(vocab_size=50, context_length=32, d_model=32, n_heads=4, n_kv_heads=2, n_layers=2)
SDPA_AND_CONV = [{"name": "sdpa", "output_gate": "elementwise"}, {"name": "short_conv", "kernel_size": 4}]


def spec(registry, name, **params):
    return ComponentSpec.resolve("attention", {"name": name, **params}, registry)


def context(registry, scheme, start, end, recorder=None):
    positional = ComponentSpec.resolve("positional", {"name": scheme}, registry).build(DIMS)
    return AttentionContext(
        positional, torch.arange(start, end)[None], torch.arange(end)[None], offset=start, recorder=recorder
    )


@torch.no_grad()
def test_output_is_the_multiplied_sum_of_its_parts_run_alone(registry):
    torch.manual_seed(0)
    mixer = spec(
        registry, "parallel_mixers", mixers=SDPA_AND_CONV, in_multipliers=[1.0, 3.0], out_multipliers=[0.5, -2.0]
    )
    mixer = mixer.build(DIMS).eval()
    attention, conv = (spec(registry, **part).build(DIMS).eval() for part in SDPA_AND_CONV)
    attention.load_state_dict(
        {k.removeprefix("mixers.0."): v for k, v in mixer.state_dict().items() if "mixers.0." in k}
    )
    conv.load_state_dict({k.removeprefix("mixers.1."): v for k, v in mixer.state_dict().items() if "mixers.1." in k})
    T = 12
    x = torch.randn(2, T, DIMS.d_model)
    expected = 0.5 * attention(x, context(registry, "rope", 0, T)) - 2.0 * conv(3 * x, context(registry, "rope", 0, T))
    torch.testing.assert_close(mixer(x, context(registry, "rope", 0, T)), expected)
    # Through its cache: a prefill of 5, then one token at a time.
    cache = mixer.new_cache(2, T, x.device, x.dtype)
    steps = [
        mixer(x[:, s:e], context(registry, "rope", s, e), cache)
        for s, e in [(0, 5)] + [(t, t + 1) for t in range(5, T)]
    ]
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_matches_transformers_falcon_h1_layers_attention_beside_mamba2_with_their_multipliers(registry):
    transformers = pytest.importorskip("transformers")
    from transformers.masking_utils import causal_mask_function, eager_mask
    from transformers.models.falcon_h1.modeling_falcon_h1 import (
        FalconH1DecoderLayer,
        FalconH1RotaryEmbedding,
        compute_mup_vector,
    )

    multipliers = dict(attention_in_multiplier=0.5, attention_out_multiplier=1.5, key_multiplier=1.3)
    multipliers |= dict(ssm_in_multiplier=0.7, ssm_out_multiplier=0.3)
    config = transformers.FalconH1Config(
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        mamba_n_heads=8,
        mamba_d_head=8,
        mamba_d_ssm=64,
        mamba_d_state=6,
        mamba_n_groups=2,
        mamba_d_conv=4,
        mamba_chunk_size=4,
        mamba_rms_norm=True,  # the gated norm after the gate, as mamba2 has it
        mamba_norm_before_gate=False,
        num_hidden_layers=1,
        vocab_size=50,
        intermediate_size=64,
        **multipliers,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(1)
    layer = FalconH1DecoderLayer(config, layer_idx=0).eval()
    layer.mamba.register_buffer("mup_vector", compute_mup_vector(config), persistent=False)  # the model sets it
    for p in layer.parameters():
        p.copy_(torch.randn_like(p) * 0.3)
    layer.input_layernorm = torch.nn.Identity()  # the mixers' sum is what the layer adds before its feed-forward
    layer.feed_forward = ZeroFeedForward()
    T = 13
    x = torch.randn(2, T, 32)
    rope = FalconH1RotaryEmbedding(config)
    mask = eager_mask(1, T, T, mask_function=causal_mask_function)
    expected = layer(x, attention_mask=mask, position_embeddings=rope(x, torch.arange(T)[None]))[0] - x

    mamba2 = {"name": "mamba2", "d_state": 6, "d_conv": 4, "expand": 2, "head_dim": 8, "n_groups": 2, "chunk_size": 4}
    mixers = [{"name": "sdpa", "scale": 1.3 / math.sqrt(8)}, mamba2]  # keys times 1.3 scale the scores by 1.3
    dims = Dims(vocab_size=50, context_length=32, d_model=32, n_heads=4, n_kv_heads=2, n_layers=1, attn_out_bias=False)
    params = dict(mixers=mixers, in_multipliers=[0.5, 0.7], out_multipliers=[1.5, 0.3])
    mixer = spec(registry, "parallel_mixers", **params).build(dims).eval()
    hf = layer.state_dict()
    state = {
        "mixers.0.qkv.weight": torch.cat([hf[f"self_attn.{p}_proj.weight"] for p in "qkv"]),
        "mixers.0.out_proj.weight": hf["self_attn.o_proj.weight"],
    }
    for key, value in hf.items():
        if key.startswith("mamba."):
            state["mixers.1." + key.removeprefix("mamba.").replace("conv1d.", "conv1d.conv.")] = value
    mixer.load_state_dict(state)
    theta = config.rope_parameters["rope_theta"]
    ctx = AttentionContext(
        ComponentSpec.resolve("positional", {"name": "rope", "base": theta}, registry).build(dims),
        torch.arange(T)[None],
        torch.arange(T)[None],
    )
    torch.testing.assert_close(mixer(x, ctx), expected)


class ZeroFeedForward(torch.nn.Module):
    def forward(self, h):
        return torch.zeros_like(h)


def test_declarations_follow_the_parts(registry):
    impl = registry.resolve("attention", "parallel_mixers")

    def declared(*parts):
        params = spec(registry, "parallel_mixers", mixers=list(parts)).params
        return (
            impl.declared_cache_kind(params),
            impl.declared_position_hooks(params),
            impl.declared_inspection(params),
            impl.receptive_field(params),
        )

    conv, window = {"name": "short_conv", "kernel_size": 4}, {"name": "sliding_window", "window": 6}
    assert declared({"name": "sdpa"}, conv) == ("keys_values", {"rotate", "score_bias"}, "probabilities", None)
    assert declared(conv, window) == ("window", {"rotate", "score_bias"}, "implicit_attention", 6)
    assert declared(conv, {"name": "short_conv", "kernel_size": 2}) == ("state", frozenset(), "implicit_attention", 4)


def test_a_position_scheme_no_part_uses_is_refused_and_one_a_part_uses_is_accepted(registry):
    convs = [{"name": "short_conv"}, {"name": "short_conv", "kernel_size": 5}]
    with pytest.raises(ConfigError, match="positional 'rope' acts through rotate.*'parallel_mixers'.*no position hook"):
        tiny_config(registry, positional="rope", attention={"name": "parallel_mixers", "mixers": convs})
    tiny_config(registry, positional="rope", attention={"name": "parallel_mixers", "mixers": SDPA_AND_CONV})


@torch.no_grad()
def test_only_the_first_reporting_part_records(registry):
    mixer = spec(registry, "parallel_mixers", mixers=[{"name": "short_conv"}, {"name": "sdpa"}]).build(DIMS).eval()
    recorder = Recorder()
    T = 6
    mixer(torch.randn(1, T, DIMS.d_model), context(registry, "none", 0, T, recorder))
    (reported,) = recorder._reported
    assert reported.shape == (1, DIMS.d_model, T, T)  # the convolution's implicit attention, one row per channel


def test_cache_bytes_sum_the_parts_and_flops_leave_them_to_the_model(registry):
    config = tiny_config(registry, attention={"name": "parallel_mixers", "mixers": SDPA_AND_CONV}, n_layers=1)
    alone = [tiny_config(registry, attention=part, n_layers=1) for part in SDPA_AND_CONV]
    with torch.device("meta"):
        model, parts = GPT(config), [GPT(c) for c in alone]
    assert costs.kv_cache_bytes(model, 20) == sum(costs.kv_cache_bytes(p, 20) for p in parts)
    d = config.d_model
    assert (
        costs.flops_per_token(model, 20)["attention"]
        == sum(costs.flops_per_token(p, 20)["attention"] for p in parts) + 2 * 2 * d
    )


def test_config_round_trips_and_bad_parts_are_named(registry):
    config = tiny_config(
        registry, attention={"name": "parallel_mixers", "mixers": SDPA_AND_CONV, "out_multipliers": [1, 2]}
    )
    assert registry.model_config(config.model_dump(mode="json")) == config
    with pytest.raises(ConfigError, match="out_multipliers has 1 entries for 2 mixers"):
        tiny_config(registry, attention={"name": "parallel_mixers", "mixers": SDPA_AND_CONV, "out_multipliers": [1]})
    with pytest.raises(ConfigError, match="kernel_sise"):
        tiny_config(
            registry,
            attention={
                "name": "parallel_mixers",
                "mixers": [{"name": "short_conv", "kernel_sise": 2}, {"name": "sdpa"}],
            },
        )
    with pytest.raises(ConfigError, match="two or more token mixers"):
        tiny_config(registry, attention={"name": "parallel_mixers", "mixers": [{"name": "sdpa"}]})


def test_the_kit_passes_attention_beside_a_short_convolution(registry):
    check_component("attention", "parallel_mixers", registry=registry, mixers=SDPA_AND_CONV, out_multipliers=[0.7, 1.3])


def test_the_kit_passes_a_window_beside_a_short_convolution(registry):
    mixers = [{"name": "sliding_window", "window": 3}, {"name": "short_conv"}]
    check_component("attention", "parallel_mixers", registry=registry, mixers=mixers)


def test_describe_reports_what_the_parts_keep_together(registry):
    from gptzoo.recipes.cli.describe import layer_cache

    mixers = [{"name": "sliding_window", "window": 3}, {"name": "short_conv", "kernel_size": 4}]
    row = layer_cache(spec(registry, "parallel_mixers", mixers=mixers).build(DIMS), 16)
    window_bytes, conv_bytes = 2 * 2 * 8 * 3 * 4, DIMS.d_model * 3 * 4  # 3 keys and values of 2 heads of 8; 3 inputs
    assert (row["cache_kind"], row["window"], row["max_cache_bytes"]) == ("window", 4, window_bytes + conv_bytes)
