"""Mamba-2 against transformers' Mamba2Mixer (its PyTorch path) on a tiny random layer, and
against the SSD recurrence written out token by token; its implicit attention matrix and its
published initialisation against the formulas."""

import math

import pytest
import torch
import torch.nn.functional as F

from gptzoo.core import AttentionContext, ComponentSpec, Dims, Recorder
from gptzoo.testing import check_component

C, NH = 32, 4
DIMS = Dims(vocab_size=50, context_length=64, d_model=C, n_heads=NH, n_kv_heads=NH, n_layers=1)
MAMBA2 = {"d_state": 6, "head_dim": 8, "n_groups": 2, "chunk_size": 5}  # 8 heads in 2 groups


def mixer(registry, name, **params):
    torch.manual_seed(0)
    return ComponentSpec.resolve("attention", {"name": name, **params}, registry).build(DIMS).eval()


def context(registry, T, offset=0, capture=False):
    positional = ComponentSpec.resolve("positional", "none", registry).build(DIMS)
    positions = torch.arange(offset, offset + T)[None]
    return AttentionContext(
        positional, positions, torch.arange(offset + T)[None], offset, None, Recorder() if capture else None
    )


def randomize(module, scale=0.3):
    """Every parameter from N(0, scale²), so no initialisation hides a wrong formula."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * scale)


def in_pieces(layer, registry, x, sizes):
    """The layer fed x through its cache in pieces of the given sizes."""
    cache = layer.new_cache(x.size(0), None, x.device, x.dtype)
    outputs, start = [], 0
    for size in sizes:
        outputs.append(layer(x[:, start : start + size], context(registry, size, start), cache))
        start += size
    return torch.cat(outputs, dim=1)


# ---- Mamba-2 ---------------------------------------------------------------------------------------


@torch.no_grad()
def test_mamba2_matches_transformers_mamba2_mixer_training_and_cached_decoding(registry):
    transformers = pytest.importorskip("transformers")
    from transformers.cache_utils import DynamicCache
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    config = transformers.Mamba2Config(
        hidden_size=C,
        num_heads=8,
        head_dim=8,
        state_size=6,
        n_groups=2,
        expand=2,
        chunk_size=4,  # a different chunking: the result must not depend on it
        conv_kernel=4,
        num_hidden_layers=1,
        vocab_size=50,
    )
    reference = Mamba2Mixer(config, layer_idx=0).eval()
    randomize(reference)
    layer = mixer(registry, "mamba2", **MAMBA2)
    state = dict(reference.state_dict())
    state["conv1d.conv.weight"], state["conv1d.conv.bias"] = state.pop("conv1d.weight"), state.pop("conv1d.bias")
    layer.load_state_dict(state)

    x = torch.randn(2, 23, C)
    expected = reference(x)
    torch.testing.assert_close(layer(x, context(registry, 23)), expected)

    cache = DynamicCache(config=config)
    steps = [reference(x[:, :11], cache=cache)] + [reference(x[:, t : t + 1], cache=cache) for t in range(11, 23)]
    torch.testing.assert_close(torch.cat(steps, 1), expected)  # the reference decodes as it trains
    torch.testing.assert_close(in_pieces(layer, registry, x, [11] + [1] * 12), torch.cat(steps, 1))
    torch.testing.assert_close(in_pieces(layer, registry, x, [7, 1, 3, 5, 7]), expected)


def mamba2_by_the_equations(layer, u):
    """The SSD recurrence token by token from the layer's weights, written out from the paper:
    S_t = exp(Δ_t A) S_{t-1} + Δ_t x_t B_tᵀ, y_t = S_t C_t + D x_t, out = W_o RMSNorm_g(y ⊙ SiLU(z))."""
    b, T, _ = u.shape
    inner, h, p = 64, 8, 8
    n, g = 6, 2
    z, xBC, dt = (u @ layer.in_proj.weight.T).split([inner, inner + 2 * g * n, h], dim=-1)
    w, bias = layer.conv1d.conv.weight[:, 0], layer.conv1d.conv.bias  # (D, 4), (D,)
    K = w.size(1)
    conv = torch.stack(
        [sum(xBC[:, s] * w[:, K - 1 - (t - s)] for s in range(max(0, t - K + 1), t + 1)) + bias for t in range(T)], 1
    )
    xs, B, C_ = F.silu(conv).split([inner, g * n, g * n], dim=-1)
    delta = F.softplus(dt + layer.dt_bias)  # (b, T, h)
    A = -torch.exp(layer.A_log)
    S = torch.zeros(b, h, p, n)
    ys = []
    for t in range(T):
        x_t = xs[:, t].view(b, h, p)
        B_t = B[:, t].view(b, g, n).repeat_interleave(h // g, dim=1)  # head k reads group k // (h / g)
        C_t = C_[:, t].view(b, g, n).repeat_interleave(h // g, dim=1)
        S = (
            torch.exp(delta[:, t] * A)[..., None, None] * S
            + delta[:, t, :, None, None] * x_t[..., None] * B_t[:, :, None]
        )
        ys.append(torch.einsum("bhpn,bhn->bhp", S, C_t) + layer.D[:, None] * x_t)
    y = torch.stack(ys, 1).reshape(b, T, inner) * F.silu(z)
    y = y.view(b, T, g, inner // g)
    y = (y / torch.sqrt(y.pow(2).mean(-1, keepdim=True) + 1e-5)).reshape(b, T, inner) * layer.norm.weight
    return y @ layer.out_proj.weight.T


@torch.no_grad()
def test_mamba2_is_the_ssd_recurrence_written_out(registry):
    layer = mixer(registry, "mamba2", **MAMBA2)
    randomize(layer)
    u = torch.randn(2, 17, C)
    torch.testing.assert_close(layer(u, context(registry, 17)), mamba2_by_the_equations(layer, u))


@torch.no_grad()
def test_mamba2_implicit_attention_is_its_ssm_matrix(registry):
    """M_ij = C_iᵀB_j · exp(Σ_{j<k≤i} Δ_k A) · Δ_j per head (Ali et al., 2024), zero above the diagonal."""
    layer = mixer(registry, "mamba2", **MAMBA2)
    randomize(layer)
    T = 9
    u = torch.randn(1, T, C)
    ctx = context(registry, T, capture=True)
    layer(u, ctx)
    (reported,) = ctx.recorder._reported
    _, xBC, dt = (u @ layer.in_proj.weight.T).split([64, 64 + 24, 8], dim=-1)
    _, B, C_ = F.silu(layer.conv1d(xBC)).split([64, 12, 12], dim=-1)
    delta, A = F.softplus(dt + layer.dt_bias)[0], -torch.exp(layer.A_log)  # (T, h), (h,)
    expected = torch.zeros(1, 8, T, T)
    for head in range(8):
        group = head // 4
        for i in range(T):
            for j in range(i + 1):
                decay = math.exp(sum(delta[k, head] * A[head] for k in range(j + 1, i + 1)))
                bc = C_[0, i, group * 6 : group * 6 + 6] @ B[0, j, group * 6 : group * 6 + 6]
                expected[0, head, i, j] = bc * decay * delta[j, head]
    torch.testing.assert_close(reported, expected)


def test_mamba2_published_initialisation(registry):
    layer = mixer(registry, "mamba2", d_state=4, chunk_size=4)  # defaults: A in [1, 16], Δ in [0.001, 0.1]
    A = torch.exp(layer.A_log)
    assert layer.A_log.shape == (4,) and ((A >= 1) & (A <= 16)).all()
    delta = F.softplus(layer.dt_bias)
    assert ((delta >= 0.001 - 1e-7) & (delta <= 0.1 + 1e-7)).all()
    assert torch.equal(layer.D, torch.ones(4))


def test_mamba2_cache_is_its_window_and_float32_state(registry):
    layer = mixer(registry, "mamba2", **MAMBA2)
    conv_dim = 64 + 2 * 2 * 6
    assert (
        layer.cache_bytes(1, torch.bfloat16)
        == layer.cache_bytes(10_000, torch.bfloat16)
        == conv_dim * 3 * 2 + 8 * 8 * 6 * 4
    )


def test_mamba2_passes_the_kit_with_groups_and_short_chunks(registry):
    check_component("attention", "mamba2", registry, d_state=8, n_groups=2, chunk_size=4)


# ---- Mamba -------------------------------------------------------------------------------------------

MAMBA = {"d_state": 6, "dt_rank": 5}  # inner width 64


def mamba_reference(family):
    """transformers' mixer for Mamba, Jamba's or Falcon Mamba's layer, tiny, with random weights."""
    transformers = pytest.importorskip("transformers")
    if family == "jamba":
        from transformers.models.jamba.modeling_jamba import JambaMambaMixer

        config = transformers.JambaConfig(
            hidden_size=C,
            mamba_d_state=6,
            mamba_dt_rank=5,
            mamba_expand=2,
            use_mamba_kernels=False,
            num_hidden_layers=1,
        )
        return JambaMambaMixer(config, layer_idx=0).eval(), config
    common = dict(
        hidden_size=C, state_size=6, time_step_rank=5, expand=2, num_hidden_layers=1, use_associative_scan=False
    )
    if family == "falcon_mamba":
        from transformers.models.falcon_mamba.modeling_falcon_mamba import FalconMambaMixer

        config = transformers.FalconMambaConfig(**common)
        # Its own initialisation reads the norms before building them; the test draws every weight anyway.
        return FalconMambaMixer(config, layer_idx=0, initialize_mixer_weights=False).eval(), config
    from transformers.models.mamba.modeling_mamba import MambaMixer

    config = transformers.MambaConfig(**common)
    return MambaMixer(config, layer_idx=0).eval(), config


