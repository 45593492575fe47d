"""Linear attention and its decayed forms against the recurrences written out token by token from
the papers' equations, and lightning attention against transformers' MiniMax layer."""

import math

import pytest
import torch
import torch.nn.functional as F

from gptzoo.core import GPT, AttentionContext, ConfigError, Dims, NoParams, PositionalEncoding, Recorder
from gptzoo.registry import make_registry

REGISTRY = make_registry(entry_points=False)


def mixer(name: str, n_heads: int = 4, n_kv_heads: int = 4, head_dim: int = 8, seed: int = 0, **params):
    config = REGISTRY.model_config(
        {
            "vocab_size": 50,
            "context_length": 64,
            "d_model": 32,
            "n_layers": 2,
            "n_heads": n_heads,
            "n_kv_heads": n_kv_heads,
            "head_dim": head_dim,
            "positional": "none",
            "attention": {"name": name, **params},
        }
    )
    torch.manual_seed(seed)
    layer = config.attention.build(config.dims()).eval().double()  # float64: rounding stays far below the tolerance
    for p in layer.parameters():  # larger than the init's, so every term matters in the comparison
        torch.nn.init.normal_(p, std=0.3)
    return layer


def context(T: int) -> AttentionContext:
    positions = torch.arange(T)[None]
    return AttentionContext(PositionalEncoding(NoParams(), Dims(50, 64, 32, 4, 4, 2)), positions, positions)


