"""Hyper-connections (Zhu et al., 2024, arXiv 2409.19606) and their manifold-constrained form (mHC, arXiv
2512.24880) against the papers' equations written out here as loops, hand-worked examples, and the claim
that at initialisation they are the plain residual."""

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from gptzoo.core import Recorder
from gptzoo.recipes.config.schema import load_run_config
from gptzoo.recipes.training import costs
from gptzoo.testing import build, tiny_config

HYPER = {"name": "hyper", "n_streams": 4, "dynamic": True}
MHC = {"name": "mhc", "n_streams": 4}
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


class ScaledBlock(nn.Module):
    """A stand-in block computing h + T(h) with T(h) = scale · tanh(h), as a block adds its input back."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, h, ctx, cache=None):
        return h + self.scale * torch.tanh(h)


def hyper_layer(registry, n, dynamic, layer_idx=0, d_model=2):
    config = tiny_config(
        registry, d_model=d_model, n_heads=1, residual={"name": "hyper", "n_streams": n, "dynamic": dynamic}
    )
    return config.residual.build(replace(config.dims(0), layer_idx=layer_idx), config.layer(0))


def test_static_mixing_by_hand(registry):
    """n = 2, C = 2, T(h) = 10·h: h₀ = A_mᵀH, Ĥ = BᵀT(h₀) + A_rᵀH worked out by hand."""
    layer = hyper_layer(registry, 2, dynamic=False)
    with torch.no_grad():
        layer.mix_in.copy_(torch.tensor([0.5, 2.0]))  # A_m
        layer.mix_streams.copy_(torch.tensor([[1.0, 2.0], [0.0, 3.0]]))  # A_r
        layer.mix_out.copy_(torch.tensor([1.0, -1.0]))  # B

    class TimesEleven(nn.Module):  # h + T(h) with T(h) = 10·h
        def forward(self, h, ctx, cache=None):
            return 11 * h

    H = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    # h₀ = 0.5·(1, 2) + 2·(3, 4) = (6.5, 9); T(h₀) = (65, 90)
    # stream 0: 1·(65, 90) + 1·(1, 2) + 0·(3, 4) = (66, 92)
    # stream 1: −1·(65, 90) + 2·(1, 2) + 3·(3, 4) = (−54, −74)
    got = layer(H, TimesEleven(), None)
    assert torch.allclose(got, torch.tensor([[66.0, 92.0], [-54.0, -74.0]]).reshape(1, 1, 2, 2), atol=1e-4)


def paper_dynamic(layer, H, T):
    """Eqs. (10)-(13) and (3)-(5) for one token, loop by loop: H (n, C) -> Ĥ (n, C)."""
    n, C = H.shape
    Hbar = layer.norm(H)
    W = layer.dynamic_weights  # [W_m | W_r | W_β]
    s_a, s_b = layer.in_scale, layer.out_scale
    A_m = [s_a * torch.tanh(sum(Hbar[j, c] * W[c, 0] for c in range(C))) + layer.mix_in[j] for j in range(n)]
    A_r = [
        [s_a * torch.tanh(sum(Hbar[j, c] * W[c, 1 + i] for c in range(C))) + layer.mix_streams[j, i] for i in range(n)]
        for j in range(n)
    ]
    B = [s_b * torch.tanh(sum(Hbar[j, c] * W[c, n + 1] for c in range(C))) + layer.mix_out[j] for j in range(n)]
    h0 = torch.stack([sum(A_m[j] * H[j, c] for j in range(n)) for c in range(C)])
    out = T(h0)
    return torch.stack(
        [torch.stack([B[i] * out[c] + sum(A_r[j][i] * H[j, c] for j in range(n)) for c in range(C)]) for i in range(n)]
    )


def test_dynamic_mixing_is_the_papers(registry):
    torch.manual_seed(0)
    layer = hyper_layer(registry, 3, dynamic=True, d_model=4)
    with torch.no_grad():  # away from the initialisation, so every term counts
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    H = torch.randn(2, 3, 3, 4)  # (B, T, n, C)
    got = layer(H, ScaledBlock(0.7), None)
    expected = torch.stack(
        [
            torch.stack([paper_dynamic(layer, H[b, t], lambda h: 0.7 * torch.tanh(h)) for t in range(3)])
            for b in range(2)
        ]
    )
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_initialisation_is_the_paper_eq_14(registry):
    for k in range(5):
        layer = hyper_layer(registry, 4, dynamic=True, layer_idx=k)
        assert layer.mix_in.tolist() == [1.0 if j == k % 4 else 0.0 for j in range(4)]
        assert torch.equal(layer.mix_streams, torch.eye(4)) and layer.mix_out.tolist() == [1.0] * 4
        assert not layer.dynamic_weights.any()


def test_at_initialisation_every_stream_is_the_plain_residual_stream(registry):
    """The paper's initialisation makes hyper-connections the pre-norm residual: every one of the n streams
    after each layer equals the plain model's stream, and their sum, n times it, is what the final norm reads."""
    plain = build(tiny_config(registry, n_layers=3))
    hyper = build(tiny_config(registry, n_layers=3, residual=HYPER))
    missing, unexpected = hyper.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(name.startswith("residuals.") for name in missing)
    streams = []
    for residual in hyper.residuals:
        residual.register_forward_hook(lambda module, args, out: streams.append(out))
    idx = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    seen, seen_hyper = Recorder(), Recorder()
    with torch.no_grad():
        plain(idx, recorder=seen)
        hyper(idx, recorder=seen_hyper)
    for i, out in enumerate(streams):
        assert out.shape == (2, 12, 4, 32)
        for s in range(4):
            torch.testing.assert_close(out[:, :, s], seen.residuals[i + 1], rtol=0, atol=1e-6)
        torch.testing.assert_close(seen_hyper.residuals[i + 1], 4 * seen.residuals[i + 1], rtol=1e-6, atol=1e-6)


