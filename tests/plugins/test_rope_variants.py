"""RoPE's scalings against the published formulas at hand-picked dimensions and against
transformers' rope init functions; partial rotary and the two pair layouts against the
complex-multiplication definition."""

import math

import pytest
import torch

from gptzoo.core import ConfigError, Dims
from gptzoo.plugins.positional import RotaryParams, RotaryPositions, rope_frequencies


def dims(hs, context=64):
    return Dims(vocab_size=50, context_length=context, d_model=2 * hs, n_heads=2, n_kv_heads=2, n_layers=1)


def frequencies(hs=128, **params):
    inv_freq, attention_factor = rope_frequencies(RotaryParams.model_validate(params), hs)
    return inv_freq, attention_factor


def test_llama3_keeps_short_wavelengths_divides_long_ones_and_blends_between():
    # Llama 3.1: base 500000, factor 8, low/high_freq_factor 1/4, original context 8192.
    scaling = {
        "type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_context_length": 8192,
    }
    inv_freq, attention_factor = frequencies(128, base=500000.0, scaling=scaling)
    theta = [500000 ** (-2 * i / 128) for i in range(64)]
    wavelength = [2 * math.pi / t for t in theta]
    # i = 0: wavelength 2π < 8192/4, kept. i = 63: wavelength > 8192/1, divided by 8.
    assert inv_freq[0].item() == pytest.approx(theta[0])
    assert inv_freq[63].item() == pytest.approx(theta[63] / 8)
    # i = 30: 2048 < wavelength (about 3.0e3) < 8192, the smoothing band.
    assert 2048 < wavelength[30] < 8192
    smooth = (8192 / wavelength[30] - 1) / (4 - 1)
    assert inv_freq[30].item() == pytest.approx((1 - smooth) * theta[30] / 8 + smooth * theta[30])
    assert attention_factor == 1.0