@pytest.mark.parametrize("family,norm", [("mamba", "none"), ("jamba", "learned"), ("falcon_mamba", "plain")])
@torch.no_grad()
def test_mamba_matches_transformers_mixers_training_and_cached_decoding(registry, family, norm):
    from transformers.cache_utils import DynamicCache

    reference, config = mamba_reference(family)
    randomize(reference)
    layer = mixer(registry, "mamba", bcdt_norm=norm, **MAMBA)
    state = {k: v for k, v in reference.state_dict().items() if not (norm == "plain" and "layernorm" in k)}
    state["conv1d.conv.weight"], state["conv1d.conv.bias"] = state.pop("conv1d.weight"), state.pop("conv1d.bias")
    layer.load_state_dict(state)

    x = torch.randn(2, 13, C)
    expected = reference(x)
    close = dict(rtol=1e-5, atol=1e-4)  # float32 sums in another order, on outputs of order 1
    torch.testing.assert_close(layer(x, context(registry, 13)), expected, **close)

    # The reference decodes a prefill from an empty state, then one token at a time.
    cache = DynamicCache(config=config)
    steps = [reference(x[:, :6], cache=cache)] + [reference(x[:, t : t + 1], cache=cache) for t in range(6, 13)]
    torch.testing.assert_close(torch.cat(steps, 1), expected, **close)
    torch.testing.assert_close(in_pieces(layer, registry, x, [6] + [1] * 7), expected, **close)
    torch.testing.assert_close(in_pieces(layer, registry, x, [4, 1, 3, 5]), expected, **close)