def test_describe_counts_its_parameters_and_flops(registry):
    """Per layer: A_m (n), A_r (n²), B (n), W (C·(n + 2)), s_α, s_β; the dynamic norm's under norm.
    FLOPs: 2·(n·C + n²·C + n·C) for the mixing, as many for H̄·W when dynamic."""
    n, C, L = 4, 32, 2
    for dynamic, params, flops in [
        (False, n + n * n + n, 2 * (n * C + n * n * C + n * C)),
        (True, n + n * n + n + C * (n + 2) + 2, 4 * (n * C + n * n * C + n * C)),
    ]:
        model = build(tiny_config(registry, residual={**HYPER, "dynamic": dynamic}))
        plain = build(tiny_config(registry))
        assert costs.param_counts(model)["residual"] == L * params
        assert costs.param_counts(model)["norm"] - costs.param_counts(plain)["norm"] == (L * 2 * C if dynamic else 0)
        assert costs.flops_per_token(model)["residual"] == L * flops
    assert costs.param_counts(plain)["residual"] == 0 and costs.flops_per_token(plain)["residual"] == 0


@pytest.mark.parametrize("residual", [HYPER, MHC], ids=["hyper", "mhc"])
def test_compiles_whole_and_decodes_through_the_cache(registry, residual):
    torch.manual_seed(0)
    model = build(tiny_config(registry, residual=residual))
    with torch.no_grad():
        for residual in model.residuals:  # away from the initialisation, where the streams differ
            for p in residual.parameters():
                p.add_(torch.randn_like(p) * 0.3)
    idx = torch.randint(0, 50, (2, 10))
    with torch.no_grad():
        expected = model(idx)
        torch.testing.assert_close(torch.compile(model, fullgraph=True)(idx), expected, rtol=1e-5, atol=1e-5)
        cache = model.new_cache(2)
        stepped = torch.cat(
            [model(idx[:, :4], cache=cache), *(model(idx[:, t : t + 1], cache=cache) for t in range(4, 10))], 1
        )
    torch.testing.assert_close(stepped, expected, rtol=1e-5, atol=1e-5)


def test_reachable_from_set_and_an_ablation_axis(tmp_path):
    from gptzoo.recipes.research.sweep.plan import load_sweep

    config = load_run_config(CONFIGS / "tiny.toml", ["model.residual.name=hyper", "model.residual.n_streams=2"])
    assert (config.model.residual.name, config.model.residual.params.n_streams) == ("hyper", 2)
    sweep = tmp_path / "hyper.toml"
    sweep.write_text(
        f'base = "{CONFIGS / "hyper-connections-style.toml"}"\nseeds = [0]\n'
        '[axes]\n"model.residual.n_streams" = [1, 2]\n"model.residual.dynamic" = [false, true]\n'
    )
    variants = [v.config.model.residual.params for v in load_sweep(sweep).variants]
    assert {(1, False), (1, True), (2, False), (2, True)} <= {(p.n_streams, p.dynamic) for p in variants}


def test_a_post_norm_model_keeps_its_final_norm_under_several_streams(registry):
    """The sum of several post-norm streams is no normalised output: the final norm comes back."""
    assert isinstance(build(tiny_config(registry, block="post_norm")).final_norm, nn.Identity)
    assert not isinstance(build(tiny_config(registry, block="post_norm", residual=HYPER)).final_norm, nn.Identity)


# ---- mHC ---------------------------------------------------------------------------------------


def naive_sinkhorn(logits, iterations):
    """exp, then each column and each row divided by its sum, entry by entry."""
    n = len(logits)
    m = [[math.exp(v) for v in row] for row in logits.tolist()]
    for _ in range(iterations):
        for j in range(n):
            total = sum(m[i][j] for i in range(n))
            for i in range(n):
                m[i][j] /= total
        for i in range(n):
            total = sum(m[i])
            m[i] = [v / total for v in m[i]]
    return torch.tensor(m)


