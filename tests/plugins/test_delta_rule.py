"""Delta-rule mixers against the papers' recurrence written out token by token, and against
transformers' own PyTorch layers (Qwen3-Next's and OLMo Hybrid's Gated DeltaNet, Kimi Linear's KDA)
holding the same weights."""

import pytest
import torch
from transformers import KimiLinearConfig, OlmoHybridConfig, Qwen3NextConfig
from transformers.models.kimi_linear.modeling_kimi_linear import (
    KimiLinearDeltaAttention,
    chunk_kimi_delta_attention,
    recurrent_kimi_delta_attention,
)
from transformers.models.olmo_hybrid.modeling_olmo_hybrid import OlmoHybridGatedDeltaNet
from transformers.models.qwen3_next.modeling_qwen3_next import (
    Qwen3NextGatedDeltaNet,
    torch_chunk_gated_delta_rule,
    torch_recurrent_gated_delta_rule,
)

from gptzoo.core import GPT, AttentionContext, ConfigError, Recorder
from gptzoo.plugins._delta_rule import chunked_delta_rule, delta_rule_step, implicit_attention
from gptzoo.registry import make_registry
from gptzoo.testing import check_component

REGISTRY = make_registry(entry_points=False)
D_MODEL = 32
# Against transformers' layers: their PyTorch path runs the chunked recurrence in fp32 whatever the inputs'
# dtype, and with outputs up to about 5 it was up to 6e-5 away from ours computed in float64 on an AVX-512
# CPU (ours in fp32: 1e-5), so its rounding, not ours, sets the tolerance.
TWIN = dict(atol=1e-4, rtol=1e-4)


def naive_delta_rule(q, k, v, beta, alpha, state=None):
    """The papers' recurrence, one token at a time, with S (dv × dk) per head:
    S_t = S_{t-1} Diag(α_t) (I - β_t k_t k_tᵀ) + β_t v_t k_tᵀ,  o_t = S_t q_t.
    q, k (B, h, T, dk), v (B, h, T, dv), beta (B, h, T), alpha (B, h, T, dk) -> o (B, h, T, dv), S (B, h, dv, dk)."""
    B, h, T, dk = k.shape
    S = torch.zeros(B, h, v.size(-1), dk, dtype=torch.float64) if state is None else state
    eye = torch.eye(dk, dtype=torch.float64)
    outputs = []
    for t in range(T):
        k_t, q_t = k[:, :, t, :, None], q[:, :, t, :, None]  # (B, h, dk, 1)
        b_t = beta[:, :, t, None, None]
        transition = torch.diag_embed(alpha[:, :, t]) @ (eye - b_t * k_t @ k_t.transpose(-1, -2))
        S = S @ transition + b_t * v[:, :, t, :, None] @ k_t.transpose(-1, -2)
        outputs.append((S @ q_t)[..., 0])
    return torch.stack(outputs, 2), S


def random_inputs(B=2, h=3, T=37, dk=5, dv=4, channelwise=False, max_beta=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(B, h, T, dk, generator=g, dtype=torch.float64), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(B, h, T, dk, generator=g, dtype=torch.float64), dim=-1)
    v = torch.randn(B, h, T, dv, generator=g, dtype=torch.float64)
    beta = max_beta * torch.rand(B, h, T, generator=g, dtype=torch.float64)
    log_decay = -torch.rand(B, h, T, dk if channelwise else 1, generator=g, dtype=torch.float64)
    return q, k, v, beta, log_decay


@pytest.mark.parametrize("decay", ["none", "per_head", "per_channel"])
@pytest.mark.parametrize("chunk_size", [1, 8, 64])
def test_chunked_form_is_the_recurrence_written_out(decay, chunk_size):
    q, k, v, beta, log_decay = random_inputs(channelwise=decay == "per_channel", max_beta=2.0)
    if decay == "none":
        log_decay = None
    alpha = torch.ones_like(k) if log_decay is None else log_decay.exp().expand_as(k)
    start = torch.randn(2, 3, 5, 4, dtype=torch.float64)  # (B, h, dk, dv): ours; the paper's is its transpose
    expected, expected_state = naive_delta_rule(q, k, v, beta, alpha, start.transpose(-1, -2))
    y, state = chunked_delta_rule(q, k, v, beta, log_decay, start, chunk_size)
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(state, expected_state.transpose(-1, -2))