def run(layer, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return layer(x, context(x.size(1)))


# ---- linear --------------------------------------------------------------------------------------


def linear_by_the_equations(layer, x, phi, normalize, eps=1e-6):
    """Katharopoulos et al. (2020), eq. 5-6 as a recurrence: S_t = S_{t-1} + φ(k_t) v_tᵀ,
    z_t = z_{t-1} + φ(k_t), y_t = φ(q_t)ᵀ S_t / (φ(q_t)ᵀ z_t + eps); query head h reads the
    state of key/value head h // (nh / nkv)."""
    nh, nkv, hs = layer.dims.n_heads, layer.dims.n_kv_heads, layer.dims.head_size
    B, T, _ = x.shape
    q, k, v = (x @ layer.qkv.weight.T).split([nh * hs, nkv * hs, nkv * hs], dim=-1)
    q, k, v = q.view(B, T, nh, hs), k.view(B, T, nkv, hs), v.view(B, T, nkv, hs)
    y = torch.zeros(B, T, nh, hs, dtype=x.dtype)
    for b in range(B):
        for h in range(nh):
            g = h // (nh // nkv)
            S, z = torch.zeros(hs, hs, dtype=x.dtype), torch.zeros(hs, dtype=x.dtype)
            for t in range(T):
                S = S + torch.outer(phi(k[b, t, g]), v[b, t, g])
                z = z + phi(k[b, t, g])
                if normalize:
                    y[b, t, h] = phi(q[b, t, h]) @ S / (phi(q[b, t, h]) @ z + eps)
                else:
                    y[b, t, h] = phi(q[b, t, h]) / math.sqrt(hs) @ S
    return y.reshape(B, T, nh * hs) @ layer.out_proj.weight.T + layer.out_proj.bias


@pytest.mark.parametrize(
    "feature_map,phi,normalize",
    [
        ("elu_plus_one", lambda t: F.elu(t) + 1, True),
        ("relu", F.relu, True),
        ("identity", lambda t: t, False),
    ],
)
def test_linear_attention_follows_the_recurrence_across_chunks(feature_map, phi, normalize):
    layer = mixer("linear", n_kv_heads=2, feature_map=feature_map, normalize=normalize, chunk_size=8)
    x = torch.randn(2, 21, 32, dtype=torch.float64)  # two full chunks and a ragged one
    torch.testing.assert_close(run(layer, x), linear_by_the_equations(layer, x, phi, normalize))


def test_normalised_identity_features_are_refused():
    with pytest.raises(ConfigError, match="identity.*normalize = false"):
        mixer("linear", feature_map="identity")


def test_linear_attention_state_is_one_matrix_and_normaliser_per_key_value_head():
    layer = mixer("linear", n_kv_heads=2)
    cache = layer.new_cache(3, None, torch.device("cpu"), torch.float32)
    assert cache.state.shape == (3, 2, 1, 8, 9)  # S (8 × 8) beside z (8)
    assert layer.cache_bytes(10) == layer.cache_bytes(10_000) == 2 * 8 * 9 * 4


def implicit_attention(model: GPT, idx: torch.Tensor) -> list[torch.Tensor]:
    recorder = Recorder()
    with torch.no_grad():
        model(idx, recorder=recorder)
    assert recorder.offers == ["implicit_attention"] * len(model.blocks)
    return recorder.attentions


def test_inspection_reports_the_normalised_matrix_the_layer_multiplies_values_by():
    torch.manual_seed(0)
    model = GPT(
        REGISTRY.model_config(
            {"vocab_size": 50, "context_length": 16, "d_model": 32, "n_layers": 1, "n_heads": 4, "positional": "none"}
            | {"attention": "linear"}
        )
    ).eval()
    idx = torch.randint(0, 50, (1, 10))
    (A,) = implicit_attention(model, idx)
    layer = model.blocks[0].attention
    x = model.blocks[0].attn_norm(model.token_embedding(idx))
    q, k, _ = (x @ layer.qkv.weight.T).split(32, dim=-1)
    phi_q, phi_k = (F.elu(t.view(1, 10, 4, 8).transpose(1, 2)) + 1 for t in (q, k))  # (1, 4, 10, 8)
    scores = (phi_q @ phi_k.transpose(-1, -2)).tril()  # φ(q_i)·φ(k_j), j ≤ i
    torch.testing.assert_close(A, scores / (scores.sum(-1, keepdim=True) + 1e-6))


# ---- lightning (MiniMax-01) ----------------------------------------------------------------------


def minimax_lightning(n_layers: int, layer_idx: int, block_size: int):
    from transformers import MiniMaxConfig
    from transformers.models.minimax.modeling_minimax import MiniMaxLightningAttention

    config = MiniMaxConfig(
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=8,
        num_hidden_layers=n_layers,
        block_size=block_size,
        layer_types=["linear_attention"] * n_layers,
    )
    torch.manual_seed(1)
    return MiniMaxLightningAttention(config, layer_idx).eval()


def lightning_mixer(n_layers: int, layer_idx: int, chunk_size: int):
    config = REGISTRY.model_config(
        {
            "vocab_size": 50,
            "context_length": 64,
            "d_model": 32,
            "n_layers": n_layers,
            "n_heads": 4,
            "positional": "none",
            "attn_out_bias": False,
            "attention": {"name": "lightning", "chunk_size": chunk_size},
        }
    )
    return config.attention.build(config.dims(layer_idx)).eval()


@pytest.mark.parametrize("layer_idx", [0, 2, 3])
def test_lightning_attention_matches_transformers_minimax_layer(layer_idx):
    reference = minimax_lightning(n_layers=4, layer_idx=layer_idx, block_size=8)
    ours = lightning_mixer(n_layers=4, layer_idx=layer_idx, chunk_size=5)  # other chunks than the reference's blocks
    weights = {k: v for k, v in reference.state_dict().items() if k.split(".")[0] != "slope_rate" and "decay" not in k}
    ours.load_state_dict(weights)  # the same names: qkv_proj, output_gate, norm, out_proj
    x = torch.randn(2, 27, 32)  # three blocks of 8 and a ragged one
    with torch.no_grad():
        expected, _ = reference(x, position_embeddings=None, attention_mask=None)
    torch.testing.assert_close(run(ours, x), expected)


def test_lightning_attention_decodes_as_transformers_minimax_layer_decodes():
    from transformers.models.minimax.modeling_minimax import MiniMaxCache

    reference = minimax_lightning(n_layers=4, layer_idx=1, block_size=8)
    ours = lightning_mixer(n_layers=4, layer_idx=1, chunk_size=8)
    ours.load_state_dict({k: v for k, v in reference.state_dict().items() if k in ours.state_dict()})
    x = torch.randn(2, 14, 32)
    hf_cache, cache = MiniMaxCache(), ours.new_cache(2, None, torch.device("cpu"), torch.float32)
    expected, got = [], []
    with torch.no_grad():
        for start, end in ((0, 10), (10, 13), (13, 14)):  # a prefill of whole and ragged blocks, then steps
            piece = x[:, start:end]
            expected.append(reference(piece, position_embeddings=None, attention_mask=None, cache=hf_cache)[0])
            positions = torch.arange(start, end)[None]
            ctx = AttentionContext(context(1).positional, positions, torch.arange(end)[None], offset=start)
            got.append(ours(piece, ctx, cache))
    torch.testing.assert_close(torch.cat(got, 1), torch.cat(expected, 1))


def test_lightning_attention_follows_the_decayed_recurrence():
    """S_t = exp(-s_h) S_{t-1} + k_t v_tᵀ, y_t = q_tᵀ S_t, with MiniMax-01's slopes s_h = 2^(-8(h+1)/nh)
    scaled by 1 - l/(L-1) (+1e-5 terms) in layer l of L, then RMSNorm, the sigmoid gate, out_proj."""
    layer = lightning_mixer(n_layers=3, layer_idx=1, chunk_size=4).double()
    nh, hs = 4, 8
    x = torch.randn(1, 11, 32, dtype=torch.float64)
    qkv = F.silu(x @ layer.qkv_proj.weight.T).view(1, 11, nh, 3, hs)  # each head's q, k, v side by side
    slopes = [2 ** (-8 * (h + 1) / nh) * (1 - 1 / (2 + 1e-5) + 1e-5) for h in range(nh)]
    y = torch.zeros(1, 11, nh, hs, dtype=x.dtype)
    for h in range(nh):
        S = torch.zeros(hs, hs, dtype=x.dtype)
        for t in range(11):
            q, k, v = qkv[0, t, h]
            S = math.exp(-slopes[h]) * S + torch.outer(k, v)
            y[0, t, h] = q @ S
    y = y.reshape(1, 11, nh * hs)
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-6) * layer.norm.weight
    expected = (torch.sigmoid(x @ layer.output_gate.weight.T) * y) @ layer.out_proj.weight.T
    torch.testing.assert_close(run(layer, x), expected)