@pytest.mark.parametrize("T", [9, 600])  # 600: segments of 256 tokens, the last ragged
@torch.no_grad()
def test_mamba_is_the_selective_scan_written_out_and_reports_its_state_norm(registry, T):
    """S_t = exp(Δ_t A) ⊙ S_{t-1} + Δ_t x_t B_tᵀ per channel, y_t = S_t C_t + D x_t, out = W_o (y ⊙ SiLU(z))."""
    layer = mixer(registry, "mamba", **MAMBA)
    randomize(layer)
    b, inner = 2, 64
    u = torch.randn(b, T, C)
    ctx = context(registry, T, capture=True)
    got = layer(u, ctx)

    xs, z = (u @ layer.in_proj.weight.T).split([inner, inner], dim=-1)
    xs = F.silu(layer.conv1d(xs))  # the convolution itself is tested against its sum in test_recurrent_pieces
    dt_in, B, C_ = (xs @ layer.x_proj.weight.T).split([5, 6, 6], dim=-1)
    delta = F.softplus(dt_in @ layer.dt_proj.weight.T + layer.dt_proj.bias)  # (b, T, inner)
    A = -torch.exp(layer.A_log)  # (inner, n)
    S = torch.zeros(b, inner, 6)
    ys, norms = [], []
    for t in range(T):
        S = torch.exp(delta[:, t, :, None] * A) * S + (delta[:, t] * xs[:, t])[..., None] * B[:, t, None, :]
        ys.append((S * C_[:, t, None, :]).sum(-1) + layer.D * xs[:, t])
        norms.append(S.pow(2).sum((1, 2)).sqrt())
    expected = (torch.stack(ys, 1) * F.silu(z)) @ layer.out_proj.weight.T
    close = dict(rtol=1e-5, atol=1e-4)  # float32 sums in another order over hundreds of tokens
    torch.testing.assert_close(got, expected, **close)
    (reported,) = ctx.recorder._reported
    torch.testing.assert_close(reported, torch.stack(norms, 1)[:, None], **close)  # (b, 1, T)


