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