def test_lightning_attention_has_no_key_value_groups():
    with pytest.raises(ConfigError, match="no key/value head groups"):
        mixer("lightning", n_kv_heads=2)


# ---- gated linear attention ----------------------------------------------------------------------


def gla_by_the_equations(layer, x):
    """Yang et al. (2024), eq. 3 as a recurrence: S_t = diag(α_t) S_{t-1} + k_t v_tᵀ, o_t = q_tᵀ S_t / √dk,
    α_t = exp(logsigmoid(x_t W1 W2 + b) / 16); then o = (RMSNorm(o) ⊙ swish(x W_g)) W_o per head."""
    nh, nkv, dk, dv = layer.dims.n_heads, layer.dims.n_kv_heads, layer.key_width, layer.value_width
    B, T, _ = x.shape
    q = (x @ layer.q_proj.weight.T).view(B, T, nh, dk)
    k = (x @ layer.k_proj.weight.T).view(B, T, nkv, dk)
    v = (x @ layer.v_proj.weight.T).view(B, T, nkv, dv)
    low, full = layer.gk_proj
    alpha = torch.exp(F.logsigmoid(x @ low.weight.T @ full.weight.T + full.bias) / 16).view(B, T, nkv, dk)
    o = torch.zeros(B, T, nh, dv, dtype=x.dtype)
    for b in range(B):
        for h in range(nh):
            g = h // (nh // nkv)
            S = torch.zeros(dk, dv, dtype=x.dtype)
            for t in range(T):
                S = alpha[b, t, g][:, None] * S + torch.outer(k[b, t, g], v[b, t, g])
                o[b, t, h] = q[b, t, h] @ S / math.sqrt(dk)
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5) * layer.g_norm.weight
    o = o * F.silu(x @ layer.g_proj.weight.T).view(B, T, nh, dv)
    return o.reshape(B, T, nh * dv) @ layer.out_proj.weight.T + layer.out_proj.bias


def test_gla_follows_the_gated_recurrence_across_chunks():
    layer = mixer("gla", n_kv_heads=2, head_dim=8, chunk_size=4)  # keys 4 wide (expand_k 0.5), values 8
    x = torch.randn(2, 19, 32, dtype=torch.float64)
    torch.testing.assert_close(run(layer, x), gla_by_the_equations(layer, x))


def test_gla_stays_finite_and_exact_where_gates_close_within_a_chunk():
    # A gate bias of -60 makes α ≈ exp(-60/16) per step: across a chunk of 64 the decays reach e^-240,
    # whose reciprocal overflows float32. The in-chunk decays are formed pairwise, never inverted.
    layer = mixer("gla", chunk_size=64).float()
    with torch.no_grad():
        layer.gk_proj[1].bias.fill_(-60.0)
    x = torch.randn(1, 70, 32)
    got = run(layer, x)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), gla_by_the_equations(layer.double(), x.double()), rtol=1e-4, atol=1e-4)