@pytest.mark.parametrize("decay", ["none", "per_head", "per_channel"])
def test_a_long_text_worked_through_in_segments_of_chunks_is_the_recurrence_written_out(decay):
    # 300 tokens in chunks of 16: 19 chunks, the last ragged, in segments of SEGMENT_TOKENS // 16 chunks.
    q, k, v, beta, log_decay = random_inputs(B=1, h=2, T=300, channelwise=decay == "per_channel", max_beta=2.0)
    log_decay = None if decay == "none" else log_decay / 8  # decays that let early tokens still count
    alpha = torch.ones_like(k) if log_decay is None else log_decay.exp().expand_as(k)
    start = torch.randn(1, 2, 5, 4, dtype=torch.float64)
    expected, expected_state = naive_delta_rule(q, k, v, beta, alpha, start.transpose(-1, -2))
    y, state = chunked_delta_rule(q, k, v, beta, log_decay, start, 16)
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(state, expected_state.transpose(-1, -2))


@pytest.mark.parametrize("channelwise", [False, True])
def test_one_step_at_a_time_is_the_recurrence(channelwise):
    q, k, v, beta, log_decay = random_inputs(T=9, channelwise=channelwise)
    expected, _ = naive_delta_rule(q, k, v, beta, log_decay.exp().expand_as(k))
    state = torch.zeros(2, 3, 5, 4, dtype=torch.float64)
    steps = []
    for t in range(9):
        y, state = delta_rule_step(*(x[:, :, t : t + 1] for x in (q, k, v, beta, log_decay)), state)
        steps.append(y)
    torch.testing.assert_close(torch.cat(steps, 2), expected)


@pytest.mark.parametrize("channelwise", [False, True])
def test_implicit_attention_times_the_values_is_the_output(channelwise):
    q, k, v, beta, log_decay = random_inputs(channelwise=channelwise, max_beta=2.0)
    expected, _ = naive_delta_rule(q, k, v, beta, log_decay.exp().expand_as(k))
    A = implicit_attention(q, k, beta, log_decay)  # (B, h, T, T)
    torch.testing.assert_close(A @ v, expected)
    assert (A.triu(1) == 0).all()


