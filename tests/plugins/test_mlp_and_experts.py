"""mlp_and_experts (Gemma 4's MLP beside its experts) against transformers' own Gemma 4 modules, the experts
operator's GeGLU form against finite differences, the blocks handing it the stream, its parameter counts."""

import pytest
import torch
import torch.nn.functional as F

from gptzoo.core import Dims
from gptzoo.plugins.mlp_and_experts import MLPAndExperts, MLPAndExpertsParams
from gptzoo.recipes.training import costs
from gptzoo.testing import build, check_component, tiny_config

C, E, K, H, MLP = 16, 6, 2, 12, 24
EXPERTS = {"n_experts": E, "top_k": K, "hidden": H, "activation": "geglu"}


def ours() -> MLPAndExperts:
    dims = Dims(vocab_size=50, context_length=16, d_model=C, n_heads=2, n_kv_heads=2, n_layers=2)
    return MLPAndExperts(MLPAndExpertsParams(hidden=MLP, experts=EXPERTS), dims)


@torch.no_grad()
def test_matches_transformers_gemma4_experts_beside_its_mlp():
    """y = post1(mlp(pre1(x))) + post2(experts(pre2(x), routed from x)), as Gemma4TextDecoderLayer sums them."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.gemma4 import modeling_gemma4 as gemma4

    config = transformers.Gemma4TextConfig(
        hidden_size=C,
        intermediate_size=MLP,
        num_experts=E,
        top_k_experts=K,
        moe_intermediate_size=H,
        enable_moe_block=True,
        num_hidden_layers=2,
        layer_types=["full_attention"] * 2,
    )
    config._experts_implementation = "eager"
    torch.manual_seed(0)
    router, experts, mlp = (
        gemma4.Gemma4TextRouter(config),
        gemma4.Gemma4TextExperts(config),
        gemma4.Gemma4TextMLP(config, 0),
    )
    norms = [gemma4.Gemma4RMSNorm(C, eps=1e-6) for _ in range(4)]  # pre1, post1, pre2, post2
    for module in (router, experts, mlp, *norms):
        for p in module.parameters():
            p.copy_(0.5 * torch.randn_like(p) + (1.0 if p.dim() == 1 else 0.0))
    layer = ours()
    layer.experts.router.weight.copy_(router.proj.weight)
    layer.experts.router_scale.copy_(router.scale)
    layer.experts.expert_scale.copy_(router.per_expert_scale)
    layer.experts.expert_gate.copy_(experts.gate_up_proj[:, :H])
    layer.experts.expert_up.copy_(experts.gate_up_proj[:, H:])
    layer.experts.expert_out.copy_(experts.down_proj)
    for name, theirs in (("gate_proj", mlp.gate_proj), ("up_proj", mlp.up_proj), ("out_proj", mlp.down_proj)):
        getattr(layer.mlp, name).weight.copy_(theirs.weight)
    mine = (layer.mlp_norm, layer.mlp_out_norm, layer.experts_norm, layer.experts_out_norm)
    for norm, theirs in zip(mine, norms, strict=True):
        norm.weight.copy_(theirs.weight)
    x = torch.randn(2, 5, C)
    flat = x.reshape(-1, C)
    _, weights, chosen = router(flat)
    expected = norms[1](mlp(norms[0](x))) + norms[3](experts(norms[2](flat), chosen, weights).view(x.shape))
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=0)


def test_the_experts_operator_in_its_geglu_form_has_the_gradients_of_its_function():
    torch.manual_seed(0)
    grouped = torch.randn(7, 4, dtype=torch.double, requires_grad=True)
    weights = [
        torch.randn(*shape, dtype=torch.double, requires_grad=True) for shape in ((3, 5, 4), (3, 5, 4), (3, 4, 5))
    ]
    ends = torch.tensor([3, 3, 7])
    y, g, u = torch.ops.gptzoo.moe_experts(grouped, *weights, ends, gelu=True)
    expected = torch.cat(
        [
            (F.gelu(grouped[a:b] @ weights[0][e].T, approximate="tanh") * (grouped[a:b] @ weights[1][e].T))
            @ weights[2][e].T
            for e, (a, b) in enumerate(((0, 3), (3, 3), (3, 7)))
        ]
    )
    torch.testing.assert_close(y, expected)
    assert torch.autograd.gradcheck(
        lambda x, *w: torch.ops.gptzoo.moe_experts(x, *w, ends, gelu=True)[0], (grouped, *weights)
    )
    torch.library.opcheck(torch.ops.gptzoo.moe_experts, (grouped, *weights, ends), {"gelu": True})


@pytest.mark.parametrize("block", ["sandwich", "pre_norm", "parallel"])
def test_blocks_hand_it_the_stream_and_build_no_norm_for_its_input(registry, block):
    spec = {"name": "mlp_and_experts", "hidden": MLP, "experts": EXPERTS}
    model = build(tiny_config(registry, n_layers=1, feed_forward=spec, block=block))
    assert isinstance(model.blocks[0].ffn_norm, torch.nn.Identity)
    x = torch.randn(2, 3, model.config.d_model)
    with torch.no_grad():  # what the feed-forward is given: the stream itself
        torch.testing.assert_close(model.blocks[0].ffn_norm(x), x)


def test_a_post_norm_block_keeps_its_norm_after_the_sum(registry):
    spec = {"name": "mlp_and_experts", "hidden": MLP, "experts": EXPERTS}
    model = build(tiny_config(registry, n_layers=1, feed_forward=spec, block="post_norm"))
    assert not isinstance(model.blocks[0].ffn_norm, torch.nn.Identity)


def test_active_parameters_leave_the_unchosen_experts_idle(registry):
    spec = {"name": "mlp_and_experts", "hidden": MLP, "experts": EXPERTS}
    model = build(tiny_config(registry, n_layers=2, feed_forward=spec))
    d = model.config.d_model
    per_layer = 3 * MLP * d + 4 * d + E * d + d + E + E * 3 * H * d  # MLP, 4 norms, router, its scales, experts
    assert sum(p.numel() for p in model.blocks[0].feed_forward.parameters()) == per_layer
    assert costs.active_parameters_per_token(model) == costs.param_counts(model)["total"] - 2 * (E - K) * 3 * H * d


def test_the_kit_passes(registry):
    check_component("feed_forward", "mlp_and_experts", registry=registry, hidden=MLP, experts=EXPERTS)