def test_gla_inspection_is_the_decayed_score_matrix():
    torch.manual_seed(0)
    model = GPT(
        REGISTRY.model_config(
            {"vocab_size": 50, "context_length": 16, "d_model": 32, "n_layers": 1, "n_heads": 4, "positional": "none"}
            | {"attention": {"name": "gla"}}
        )
    ).eval()
    idx = torch.randint(0, 50, (1, 9))
    (A,) = implicit_attention(model, idx)
    layer = model.blocks[0].attention
    x = model.blocks[0].attn_norm(model.token_embedding(idx))
    q = (x @ layer.q_proj.weight.T).view(1, 9, 4, 4) / 2  # keys 4 wide, scaled by 1/√4
    k = (x @ layer.k_proj.weight.T).view(1, 9, 4, 4)
    low, full = layer.gk_proj
    log_alpha = (F.logsigmoid(x @ low.weight.T @ full.weight.T + full.bias) / 16).view(1, 9, 4, 4)
    expected = torch.zeros(1, 4, 9, 9)
    for h in range(4):
        for i in range(9):
            for j in range(i + 1):
                decay = log_alpha[0, j + 1 : i + 1, h].sum(0).exp()  # Π_{j<s≤i} α_s
                expected[0, h, i, j] = (q[0, i, h] * decay * k[0, j, h]).sum()
    torch.testing.assert_close(A, expected)


# ---- retention (RetNet) --------------------------------------------------------------------------


def test_retention_follows_the_recurrence_with_rotated_queries_and_keys():
    """Sun et al. (2023), eq. 1 per head: S_t = γ_h S_{t-1} + k̃_t v_tᵀ, o_t = q̃_tᵀ S_t with
    γ_h = 1 - 2^(-5-h), q̃, k̃ rotated by the position scheme (here rope), k̃ / √hs; then
    RMSNorm per head (no weight), times swish(x W_g), out_proj."""
    config = REGISTRY.model_config(
        {"vocab_size": 50, "context_length": 64, "d_model": 32, "n_layers": 1, "n_heads": 4}
        | {"positional": {"name": "rope", "layout": "interleaved"}, "attention": {"name": "retention", "chunk_size": 4}}
    )
    torch.manual_seed(0)
    model = GPT(config).eval().double()
    layer = model.blocks[0].attention
    B, T, nh, hs, dv = 1, 13, 4, 8, 16  # values twice as wide (expand_v = 2)
    x = torch.randn(B, T, 32, dtype=torch.float64)
    positions = torch.arange(T)[None]
    q = (x @ layer.q_proj.weight.T).view(B, T, nh, hs).transpose(1, 2)
    k = (x @ layer.k_proj.weight.T).view(B, T, nh, hs).transpose(1, 2)
    q, k = model.positional.rotate(q, k, positions)  # (B, nh, T, hs)
    v = (x @ layer.v_proj.weight.T).view(B, T, nh, dv)
    o = torch.zeros(B, T, nh, dv, dtype=x.dtype)
    for h in range(nh):
        gamma = 1 - 2 ** (-5 - h)
        S = torch.zeros(hs, dv, dtype=x.dtype)
        for t in range(T):
            S = gamma * S + torch.outer(k[0, h, t] / math.sqrt(hs), v[0, t, h])
            o[0, t, h] = q[0, h, t] @ S
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-6)
    o = o * F.silu(x @ layer.g_proj.weight.T).view(B, T, nh, dv)
    expected = o.reshape(B, T, nh * dv) @ layer.out_proj.weight.T + layer.out_proj.bias
    ctx = AttentionContext(model.positional, positions, positions)
    with torch.no_grad():
        torch.testing.assert_close(layer(x, ctx), expected)


def test_retention_refuses_key_value_groups_and_alibi():
    with pytest.raises(ConfigError, match="no key/value head groups"):
        mixer("retention", n_kv_heads=2)
    with pytest.raises(ConfigError, match="alibi"):
        REGISTRY.model_config(
            {"vocab_size": 50, "context_length": 16, "d_model": 32, "n_layers": 1, "n_heads": 4}
            | {"positional": "alibi", "attention": "retention"}
        )


