"""parallel_mixers (Falcon-H1's parallel hybrid layer): the sum of its parts run alone with the same
weights, declarations that follow its parts, its config errors, and the kit."""

import pytest
import torch

from gptzoo.core import GPT, AttentionContext, ComponentSpec, ConfigError, Dims, Recorder
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
    mixer = spec(registry, "parallel_mixers", mixers=SDPA_AND_CONV, out_multipliers=[0.5, -2.0]).build(DIMS).eval()
    attention, conv = (spec(registry, **part).build(DIMS).eval() for part in SDPA_AND_CONV)
    attention.load_state_dict(
        {k.removeprefix("mixers.0."): v for k, v in mixer.state_dict().items() if "mixers.0." in k}
    )
    conv.load_state_dict({k.removeprefix("mixers.1."): v for k, v in mixer.state_dict().items() if "mixers.1." in k})
    T = 12
    x = torch.randn(2, T, DIMS.d_model)
    expected = 0.5 * attention(x, context(registry, "rope", 0, T)) - 2.0 * conv(x, context(registry, "rope", 0, T))
    torch.testing.assert_close(mixer(x, context(registry, "rope", 0, T)), expected)
    # Through its cache: a prefill of 5, then one token at a time.
    cache = mixer.new_cache(2, T, x.device, x.dtype)
    steps = [
        mixer(x[:, s:e], context(registry, "rope", s, e), cache)
        for s, e in [(0, 5)] + [(t, t + 1) for t in range(5, T)]
    ]
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, atol=1e-5, rtol=1e-4)


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
    assert model.kv_cache_bytes(20) == sum(p.kv_cache_bytes(20) for p in parts)
    d = config.d_model
    assert model.flops_per_token(20)["attention"] == sum(p.flops_per_token(20)["attention"] for p in parts) + 2 * 2 * d


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