@pytest.mark.parametrize("gated", [True, False])
def test_chunked_and_recurrent_forms_match_transformers_functions(gated):
    """Qwen3-Next's torch_chunk/recurrent_gated_delta_rule: (B, T, heads, ·) layout, q/k normalised
    inside, 2 query/key heads shared by 4 value heads, from a given state. Without the gate
    (g = 0: no decay) they are DeltaNet's rule, which ``deltanet`` runs with no decay at all."""
    torch.manual_seed(0)
    B, T, hk, h, dk, dv = 2, 45, 2, 4, 6, 5
    q, k = torch.randn(B, T, hk, dk), torch.randn(B, T, hk, dk)
    v, beta, g = torch.randn(B, T, h, dv), torch.rand(B, T, h), -torch.rand(B, T, h) if gated else torch.zeros(B, T, h)
    start = torch.randn(B, h, dk, dv)
    expected, expected_state = torch_chunk_gated_delta_rule(
        q, k, v, g, beta, initial_state=start, output_final_state=True, use_qk_l2norm_in_kernel=True
    )
    stepped, _ = torch_recurrent_gated_delta_rule(
        q, k, v, g, beta, initial_state=start, output_final_state=True, use_qk_l2norm_in_kernel=True
    )

    def ours(x):  # (B, T, heads, d) -> (B, h, T, d), q/k heads repeated for the value heads they serve
        return x.transpose(1, 2).repeat_interleave(h // x.size(2), dim=1)

    qn = ours(torch.nn.functional.normalize(q, dim=-1, eps=0)) / dk**0.5
    kn = ours(torch.nn.functional.normalize(k, dim=-1, eps=0))
    log_decay = g.transpose(1, 2)[..., None] if gated else None
    y, state = chunked_delta_rule(qn, kn, ours(v), beta.transpose(1, 2), log_decay, start, 16)
    torch.testing.assert_close(y.transpose(1, 2), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(state, expected_state, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(y.transpose(1, 2), stepped, atol=1e-5, rtol=1e-4)


# ---- whole layers against transformers' ------------------------------------------------------


def model(name, positional="none", n_kv_heads=None, **params):
    torch.manual_seed(0)
    config = REGISTRY.model_config(
        dict(
            vocab_size=50,
            context_length=64,
            d_model=D_MODEL,
            n_layers=1,
            n_heads=4,
            n_kv_heads=n_kv_heads,
            positional=positional,
            attention={"name": name, **params},
        )
    )
    return GPT(config).eval()


def randomize(module):
    """Every parameter redrawn (norm weights and decay parameters included), so no default hides a mistake."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.dim() == 1 else 0.0))


def run(mixer, positional, x, valid=None, cache=None, offset=0):
    T = x.size(1)
    positions = torch.arange(offset, offset + T)[None]
    ctx = AttentionContext(positional, positions, positions, offset=offset, key_valid=valid)
    return mixer(x, ctx, cache)


def qwen3_next_twin(mixer, eps):
    """Qwen3NextGatedDeltaNet with ``mixer``'s weights: its fused projections hold, per query/key
    head, [q, k, the values and gates of the value heads it serves] and [β, decay] inputs."""
    nk, nv, dk, dv = mixer.n_k_heads, mixer.n_v_heads, mixer.head_k_dim, mixer.head_v_dim
    config = Qwen3NextConfig(
        hidden_size=D_MODEL,
        linear_num_key_heads=nk,
        linear_num_value_heads=nv,
        linear_key_head_dim=dk,
        linear_value_head_dim=dv,
        linear_conv_kernel_dim=mixer.conv1d.kernel_size,
        rms_norm_eps=eps,
        num_hidden_layers=1,
        layer_types=["linear_attention"],
    )
    twin = Qwen3NextGatedDeltaNet(config, 0).eval()
    r = nv // nk
    per_key = lambda w, width: w.view(nk, width, -1)  # noqa: E731
    qkvz = torch.cat(
        [
            per_key(mixer.q_proj.weight, dk),
            per_key(mixer.k_proj.weight, dk),
            per_key(mixer.v_proj.weight, r * dv),
            per_key(mixer.g_proj.weight, r * dv),
        ],
        dim=1,
    )
    ba = torch.cat([per_key(mixer.b_proj.weight, r), per_key(mixer.a_proj.weight, r)], dim=1)
    with torch.no_grad():
        twin.in_proj_qkvz.weight.copy_(qkvz.reshape(-1, D_MODEL))
        twin.in_proj_ba.weight.copy_(ba.reshape(-1, D_MODEL))
        twin.conv1d.weight.copy_(mixer.conv1d.conv.weight)
        twin.A_log.copy_(mixer.A_log)
        twin.dt_bias.copy_(mixer.dt_bias)
        twin.norm.weight.copy_(mixer.o_norm.weight)
        twin.out_proj.weight.copy_(mixer.out_proj.weight)
    return twin


@pytest.mark.parametrize("num_k_heads", [4, 2])
def test_gated_deltanet_is_qwen3_next_layer(num_k_heads):
    m = model("gated_deltanet", num_k_heads=num_k_heads, head_k_dim=6, head_v_dim=5)
    mixer = m.blocks[0].attention
    randomize(mixer)
    twin = qwen3_next_twin(mixer, eps=1e-6)
    x = torch.randn(2, 53, D_MODEL)
    with torch.no_grad():
        torch.testing.assert_close(run(mixer, m.positional, x), twin(x), **TWIN)
        # Left padding: transformers zeroes the padded inputs; the real tokens' outputs agree.
        valid = torch.ones(2, 53, dtype=torch.bool)
        valid[1, :7] = False
        ours, theirs = run(mixer, m.positional, x, valid), twin(x, attention_mask=valid.long())
        torch.testing.assert_close(ours[valid], theirs[valid], **TWIN)


def test_gated_deltanet_with_negative_eigenvalues_is_olmo_hybrid_layer():
    m = model("gated_deltanet", num_k_heads=2, head_k_dim=6, head_v_dim=12, allow_neg_eigval=True, norm_eps=1e-5)
    mixer = m.blocks[0].attention
    randomize(mixer)
    config = OlmoHybridConfig(
        hidden_size=D_MODEL,
        num_attention_heads=4,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=6,
        linear_value_head_dim=12,
        linear_allow_neg_eigval=True,
        num_hidden_layers=2,
    )
    twin = OlmoHybridGatedDeltaNet(config, 0).eval()
    names = {"o_proj": "out_proj", "conv1d": "conv1d.conv"}
    with torch.no_grad():
        for name, p in twin.named_parameters():
            ours = name.rsplit(".", 1)
            ours = ".".join([names.get(ours[0], ours[0]), *ours[1:]]) if len(ours) == 2 else name
            p.copy_(mixer.get_parameter(ours))
        x = torch.randn(2, 40, D_MODEL)
        torch.testing.assert_close(run(mixer, m.positional, x), twin(x), **TWIN)


def test_decoding_in_pieces_through_the_cache_equals_one_forward():
    m = model("gated_deltanet", num_k_heads=2)
    mixer = m.blocks[0].attention
    randomize(mixer)
    x = torch.randn(2, 40, D_MODEL)
    cache = mixer.new_cache(2, None, x.device, x.dtype)
    with torch.no_grad():
        expected = run(mixer, m.positional, x)
        pieces, start = [], 0
        for n in (21, 1, 3, 7, 1, 7):  # a prefill over two chunks, then steps of one token and more
            pieces.append(run(mixer, m.positional, x[:, start : start + n], cache=cache, offset=start))
            start += n
    torch.testing.assert_close(torch.cat(pieces, 1), expected, atol=1e-5, rtol=1e-4)
    assert cache.nbytes() == 2 * mixer.cache_bytes(10**6)


def test_deltanet_has_no_decay_and_no_output_gate_by_default():
    m = model("deltanet")
    mixer = m.blocks[0].attention
    names = {n for n, _ in mixer.named_parameters()}
    assert not names & {"A_log", "dt_bias", "a_proj.weight", "g_proj.weight"}
    assert model("deltanet", output_gate=True).blocks[0].attention.g_proj.weight.shape == (32, 32)


def test_value_heads_must_share_query_key_heads_evenly():
    with pytest.raises(ConfigError, match="4 value heads cannot share 3 query/key heads"):
        model("gated_deltanet", num_k_heads=3)


def test_a_decaying_delta_rule_has_no_use_for_rotary_positions():
    with pytest.raises(ConfigError, match="positional 'rope' acts through rotate, which attention 'gated_deltanet'"):
        model("gated_deltanet", positional="rope")


def test_published_initialisation():
    mixer = model("gated_deltanet", num_heads=64, num_k_heads=8, head_k_dim=4).blocks[0].attention
    A = mixer.A_log.exp()
    dt = torch.nn.functional.softplus(mixer.dt_bias)
    assert (A > 0).all() and (A <= 16).all() and A.mean() > 4
    assert (dt >= 1e-4 - 1e-9).all() and (dt <= 0.1 + 1e-6).all() and dt.min() < 0.01
    assert (mixer.o_norm.weight == 1).all()


@pytest.mark.slow
def test_kit_with_shared_key_heads_unequal_widths_and_negative_eigenvalues():
    check_component(
        "attention", "gated_deltanet", num_k_heads=2, head_k_dim=4, head_v_dim=6, allow_neg_eigval=True, chunk_size=8
    )


# ---- Kimi Delta Attention ------------------------------------------------------------------------


def test_chunked_and_recurrent_forms_match_kimi_linear_functions():
    """Kimi Linear's chunk/recurrent_kimi_delta_attention: a decay per key channel, from a given state."""
    torch.manual_seed(0)
    B, T, h, d = 2, 45, 3, 6
    q, k, v = torch.randn(B, T, h, d), torch.randn(B, T, h, d), torch.randn(B, T, h, d)
    beta, g = torch.rand(B, T, h), -torch.rand(B, T, h, d)
    start = torch.randn(B, h, d, d)
    expected, expected_state = chunk_kimi_delta_attention(
        q, k, v, g, beta, initial_state=start, output_final_state=True, use_qk_l2norm_in_kernel=True
    )
    stepped, _ = recurrent_kimi_delta_attention(
        q, k, v, g, beta, initial_state=start, output_final_state=True, use_qk_l2norm_in_kernel=True
    )
    qn = torch.nn.functional.normalize(q, dim=-1, eps=0).transpose(1, 2) / d**0.5
    kn = torch.nn.functional.normalize(k, dim=-1, eps=0).transpose(1, 2)
    y, state = chunked_delta_rule(qn, kn, v.transpose(1, 2), beta.transpose(1, 2), g.transpose(1, 2), start, 16)
    torch.testing.assert_close(y.transpose(1, 2), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(state, expected_state, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(y.transpose(1, 2), stepped, atol=1e-5, rtol=1e-4)


def kimi_linear_twin(mixer):
    """KimiLinearDeltaAttention with ``mixer``'s weights (the same names, its forget gate's apart)."""
    config = KimiLinearConfig(
        hidden_size=D_MODEL,
        linear_num_heads=mixer.n_v_heads,
        linear_head_dim=mixer.head_k_dim,
        linear_conv_kernel_dim=mixer.conv1d.kernel_size,
        rms_norm_eps=mixer.params.norm_eps,
        num_hidden_layers=1,
    )
    twin = KimiLinearDeltaAttention(config, 0).eval()
    names = {"o_proj": "out_proj", "conv1d": "conv1d.conv"}
    with torch.no_grad():
        for name, p in twin.named_parameters():
            module, _, leaf = name.removeprefix("forget_gate.").rpartition(".")
            ours = mixer.get_parameter(f"{names.get(module, module)}.{leaf}" if module else leaf)
            p.copy_(ours.view_as(p))
    return twin


def test_kimi_delta_is_kimi_linear_layer():
    m = model("kimi_delta", head_dim=6)
    mixer = m.blocks[0].attention
    randomize(mixer)
    twin = kimi_linear_twin(mixer)
    x = torch.randn(2, 53, D_MODEL)
    with torch.no_grad():
        torch.testing.assert_close(run(mixer, m.positional, x), twin(x), **TWIN)
        valid = torch.ones(2, 53, dtype=torch.bool)
        valid[0, :9] = False
        ours, theirs = run(mixer, m.positional, x, valid), twin(x, attention_mask=valid.long())
        # Kimi Linear decays its (empty) state over the padding too: the same outputs, with the
        # within-chunk decays accumulated over more tokens, so rounded a little differently.
        torch.testing.assert_close(ours[valid], theirs[valid], atol=1e-4, rtol=1e-3)


def test_kimi_delta_decodes_in_pieces_as_one_forward():
    m = model("kimi_delta")
    mixer = m.blocks[0].attention
    randomize(mixer)
    x = torch.randn(2, 40, D_MODEL)
    cache = mixer.new_cache(2, None, x.device, x.dtype)
    with torch.no_grad():
        expected = run(mixer, m.positional, x)
        pieces, start = [], 0
        for n in (21, 1, 3, 7, 1, 7):
            pieces.append(run(mixer, m.positional, x[:, start : start + n], cache=cache, offset=start))
            start += n
    torch.testing.assert_close(torch.cat(pieces, 1), expected, atol=1e-5, rtol=1e-4)


def test_kimi_delta_has_no_key_value_head_groups():
    with pytest.raises(ConfigError, match="no key/value head groups"):
        model("kimi_delta", n_kv_heads=2)
    assert model("kimi_delta", num_heads=2, n_kv_heads=2).blocks[0].attention.n_v_heads == 2


def test_kimi_delta_published_initialisation():
    mixer = model("kimi_delta", num_heads=64, head_dim=4).blocks[0].attention
    A = mixer.A_log.exp()
    dt = torch.nn.functional.softplus(mixer.dt_bias)
    assert (A >= 1).all() and (A <= 16).all()
    assert (dt >= 1e-4 - 1e-9).all() and (dt <= 0.1 + 1e-6).all() and dt.min() < 0.01


# ---- precision and the hybrids -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["deltanet", "gated_deltanet", "kimi_delta"])
def test_bfloat16_under_autocast_and_cast_whole_stays_near_float32(name):
    m = model(name, chunk_size=8)
    idx = torch.randint(0, 50, (2, 40))
    with torch.no_grad():
        expected = m(idx)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = m(idx)
        m.to(torch.bfloat16)
        cache = m.new_cache(2)
        decoded = torch.cat(
            [m(idx[:, :20], cache=cache)] + [m(idx[:, t : t + 1], cache=cache) for t in range(20, 40)], 1
        )
    assert cache.layers[0].state.dtype == torch.float32
    for got in (autocast, decoded):
        torch.testing.assert_close(got.float(), expected, atol=2e-2, rtol=0)


@pytest.mark.parametrize(
    "style, offers",
    [
        ("qwen3-next-style", ["implicit_attention"] * 3 + ["probabilities"]),
        ("kimi-linear-style", ["implicit_attention"] * 3 + ["probabilities"]),
    ],
)
def test_the_hybrid_styles_inspect_each_layer_as_it_computes_and_decode_past_their_context(style, offers):
    from pathlib import Path

    from gptzoo.recipes.config.schema import load_run_config

    path = Path(__file__).resolve().parents[2] / "configs" / f"{style}.toml"
    config = load_run_config(path, ["model.vocab_size=512"]).model
    torch.manual_seed(0)
    m = GPT(config).eval()
    recorder = Recorder()
    idx = torch.randint(0, 512, (1, config.context_length + 6))
    with torch.no_grad():
        m(idx[:, :12], recorder=recorder)
        assert m.extension_refusal() is None  # the softmax layer's keys grow past the context; the states stay
        cache = m.new_cache(1, idx.size(1))
        steps = [m(idx[:, :5], cache=cache)] + [m(idx[:, t : t + 1], cache=cache) for t in range(5, idx.size(1))]
        torch.testing.assert_close(torch.cat(steps, 1), m(idx), atol=1e-4, rtol=1e-4)
    assert recorder.offers == offers


@pytest.mark.parametrize("name", ["deltanet", "gated_deltanet", "kimi_delta"])
def test_dropout_acts_in_training_only(name):
    config = REGISTRY.model_config(
        dict(vocab_size=50, context_length=16, d_model=D_MODEL, n_layers=1, n_heads=4, positional="none")
        | {"attention": name, "dropout": 0.5}
    )
    mixer = GPT(config).blocks[0].attention
    x = torch.randn(1, 6, D_MODEL)
    positional = GPT(config).positional
    mixer.train()
    assert not torch.equal(run(mixer, positional, x), run(mixer, positional, x))
    mixer.eval()
    assert torch.equal(run(mixer, positional, x), run(mixer, positional, x))
