"""Each built-in variant against its formula, computed here by hand from the paper's definition."""

import math

import pytest
import torch

from gptzoo.core import AttentionContext, Dims, NoParams
from gptzoo.plugins.attention import FusedAttention, SDPAAttention
from gptzoo.plugins.feed_forward import GeGLUFeedForward, GLUParams, SwiGLUFeedForward, gelu_tanh
from gptzoo.plugins.norms import LayerNorm, LayerNormParams, RMSNorm, RMSNormParams
from gptzoo.plugins.positional import (
    ALiBiPositions,
    NoPositions,
    RotaryParams,
    RotaryPositions,
    SinusoidalParams,
    SinusoidalPositions,
    alibi_slopes,
)
from gptzoo.plugins.teaching_attention import PerHeadAttention


def dims(**kw):
    base = dict(vocab_size=50, context_length=16, d_model=32, n_heads=4, n_kv_heads=4, n_layers=1)
    return Dims(**(base | kw))


def test_sinusoidal_table_matches_the_formula():
    d, context = 8, 12
    table = SinusoidalPositions(SinusoidalParams(), dims(d_model=d, context_length=context)).table
    expected = torch.empty(context, d, dtype=torch.float64)
    for p in range(context):
        for i in range(d // 2):
            expected[p, 2 * i] = math.sin(p / 10000 ** (2 * i / d))
            expected[p, 2 * i + 1] = math.cos(p / 10000 ** (2 * i / d))
    torch.testing.assert_close(table.double(), expected, atol=1e-6, rtol=0)
    # The table is added scaled (by 0.02 unless told otherwise), to balance GPT-init embeddings.
    x = torch.full((1, 3, d), 0.5)
    for params, scale in ((SinusoidalParams(), 0.02), (SinusoidalParams(scale=1.0), 1.0)):
        embedded = SinusoidalPositions(params, dims(d_model=d, context_length=context)).embed(
            x, torch.tensor([[4, 5, 6]])
        )
        torch.testing.assert_close(embedded[0].double(), 0.5 + scale * expected[4:7], atol=1e-6, rtol=0)


def test_gelu_is_the_tanh_approximation():
    x = torch.linspace(-6, 6, 101, dtype=torch.float64)
    expected = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    torch.testing.assert_close(gelu_tanh(x), expected, atol=1e-12, rtol=0)
    # and it is not the exact erf form, which differs by up to ~5e-4
    exact = 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    assert (gelu_tanh(x) - exact).abs().max() > 1e-5


def test_layernorm_uses_the_biased_variance():
    torch.manual_seed(0)
    norm = LayerNorm(LayerNormParams(eps=1e-5), dims(d_model=6))
    with torch.no_grad():
        norm.weight.copy_(torch.randn(6))
        norm.bias.copy_(torch.randn(6))
    x = torch.randn(2, 3, 6)
    mean = x.sum(-1, keepdim=True) / 6
    var = ((x - mean) ** 2).sum(-1, keepdim=True) / 6  # biased: divide by n, not n - 1
    expected = (x - mean) / torch.sqrt(var + 1e-5) * norm.weight + norm.bias
    torch.testing.assert_close(norm(x), expected, atol=1e-5, rtol=1e-5)


def test_layernorm_without_bias_has_no_shift():
    norm = LayerNorm(LayerNormParams(bias=False), dims(d_model=6))
    assert norm.bias is None and [n for n, _ in norm.named_parameters()] == ["weight"]


def test_rmsnorm_matches_the_formula():
    torch.manual_seed(0)
    norm = RMSNorm(RMSNormParams(eps=1e-6), dims(d_model=6))
    with torch.no_grad():
        norm.weight.copy_(torch.randn(6))
    x = torch.randn(2, 3, 6)
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected, atol=1e-5, rtol=1e-5)


def test_alibi_slopes_for_a_power_of_two():
    assert alibi_slopes(8).tolist() == pytest.approx([2**-k for k in range(1, 9)])