# ---- costs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,n_kv_heads", [("linear", 2), ("lightning", 4), ("retention", 4)])
def test_flops_per_token_count_the_matrix_products_of_the_chunked_form(name, n_kv_heads):
    from torch.utils.flop_counter import FlopCounterMode

    layer = mixer(name, n_kv_heads=n_kv_heads, chunk_size=16).float()
    T = 64  # whole chunks: every chunk costs the same
    x = torch.randn(1, T, 32)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        layer(x, context(T))
    assert layer.flops_per_token(T) * T == counter.get_total_flops()


@pytest.mark.parametrize(
    "name,params,numbers",
    [
        ("linear", {}, 2 * 8 * (8 + 1)),  # S and z per key/value head
        ("lightning", {}, 4 * 8 * 8),
        ("retention", {}, 4 * 8 * 16),  # values twice as wide
        ("gla", {}, 2 * 4 * 8),  # keys half as wide, per key/value head
    ],
)
def test_the_state_is_float32_numbers_of_a_fixed_count(name, params, numbers):
    layer = mixer(name, n_kv_heads=2 if name in ("linear", "gla") else 4, **params)
    assert layer.cache_bytes(1) == layer.cache_bytes(100_000) == 4 * numbers


def test_the_minimax_style_hybrid_inspects_each_layer_as_it_computes():
    from pathlib import Path

    from gptzoo.recipes.config.schema import load_run_config

    path = Path(__file__).resolve().parents[2] / "configs" / "minimax-01-style.toml"
    config = load_run_config(path, ["model.vocab_size=512"]).model
    torch.manual_seed(0)
    model = GPT(config).eval()
    recorder = Recorder()
    with torch.no_grad():
        model(torch.randint(0, 512, (1, 12)), recorder=recorder)
    assert recorder.offers == ["implicit_attention"] * 7 + ["probabilities"]
    assert model.blocks[0].params.stream_scale == (2 * config.n_layers) ** 0.25  # DeepNet's α, as MiniMax-01's
    softmax_rows = recorder.attentions[7].sum(-1)
    torch.testing.assert_close(softmax_rows, torch.ones_like(softmax_rows))


@pytest.mark.parametrize("name", ["linear", "lightning", "retention", "gla"])
def test_bfloat16_under_autocast_and_cast_whole_stays_near_float32(name):
    config = REGISTRY.model_config(
        {"vocab_size": 50, "context_length": 64, "d_model": 32, "n_layers": 2, "n_heads": 4, "positional": "none"}
        | {"attention": {"name": name, "chunk_size": 8}}
    )
    torch.manual_seed(0)
    model = GPT(config).eval()
    idx = torch.randint(0, 50, (2, 40))
    with torch.no_grad():
        expected = model(idx)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model(idx)
        model.to(torch.bfloat16)
        cache = model.new_cache(2)
        decoded = torch.cat(
            [model(idx[:, :20], cache=cache)] + [model(idx[:, t : t + 1], cache=cache) for t in range(20, 40)], 1
        )
    for got in (autocast, decoded):
        torch.testing.assert_close(got.float(), expected, atol=2e-2, rtol=0)


def test_a_bfloat16_layer_decoding_a_long_text_keeps_its_state_in_float32():
    # Summed in bfloat16 (8 significant bits), a state of 500 positive outer products would stop
    # taking in new ones: each is below half a unit of its last place.
    layer = mixer("linear", feature_map="relu", normalize=False)
    with torch.no_grad():
        layer.qkv.weight.abs_()  # positive queries, keys and values for positive inputs: the state only grows
    T = 500
    x = torch.rand(1, T, 32, dtype=torch.float64)
    expected = run(layer, x)
    layer.to(torch.bfloat16)
    cache = layer.new_cache(1, None, torch.device("cpu"), torch.bfloat16)
    steps = []
    with torch.no_grad():
        for t in range(T):
            ctx = AttentionContext(context(1).positional, torch.tensor([[t]]), torch.arange(t + 1)[None], offset=t)
            steps.append(layer(x[:, t : t + 1].bfloat16(), ctx, cache))
    assert cache.state.dtype == torch.float32
    got = torch.cat(steps, 1).double()
    assert ((got - expected).norm() / expected.norm()).item() < 0.02


def test_gla_gradients_are_those_of_the_recurrence():
    layer = mixer("gla", n_kv_heads=2, chunk_size=4)
    x = torch.randn(1, 11, 32, dtype=torch.float64, requires_grad=True)
    weights = [x, *layer.parameters()]
    got = torch.autograd.grad(layer(x, context(11)).square().sum(), weights)
    expected = torch.autograd.grad(gla_by_the_equations(layer, x).square().sum(), weights)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)