def test_sinkhorn_by_hand_and_doubly_stochastic():
    from gptzoo.plugins.residual import ManifoldParams, sinkhorn

    # exp([[0, ln 2], [ln 2, 0]]) = [[1, 2], [2, 1]]: its rows and columns already share one sum, 3.
    two = sinkhorn(torch.tensor([[0.0, math.log(2)], [math.log(2), 0.0]]), ManifoldParams(n_streams=2))
    torch.testing.assert_close(two, torch.tensor([[1 / 3, 2 / 3], [2 / 3, 1 / 3]]))
    logits = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    got = sinkhorn(logits, ManifoldParams(sinkhorn_iterations=20))
    torch.testing.assert_close(got, naive_sinkhorn(logits, 20), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.sum(0), torch.ones(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(got.sum(1), torch.ones(4), atol=1e-6, rtol=0)


def paper_manifold(layer, x, T):
    """mHC's update for one token, loop by loop: x (n, C) -> x_{l+1} (n, C)."""
    n, C = x.shape
    flat = x.flatten()
    normed = flat / torch.sqrt(sum(v * v for v in flat) / (n * C) + 1e-6)
    phi, (a_pre, a_post, a_res) = layer.phi, layer.gates
    proj = [sum(normed[f] * phi[f, k] for f in range(n * C)) for k in range(2 * n + n * n)]
    pre = [torch.sigmoid(a_pre * proj[j] + layer.pre_bias[j]) for j in range(n)]
    post = [2 * torch.sigmoid(a_post * proj[n + i] + layer.post_bias[i]) for i in range(n)]
    res_logits = torch.stack(
        [torch.stack([a_res * proj[2 * n + i * n + j] + layer.res_bias[i, j] for j in range(n)]) for i in range(n)]
    )
    res = naive_sinkhorn(res_logits, layer.params.sinkhorn_iterations)
    out = T(torch.stack([sum(pre[j] * x[j, c] for j in range(n)) for c in range(C)]))
    return torch.stack(
        [
            torch.stack([sum(res[i, j] * x[j, c] for j in range(n)) + post[i] * out[c] for c in range(C)])
            for i in range(n)
        ]
    )


def test_manifold_mixing_is_the_papers(registry):
    torch.manual_seed(0)
    config = tiny_config(registry, d_model=3, n_heads=1, residual={"name": "mhc", "n_streams": 2})
    layer = config.residual.build(config.dims(0), config.layer(0))
    with torch.no_grad():  # away from the initialisation, so every term counts
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    x = torch.randn(2, 2, 2, 3)  # (B, T, n, C)
    with torch.no_grad():
        got = layer(x, ScaledBlock(0.7), None)
        expected = torch.stack(
            [
                torch.stack([paper_manifold(layer, x[b, t], lambda h: 0.7 * torch.tanh(h)) for t in range(2)])
                for b in range(2)
            ]
        )
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_manifold_starts_as_the_plain_residual_stream(registry):
    plain = build(tiny_config(registry, n_layers=3))
    manifold = build(tiny_config(registry, n_layers=3, residual=MHC))
    manifold.load_state_dict(plain.state_dict(), strict=False)
    pre, res, post = manifold.residuals[1].mixing(torch.randn(1, 1, 4, 32))
    assert pre.argmax().item() == 1 and pre.sum().item() == pytest.approx(1, abs=1e-6)  # reads stream k mod n
    torch.testing.assert_close(post, torch.ones(1, 1, 4))
    assert (res.diagonal(dim1=-2, dim2=-1) > 0.9).all()
    streams = []
    for residual in manifold.residuals:
        residual.register_forward_hook(lambda module, args, out: streams.append(out))
    idx = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    seen = Recorder()
    with torch.no_grad():
        plain(idx, recorder=seen)
        manifold(idx)
    for i, out in enumerate(streams):
        for s in range(4):
            torch.testing.assert_close(out[:, :, s], seen.residuals[i + 1], rtol=0, atol=1e-5)


def test_manifold_describe_counts(registry):
    """φ (nC × (n² + 2n)), the biases (n + n + n²) and the three gates; FLOPs: x'φ, Sinkhorn, the mixing."""
    n, C, L, t = 4, 32, 2, 20
    model = build(tiny_config(registry, residual=MHC))
    assert costs.param_counts(model)["residual"] == L * (n * C * (n * n + 2 * n) + n + n + n * n + 3)
    flops = 2 * n * C * (n * n + 2 * n) + 4 * t * n * n + 2 * (n * C + n * n * C + n * C)
    assert costs.flops_per_token(model)["residual"] == L * flops


def test_fine_tuning_the_last_block_trains_its_layers_stream_mixing(registry):
    from gptzoo.recipes.finetuning.common import set_trainable

    model = build(tiny_config(registry, n_layers=3, residual=HYPER))
    set_trainable(model, "last-block")
    trainable = {
        name.split(".")[0] + "." + name.split(".")[1] for name, p in model.named_parameters() if p.requires_grad
    }
    assert {"residuals.2", "blocks.2"} <= trainable and not {"residuals.0", "residuals.1", "blocks.1"} & trainable