def test_alibi_slopes_for_12_heads_interleave_as_in_the_paper():
    # 8 geometric slopes 2^-1..2^-8, then every other slope of the 16-head series (2^-0.5, 2^-1.5, ...).
    expected = [2**-k for k in range(1, 9)] + [2**-0.5, 2**-1.5, 2**-2.5, 2**-3.5]
    assert alibi_slopes(12).tolist() == pytest.approx(expected)


def test_alibi_bias_is_minus_slope_times_distance():
    alibi = ALiBiPositions(NoParams(), dims(n_heads=2, d_model=8))
    bias = alibi.score_bias(torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 2]]))  # (1, nh, T, Tk)
    slopes = [2**-4, 2**-8]  # 2 heads: 2^(-8/2), 2^(-16/2)
    for h, m in enumerate(slopes):
        for i in range(3):
            for j in range(i + 1):
                assert bias[0, h, i, j].item() == pytest.approx(-m * (i - j))


def _rope(hs=8, context=16):
    return RotaryPositions(RotaryParams(base=10000.0), dims(d_model=hs * 4, context_length=context))


def test_rope_is_complex_multiplication_on_half_split_pairs():
    hs = 8
    rope = _rope(hs)
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 5, hs), torch.randn(1, 1, 5, hs)
    positions = torch.tensor([[0, 3, 4, 9, 15]])
    q_rot, k_rot = rope.rotate(q, k, positions)
    theta = torch.tensor([10000 ** (-2 * j / hs) for j in range(hs // 2)], dtype=torch.float64)
    for x, x_rot in ((q, q_rot), (k, k_rot)):
        z = torch.complex(x[..., : hs // 2].double(), x[..., hs // 2 :].double())  # (x_j, x_{j+hs/2}) pairs
        turned = z * torch.exp(1j * positions[0, :, None].double() * theta)
        expected = torch.cat([turned.real, turned.imag], dim=-1)
        torch.testing.assert_close(x_rot.double(), expected, atol=1e-5, rtol=1e-5)


def test_rope_preserves_norms_and_scores_depend_on_relative_position_only():
    hs = 8
    rope = _rope(hs)
    torch.manual_seed(1)
    q, k = torch.randn(1, 1, 1, hs), torch.randn(1, 1, 1, hs)

    def score(p_q, p_k):
        q_rot, _ = rope.rotate(q, k, torch.tensor([[p_q]]))
        _, k_rot = rope.rotate(q, k, torch.tensor([[p_k]]))
        return (q_rot * k_rot).sum().item()

    q_rot, k_rot = rope.rotate(q, k, torch.tensor([[7]]))
    assert q_rot.norm().item() == pytest.approx(q.norm().item(), rel=1e-5)
    assert k_rot.norm().item() == pytest.approx(k.norm().item(), rel=1e-5)
    assert score(5, 2) == pytest.approx(score(13, 10), abs=1e-5) == pytest.approx(score(3, 0), abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)


def test_swiglu_matches_the_formula_with_its_own_weights():
    torch.manual_seed(0)
    ffn = SwiGLUFeedForward(GLUParams(hidden=24), dims(d_model=8))
    x = torch.randn(2, 3, 8)
    Wg, Wu, Wo = ffn.gate_proj.weight.T, ffn.up_proj.weight.T, ffn.out_proj.weight.T
    gate = x @ Wg
    expected = ((gate * torch.sigmoid(gate)) * (x @ Wu)) @ Wo  # silu(z) = z·sigmoid(z)
    torch.testing.assert_close(ffn(x), expected, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_geglu_gates_with_tanh_gelu_as_gemmas_mlp():
    from transformers import GemmaConfig
    from transformers.models.gemma.modeling_gemma import GemmaMLP

    torch.manual_seed(0)
    ffn = GeGLUFeedForward(GLUParams(hidden=24), dims(d_model=8))
    x = torch.randn(2, 3, 8)
    gate = x @ ffn.gate_proj.weight.T
    tanh_gelu = 0.5 * gate * (1 + torch.tanh(math.sqrt(2 / math.pi) * (gate + 0.044715 * gate**3)))
    torch.testing.assert_close(
        ffn(x), (tanh_gelu * (x @ ffn.up_proj.weight.T)) @ ffn.out_proj.weight.T, atol=1e-5, rtol=1e-5
    )
    gemma = GemmaMLP(GemmaConfig(hidden_size=8, intermediate_size=24, hidden_activation="gelu_pytorch_tanh"))
    for ours, theirs in (
        (ffn.gate_proj, gemma.gate_proj),
        (ffn.up_proj, gemma.up_proj),
        (ffn.out_proj, gemma.down_proj),
    ):
        theirs.weight.copy_(ours.weight)
    torch.testing.assert_close(ffn(x), gemma(x), atol=1e-6, rtol=1e-6)


def test_swiglu_default_hidden_is_8_thirds_rounded_up_to_64():
    assert SwiGLUFeedForward(GLUParams(), dims(d_model=256)).gate_proj.out_features == 704  # 8/3·256 = 682.7 -> 704


# ---- the three attention implementations against a hand-written reference ------------------


def reference_attention(x, qkv_weight, qkv_bias, out_weight, out_bias, n_heads, n_kv_heads, bias=None):
    """Causal multi-head attention written out from the shared layout: rows [queries | keys | values]."""
    B, T, C = x.shape
    hs = C // n_heads
    proj = x @ qkv_weight.T + (qkv_bias if qkv_bias is not None else 0)
    q = proj[..., : n_heads * hs]
    k = proj[..., n_heads * hs : (n_heads + n_kv_heads) * hs]
    v = proj[..., (n_heads + n_kv_heads) * hs :]
    heads = []
    for h in range(n_heads):
        kv = h // (n_heads // n_kv_heads)  # query head h reads key/value head h // group
        qh, kh, vh = (t[..., i * hs : (i + 1) * hs] for t, i in ((q, h), (k, kv), (v, kv)))
        scores = qh @ kh.transpose(-1, -2) / math.sqrt(hs)  # (B, T, T)
        if bias is not None:
            scores = scores + bias[:, h]
        future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
        heads.append(torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1) @ vh)
    return torch.cat(heads, dim=-1) @ out_weight.T + out_bias


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
@pytest.mark.parametrize("positional", ["none", "alibi"])
@pytest.mark.parametrize("qkv_bias", [False, True])
def test_attention_variants_agree_with_the_reference(n_kv_heads, positional, qkv_bias):
    d = dims(n_kv_heads=n_kv_heads, qkv_bias=qkv_bias, dropout=0.0)
    torch.manual_seed(0)
    sdpa = SDPAAttention(SDPAAttention.Params(), d)
    for p in sdpa.parameters():  # random biases too, so a misplaced bias row shows
        torch.nn.init.normal_(p, std=0.3)
    state = sdpa.state_dict()
    pos = (ALiBiPositions if positional == "alibi" else NoPositions)(NoParams(), d)
    x = torch.randn(2, 7, d.d_model)
    positions = torch.arange(7)[None]
    ctx = AttentionContext(pos, positions, positions)
    bias = pos.score_bias(positions, positions)
    expected = reference_attention(
        x,
        state["qkv.weight"],
        state.get("qkv.bias"),
        state["out_proj.weight"],
        state["out_proj.bias"],
        4,
        n_kv_heads,
        bias,
    )
    for impl in (SDPAAttention, FusedAttention, PerHeadAttention):
        attention = impl(impl.Params(), d).eval()
        attention.load_state_dict(state)
        torch.testing.assert_close(
            attention(x, ctx), expected, atol=1e-5, rtol=0, msg=lambda m, impl=impl: f"{impl.__name__}: {m}"
        )
        assert set(attention.state_dict()) == set(state), f"{impl.__name__} does not save the shared layout"