def test_yarn_ramp_between_beta_slow_and_beta_fast_rotations_and_its_attention_factor():
    # YaRN (Peng et al., 2023): dimension pair d turns r_d = L / λ_d times over the original
    # context L; r < beta_slow: interpolated (θ/s), r > beta_fast: kept, a linear ramp between
    # whole dimensions floor(d(beta_fast)) .. ceil(d(beta_slow)), d(r) = D ln(L/(2π r)) / (2 ln base).
    D, base, s, L = 64, 10000.0, 4.0, 2048
    inv_freq, attention_factor = frequencies(
        D, base=base, scaling={"type": "yarn", "factor": s, "original_context_length": L}
    )
    theta = [base ** (-2 * i / D) for i in range(D // 2)]
    low = math.floor(D * math.log(L / (32 * 2 * math.pi)) / (2 * math.log(base)))  # 8
    high = math.ceil(D * math.log(L / (1 * 2 * math.pi)) / (2 * math.log(base)))  # 21
    assert (low, high) == (8, 21)
    assert inv_freq[3].item() == pytest.approx(theta[3])  # many turns: kept
    assert inv_freq[25].item() == pytest.approx(theta[25] / s)  # under one turn: interpolated
    gamma = (14 - low) / (high - low)
    assert inv_freq[14].item() == pytest.approx((1 - gamma) * theta[14] + gamma * theta[14] / s)
    assert attention_factor == pytest.approx(0.1 * math.log(s) + 1)
    # The attention factor scales cos and sin (so q·k by its square), as YaRN's reference code.
    rope = RotaryPositions(
        RotaryParams(base=base, scaling={"type": "yarn", "factor": s, "original_context_length": L}), dims(D)
    )
    assert rope.cos[0, 0].item() == pytest.approx(attention_factor)


def test_linear_scaling_divides_every_frequency():
    inv_freq, _ = frequencies(32, scaling={"type": "linear", "factor": 4.0})
    torch.testing.assert_close(
        inv_freq, torch.tensor([10000 ** (-2 * i / 32) / 4 for i in range(16)], dtype=torch.float64)
    )


@pytest.mark.parametrize(
    "ours, theirs",
    [
        ({"type": "linear", "factor": 2.0}, {"rope_type": "linear", "factor": 2.0}),
        (
            {
                "type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_context_length": 8192,
            },
            {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
        ),
        (
            {"type": "yarn", "factor": 4.0, "original_context_length": 4096, "beta_fast": 16.0, "beta_slow": 2.0},
            {
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 4096,
                "beta_fast": 16.0,
                "beta_slow": 2.0,
            },
        ),
        (
            {"type": "yarn", "factor": 8.0, "original_context_length": 2048, "truncate": False},
            {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 2048, "truncate": False},
        ),
    ],
    ids=["linear", "llama3", "yarn", "yarn_untruncated"],
)
@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_frequencies_match_transformers_rope_init_functions(ours, theirs, fraction):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    base = 500000.0
    config = LlamaConfig(
        hidden_size=256,
        num_attention_heads=2,
        head_dim=128,
        max_position_embeddings=4 * theirs.get("original_max_position_embeddings", 8192),
        rope_parameters={**theirs, "rope_theta": base, "partial_rotary_factor": fraction},
    )
    expected, expected_factor = ROPE_INIT_FUNCTIONS[theirs["rope_type"]](config, "cpu")
    inv_freq, attention_factor = frequencies(128, base=base, scaling=ours, fraction=fraction)
    torch.testing.assert_close(inv_freq.float(), expected, rtol=1e-5, atol=0)
    assert attention_factor == pytest.approx(expected_factor)


def _rotated_by_hand(x, positions, theta, pairs):
    """x rotated pair by pair as complex numbers: z_j · e^(i·p·θ_j), pairs = [(first, second) index]."""
    out = x.clone().double()
    for j, (a, b) in enumerate(pairs):
        z = torch.complex(x[..., a].double(), x[..., b].double()) * torch.exp(1j * positions[0].double() * theta[j])
        out[..., a], out[..., b] = z.real, z.imag
    return out


@pytest.mark.parametrize("layout", ["halves", "interleaved"])
@pytest.mark.parametrize("fraction", [1.0, 0.25])
def test_layouts_and_partial_rotary_are_complex_rotations_of_the_chosen_pairs(layout, fraction):
    hs = 16
    rotated = int(hs * fraction)
    rope = RotaryPositions(RotaryParams(base=10000.0, layout=layout, fraction=fraction), dims(hs))
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 5, hs), torch.randn(1, 2, 5, hs)
    positions = torch.tensor([[0, 2, 7, 11, 40]])
    theta = [10000 ** (-2 * j / rotated) for j in range(rotated // 2)]  # frequencies over the rotated dims only
    if layout == "halves":  # GPT-NeoX / Llama: j with j + rotated/2
        pairs = [(j, j + rotated // 2) for j in range(rotated // 2)]
    else:  # GPT-J / RoFormer: 2j with 2j + 1
        pairs = [(2 * j, 2 * j + 1) for j in range(rotated // 2)]
    q_rot, k_rot = rope.rotate(q, k, positions)
    for x, x_rot in ((q, q_rot), (k, k_rot)):
        torch.testing.assert_close(x_rot.double(), _rotated_by_hand(x, positions, theta, pairs), atol=1e-5, rtol=1e-5)
        assert torch.equal(x_rot[..., rotated:], x[..., rotated:])  # the rest pass unchanged


def test_reverse_rotates_each_pair_by_minus_position_times_frequency():
    # nanochat's rotate_half is (x2, -x1), Llama's negated: pair j turns by e^(-i·p·θ_j).
    hs = 8
    rope = RotaryPositions(RotaryParams(base=10000.0, reverse=True), dims(hs))
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 4, hs), torch.randn(1, 2, 4, hs)
    positions = torch.tensor([[0, 3, 9, 30]])
    theta = [-(10000 ** (-2 * j / hs)) for j in range(hs // 2)]
    pairs = [(j, j + hs // 2) for j in range(hs // 2)]
    q_rot, k_rot = rope.rotate(q, k, positions)
    for x, x_rot in ((q, q_rot), (k, k_rot)):
        torch.testing.assert_close(x_rot.double(), _rotated_by_hand(x, positions, theta, pairs), atol=1e-5, rtol=1e-5)


def test_gptneox_partial_rotary_matches_transformers(registry):
    from transformers import GPTNeoXConfig
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXRotaryEmbedding, apply_rotary_pos_emb

    hs, fraction = 16, 0.25
    config = GPTNeoXConfig(
        hidden_size=2 * hs, num_attention_heads=2, rotary_pct=fraction, max_position_embeddings=64, rope_theta=10000.0
    )
    theirs = GPTNeoXRotaryEmbedding(config)
    ours = RotaryPositions(RotaryParams(fraction=fraction), dims(hs))
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 6, hs), torch.randn(1, 2, 6, hs)
    positions = torch.arange(6)[None]
    cos, sin = theirs(q, positions)
    expected = apply_rotary_pos_emb(q, k, cos, sin)
    got = ours.rotate(q, k, positions)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


def test_a_fraction_leaving_an_odd_count_is_refused(registry):
    from gptzoo.testing import tiny_config

    with pytest.raises(
        ConfigError,
        match=r"positional 'rope': rotary needs an even number of rotated dimensions, but head size 8 \(d_model=32 / n_heads=4\) × fraction 0.375 gives 3",
    ):
        tiny_config(registry, positional={"name": "rope", "fraction": 0.375})
    with pytest.raises(ConfigError, match=r"scaling.llama3.factor"):
        tiny_config(registry, positional={"name": "rope", "scaling": {"type": "llama3", "factor": -1.0}})


def test_proportional_rope_turns_the_first_pairs_at_full_rotary_frequencies_and_keeps_the_rest():
    # Gemma 4's global layers: heads of 16, a quarter of the 8 pairs turning, at base^(-2j/16).
    inv_freq, _ = frequencies(hs=16, base=1e6, fraction=0.25, proportional=True)
    torch.testing.assert_close(inv_freq, torch.tensor([1.0, 1e6 ** (-2 / 16)] + [0.0] * 6, dtype=torch.float64))
    rope = RotaryPositions(RotaryParams(base=1e6, fraction=0.25, proportional=True), dims(16))
    x = torch.randn(1, 1, 3, 16)
    turned, _ = rope.rotate(x, x, torch.arange(3)[None])
    kept = [j for j in range(16) if j % 8 >= 2]  # the pairs (j, j + 8) of frequency 0
    torch.testing.assert_close(turned[..., kept], x[..., kept])
    assert not torch.allclose(turned[:, :, 1:, [0, 8]], x[:, :, 1:, [0, 8]])


def test_proportional_rope_passes_the_kit(registry):
    from gptzoo.testing import check_component

    check_component("positional", "rope", registry, fraction=0.25, proportional=True)