@pytest.mark.parametrize("T", [1, 2, 17, 50])
def test_selective_scan_in_chunks_is_the_recurrence(T):
    from gptzoo.plugins.mamba import selective_scan

    torch.manual_seed(0)
    log_decays, inputs, state = -torch.rand(2, T, 3, 4) * 2, torch.randn(2, T, 3, 4), torch.randn(2, 3, 4)
    expected, S = [], state
    for t in range(T):
        S = torch.exp(log_decays[:, t]) * S + inputs[:, t]
        expected.append(S)
    every, last = selective_scan(log_decays, inputs, state)
    torch.testing.assert_close(every, torch.stack(expected, 1))
    torch.testing.assert_close(last, S)


def test_mamba_published_initialisation(registry):
    layer = mixer(registry, "mamba", **MAMBA)
    assert torch.allclose(torch.exp(layer.A_log), torch.arange(1.0, 7.0).expand(64, 6))
    assert torch.equal(layer.D, torch.ones(64))
    assert layer.dt_proj.weight.abs().max() <= 5**-0.5
    delta = F.softplus(layer.dt_proj.bias)
    assert ((delta >= 0.001 - 1e-7) & (delta <= 0.1 + 1e-7)).all()
    assert layer.cache_bytes(1) == layer.cache_bytes(5_000) == 64 * 3 * 4 + 64 * 6 * 4


def test_mamba_passes_the_kit_with_jambas_norms(registry):
    check_component("attention", "mamba", registry, d_state=4, bcdt_norm="learned")


@pytest.mark.parametrize("multipliers", [None, (0.5, 1.5, 0.8, 1.25, 2.0)])
@torch.no_grad()
def test_mamba2_without_the_norm_matches_transformers_falcon_h1_mixer(registry, multipliers):
    """Falcon-H1's Mamba-2: its own inner width (mamba_d_ssm), y ⊙ SiLU(z) without the norm, and
    its µP multipliers on the parts of in_proj's output (ssm_multipliers)."""
    transformers = pytest.importorskip("transformers")
    from transformers.cache_utils import DynamicCache
    from transformers.models.falcon_h1.modeling_falcon_h1 import FalconH1Mixer, compute_mup_vector

    config = transformers.FalconH1Config(
        hidden_size=C,
        num_attention_heads=NH,
        num_key_value_heads=NH,
        mamba_d_ssm=48,
        mamba_n_heads=6,
        mamba_n_groups=2,
        mamba_d_state=6,
        mamba_chunk_size=4,
        mamba_rms_norm=False,
        ssm_multipliers=list(multipliers or [1.0] * 5),
        num_hidden_layers=1,
    )
    reference = FalconH1Mixer(config, layer_idx=0).eval()
    randomize(reference)
    reference.mup_vector = compute_mup_vector(config)  # the decoder layer sets it at initialisation
    sizes = dict(d_inner=48, head_dim=8, n_groups=2, d_state=6, chunk_size=5, gated_norm=False)
    layer = mixer(registry, "mamba2", in_proj_multipliers=multipliers, **sizes)
    state = dict(reference.state_dict())
    state["conv1d.conv.weight"], state["conv1d.conv.bias"] = state.pop("conv1d.weight"), state.pop("conv1d.bias")
    layer.load_state_dict(state)

    x = torch.randn(2, 15, C)
    expected = reference(x)
    torch.testing.assert_close(layer(x, context(registry, 15)), expected)
    cache = DynamicCache(config=config)
    steps = [reference(x[:, :9], cache=cache)] + [reference(x[:, t : t + 1], cache=cache) for t in range(9, 15)]
    torch.testing.assert_close(in_pieces(layer, registry, x, [9] + [1] * 6), torch.cat(steps, 1))


@pytest.mark.parametrize("name", ["mamba2", "mamba"])
def test_dropout_acts_in_training_only(registry, name):
    dims = Dims(vocab_size=50, context_length=64, d_model=C, n_heads=NH, n_kv_heads=NH, n_layers=1, dropout=0.5)
    layer = ComponentSpec.resolve("attention", {"name": name, "d_state": 4}, registry).build(dims)
    x = torch.randn(1, 6, C)
    layer.train()
    assert not torch.equal(layer(x, context(registry, 6)), layer(x, context(registry, 6)))
    layer.eval()
    assert torch.equal(layer(x, context(registry, 6)), layer(x, context(registry, 6)))
