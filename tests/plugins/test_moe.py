"""The mixture of experts against a per-token loop, hand-worked routing and auxiliary loss,
transformers' Mixtral, Qwen3-MoE and DeepSeek-V3 blocks, and the parameter and FLOP counts' formulas."""

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from gptzoo.core import GPT, ConfigError, Dims
from gptzoo.plugins.moe import MixtureOfExperts, MoEParams
from gptzoo.recipes.training import costs
from gptzoo.registry import make_registry
from gptzoo.testing import build, check_component, tiny_config


def dims(d_model=16, **kw):
    return Dims(**(dict(vocab_size=50, context_length=16, d_model=d_model, n_heads=4, n_kv_heads=4, n_layers=2) | kw))


# The families' conventions, as params (see the table in gptzoo.plugins.moe).
GPT_OSS = dict(
    n_experts=4, top_k=2, router_bias=True, expert_biases=True, activation="clamped_swiglu"
)  # softmax over the kept top-k logits
QWEN3_NEXT = dict(n_experts=6, top_k=2, n_shared_experts=1, shared_expert_gate=True)
LLAMA4 = dict(n_experts=4, top_k=1, scoring="sigmoid", normalize_top_k=False, n_shared_experts=1, weights_at="input")


def moe(seed=0, d_model=16, **params):
    torch.manual_seed(seed)
    layer = MixtureOfExperts(MoEParams(**params), dims(d_model))
    layer.init_weights("gpt2")
    with torch.no_grad():  # larger router weights: well-separated scores, so no near-ties in top-k
        layer.router.weight.normal_(0, 1.0)
        if layer.expert_bias is not None:
            layer.expert_bias.normal_(0, 0.3)
        for bias in (layer.router.bias, layer.expert_gate_bias, layer.expert_up_bias, layer.expert_out_bias):
            if bias is not None:  # drawn, not zero, so a bias left out would show
                bias.normal_(0, 0.5)
        if layer.shared_gate is not None:
            layer.shared_gate.weight.normal_(0, 0.5)
    return layer


def per_token_loop(layer, x):
    """Each token alone: its scores, its top k by sorting, each chosen expert's gated unit."""
    p = layer.params
    out = torch.zeros_like(x)
    for b in range(x.size(0)):
        for t in range(x.size(1)):
            token = x[b, t].double()
            logits = layer.router.weight.double() @ token
            if p.router_bias:
                logits = logits + layer.router.bias.double()
            scores = logits.softmax(-1) if p.scoring == "softmax" else logits.sigmoid()
            biased = [
                scores[e].item() + (layer.expert_bias[e].item() if p.expert_bias else 0.0) for e in range(p.n_experts)
            ]
            size = p.n_experts // p.n_groups
            groups = [list(range(g * size, (g + 1) * size)) for g in range(p.n_groups)]
            if p.n_groups > 1:  # a group's score: the sum of its two best biased scores
                groups = sorted(groups, key=lambda g: -sum(sorted((biased[e] for e in g), reverse=True)[:2]))[
                    : p.top_groups or p.n_groups
                ]
            allowed = [e for g in groups for e in g]
            ranked = sorted(allowed, key=lambda e: -biased[e])[: p.top_k]
            total = sum(scores[e] for e in ranked) if p.normalize_top_k else 1.0
            for e in ranked:
                weight = p.routed_scale * scores[e] / total
                expert_in = weight * token if p.weights_at == "input" else token
                gate = layer.expert_gate[e].double() @ expert_in
                up = layer.expert_up[e].double() @ expert_in
                if p.expert_biases:
                    gate, up = gate + layer.expert_gate_bias[e].double(), up + layer.expert_up_bias[e].double()
                if p.activation == "clamped_swiglu":  # gpt-oss: (up + 1) · gate · σ(1.702 · gate), clamped at 7
                    gate, up = gate.clamp(max=p.swiglu_limit), up.clamp(-p.swiglu_limit, p.swiglu_limit)
                    hidden = (up + 1) * gate * torch.sigmoid(p.swiglu_alpha * gate)
                else:
                    hidden = gate * torch.sigmoid(gate) * up
                expert = layer.expert_out[e].double() @ hidden
                if p.expert_biases:
                    expert = expert + layer.expert_out_bias[e].double()
                out[b, t] += (expert if p.weights_at == "input" else weight * expert).to(x.dtype)
            if layer.shared is not None:
                shared = layer.shared(x[b, t])
                if p.shared_expert_gate:
                    shared = shared * torch.sigmoid(layer.shared_gate.weight[0] @ x[b, t])
                out[b, t] += shared
    return out


@pytest.mark.parametrize(
    "params",
    [
        dict(n_experts=4, top_k=2),  # Mixtral
        dict(n_experts=4, top_k=2, normalize_top_k=False),  # Qwen1.5-MoE
        dict(n_experts=6, top_k=3, scoring="sigmoid", routed_scale=2.5, n_shared_experts=1),  # DeepSeek-V3
        dict(n_experts=3, top_k=1, hidden=8, n_shared_experts=2),
        dict(
            n_experts=8,
            top_k=3,
            scoring="sigmoid",
            routed_scale=2.5,
            n_shared_experts=1,
            expert_bias=True,
            n_groups=4,
            top_groups=2,
        ),
        dict(n_experts=6, top_k=2, expert_bias=True, n_groups=3, top_groups=1),  # softmax scores, groups of 2
        GPT_OSS,
        QWEN3_NEXT,
        LLAMA4,
        dict(n_experts=4, top_k=2, weights_at="input", expert_biases=True, router_bias=True),
    ],
    ids=[
        "mixtral",
        "unnormalised",
        "deepseek_v3",
        "top1_shared2",
        "deepseek_v3_groups_bias",
        "softmax_groups_bias",
        "gpt_oss",
        "qwen3_next",
        "llama4",
        "input_weights_with_biases",
    ],
)
@torch.no_grad()
def test_outputs_match_a_per_token_loop_over_experts(params):
    layer = moe(**params, **({} if "hidden" in params else {"hidden": 12}))
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(layer(x), per_token_loop(layer, x), atol=1e-5, rtol=1e-5)


def test_bias_and_groups_choose_but_do_not_weigh_a_hand_worked_example():
    # Router = identity on 4 dims, so the logits are the token; sigmoid scores (.9, .1, .6, .55).
    layer = MixtureOfExperts(
        MoEParams(
            n_experts=4,
            top_k=2,
            hidden=4,
            scoring="sigmoid",
            routed_scale=2.0,
            expert_bias=True,
            n_groups=2,
            top_groups=1,
        ),
        dims(d_model=4),
    )
    with torch.no_grad():
        layer.router.weight.copy_(torch.eye(4))
    scores = torch.tensor([[0.9, 0.1, 0.6, 0.55]])
    x = torch.logit(scores).view(1, 1, 4)
    # Groups {0, 1} and {2, 3} score .9 + .1 = 1.0 and .6 + .55 = 1.15: the second is kept, so
    # experts 2 and 3 are chosen although expert 0 scores best.
    assert sorted(layer._choose(scores)[0].tolist()) == [2, 3]
    layer(x)
    assert sorted(layer._routing[2][0].tolist()) == [2, 3]
    # A bias of -.5 on expert 3 makes the second group's biased score .6 + .05 = .65 < 1.0:
    # experts 0 and 1, weighed by their unbiased scores, 2 · (.9, .1) / (.9 + .1).
    with torch.no_grad():
        layer.expert_bias.copy_(torch.tensor([0.0, 0.0, 0.0, -0.5]))
    assert sorted(layer._choose(scores)[0].tolist()) == [0, 1]
    with torch.no_grad():
        expected = sum(
            w
            * F.linear(F.silu(F.linear(x, layer.expert_gate[e])) * F.linear(x, layer.expert_up[e]), layer.expert_out[e])
            for e, w in ((0, 1.8), (1, 0.2))
        )
        torch.testing.assert_close(layer(x), expected)


def test_aux_losses_of_a_two_token_two_expert_example():
    # Router = identity on 2 dims: logits are the tokens themselves.
    layer = MixtureOfExperts(MoEParams(n_experts=2, top_k=1, hidden=4), dims(d_model=2))
    with torch.no_grad():
        layer.router.weight.copy_(torch.eye(2))
    x = torch.tensor([[[math.log(3), 0.0], [math.log(2), 0.0]]])  # probs (3/4, 1/4) and (2/3, 1/3): both pick expert 0
    layer(x)
    losses = layer.auxiliary_losses()
    # f = (1, 0) of the tokens on each expert; P = mean probs = (17/24, 7/24); E · Σ f·P = 2 · 17/24.
    assert losses["moe_balance"].value.item() == pytest.approx(17 / 12)
    # logsumexp = ln(3 + 1) and ln(2 + 1).
    assert losses["moe_z"].value.item() == pytest.approx((math.log(4) ** 2 + math.log(3) ** 2) / 2)
    assert (losses["moe_balance"].weight, losses["moe_z"].weight) == (0.01, 0.0)


def test_balance_loss_is_k_when_balanced_and_trains_the_router():
    layer = moe(n_experts=4, top_k=2, hidden=8, balance_loss_weight=0.1)
    with torch.no_grad():
        layer.router.weight.zero_()  # uniform probabilities; ties go to experts 0 and 1
    layer(torch.randn(1, 4, 16))
    loss = layer.auxiliary_losses()["moe_balance"]
    # f = (1, 1, 0, 0), P = 1/4 each: 4 · (1/4 + 1/4) = 2 = k, the balanced value.
    assert loss.value.item() == pytest.approx(2.0) and loss.weight == 0.1
    layer.auxiliary_losses()["moe_balance"].value.backward()
    assert layer.router.weight.grad is not None and layer.router.weight.grad.abs().sum() > 0


# ---- against transformers ---------------------------------------------------------------------


def _copy_experts(ours, gate_up, down):
    with torch.no_grad():
        gate_up.copy_(torch.cat([ours.expert_gate, ours.expert_up], dim=1))  # (E, 2·hidden, C): gate rows, then up rows
        down.copy_(ours.expert_out)


@torch.no_grad()
def test_matches_transformers_mixtral_sparse_block_and_its_balance_loss():
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock, load_balancing_loss_func

    ours = moe(n_experts=4, top_k=2, hidden=12)
    config = MixtralConfig(
        hidden_size=16, intermediate_size=12, num_local_experts=4, num_experts_per_tok=2, router_jitter_noise=0.0
    )
    theirs = MixtralSparseMoeBlock(config).eval()
    theirs.gate.weight.copy_(ours.router.weight)
    _copy_experts(ours, theirs.experts.gate_up_proj, theirs.experts.down_proj)
    x = torch.randn(2, 9, 16)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
    router_logits = F.linear(x.view(-1, 16), theirs.gate.weight)
    expected = load_balancing_loss_func((router_logits,), num_experts=4, top_k=2)
    torch.testing.assert_close(ours.auxiliary_losses()["moe_balance"].value, expected)


@pytest.mark.parametrize("norm_topk_prob", [True, False])
@torch.no_grad()
def test_matches_transformers_qwen3_moe_block(norm_topk_prob):
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    ours = moe(n_experts=6, top_k=2, hidden=12, normalize_top_k=norm_topk_prob)
    config = Qwen3MoeConfig(
        hidden_size=16, moe_intermediate_size=12, num_experts=6, num_experts_per_tok=2, norm_topk_prob=norm_topk_prob
    )
    theirs = Qwen3MoeSparseMoeBlock(config).eval()
    theirs.gate.weight.copy_(ours.router.weight)
    _copy_experts(ours, theirs.experts.gate_up_proj, theirs.experts.down_proj)
    x = torch.randn(2, 9, 16)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_groups, top_groups", [(1, 1), (4, 2), (8, 3)])
@torch.no_grad()
def test_matches_transformers_deepseek_v3_moe(n_groups, top_groups):
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    ours = moe(
        n_experts=16,
        top_k=3,
        hidden=12,
        scoring="sigmoid",
        routed_scale=2.5,
        n_shared_experts=1,
        expert_bias=True,
        n_groups=n_groups,
        top_groups=top_groups,
    )
    config = DeepseekV3Config(
        hidden_size=16,
        moe_intermediate_size=12,
        n_routed_experts=16,
        num_experts_per_tok=3,
        n_shared_experts=1,
        n_group=n_groups,
        topk_group=top_groups,
        norm_topk_prob=True,
        routed_scaling_factor=2.5,
    )
    theirs = DeepseekV3MoE(config).eval()
    theirs.gate.weight.copy_(ours.router.weight)
    theirs.gate.e_score_correction_bias.copy_(ours.expert_bias)
    _copy_experts(ours, theirs.experts.gate_up_proj, theirs.experts.down_proj)
    for name in ("gate_proj", "up_proj", "down_proj"):
        getattr(theirs.shared_experts, name).weight.copy_(
            getattr(ours.shared, "out_proj" if name == "down_proj" else name).weight
        )
    x = torch.randn(2, 9, 16)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_matches_transformers_gpt_oss_mlp_with_its_clamps_at_work():
    from transformers import GptOssConfig
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP

    ours = moe(**GPT_OSS, hidden=12)
    ours.expert_gate.normal_(0, 1.0)  # large gates and ups, so both clamps at 7 bite
    ours.expert_up.normal_(0, 1.0)
    config = GptOssConfig(hidden_size=16, intermediate_size=12, num_local_experts=4, num_experts_per_tok=2)
    assert (config.swiglu_limit, config.swiglu_alpha) == (7.0, 1.702)
    theirs = GptOssMLP(config).eval()
    theirs.router.weight.copy_(ours.router.weight)
    theirs.router.bias.copy_(ours.router.bias)
    # Their gate_up_proj is (E, C, 2·hidden) with gate and up interleaved: columns 0, 2, ... gate.
    theirs.experts.gate_up_proj[..., 0::2] = ours.expert_gate.transpose(1, 2)
    theirs.experts.gate_up_proj[..., 1::2] = ours.expert_up.transpose(1, 2)
    theirs.experts.gate_up_proj_bias[..., 0::2] = ours.expert_gate_bias
    theirs.experts.gate_up_proj_bias[..., 1::2] = ours.expert_up_bias
    theirs.experts.down_proj.copy_(ours.expert_out.transpose(1, 2))
    theirs.experts.down_proj_bias.copy_(ours.expert_out_bias)
    x = 3 * torch.randn(2, 9, 16)
    gates = torch.einsum("ntc,ehc->nteh", x, ours.expert_gate)
    assert (gates > 7).any() and (gates.abs() < 7).any()  # clamped and unclamped values both occur
    torch.testing.assert_close(ours(x), theirs(x)[0], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("norm_topk_prob", [True, False])
@torch.no_grad()
def test_matches_transformers_qwen3_next_block_and_its_gated_shared_expert(norm_topk_prob):
    from transformers import Qwen3NextConfig
    from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextSparseMoeBlock

    ours = moe(**(QWEN3_NEXT | dict(normalize_top_k=norm_topk_prob)), hidden=12)
    config = Qwen3NextConfig(
        hidden_size=16,
        moe_intermediate_size=12,
        shared_expert_intermediate_size=12,
        num_experts=6,
        num_experts_per_tok=2,
        norm_topk_prob=norm_topk_prob,
    )
    theirs = Qwen3NextSparseMoeBlock(config).eval()
    theirs.gate.weight.copy_(ours.router.weight)
    _copy_experts(ours, theirs.experts.gate_up_proj, theirs.experts.down_proj)
    for name in ("gate_proj", "up_proj", "down_proj"):
        getattr(theirs.shared_expert, name).weight.copy_(
            getattr(ours.shared, "out_proj" if name == "down_proj" else name).weight
        )
    theirs.shared_expert_gate.weight.copy_(ours.shared_gate.weight)
    x = torch.randn(2, 9, 16)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_matches_transformers_llama4_moe_whose_scores_scale_the_experts_input():
    from transformers import Llama4TextConfig
    from transformers.models.llama4.modeling_llama4 import Llama4TextMoe

    ours = moe(**LLAMA4, hidden=12)
    ours.expert_gate.normal_(0, 0.5)  # large enough that SwiGLU(s · x) and s · SwiGLU(x) differ
    ours.expert_up.normal_(0, 0.5)
    config = Llama4TextConfig(hidden_size=16, intermediate_size=12, num_local_experts=4, num_experts_per_tok=1)
    theirs = Llama4TextMoe(config).eval()
    theirs.router.weight.copy_(ours.router.weight)
    # Their gate_up_proj is (E, C, 2·hidden): the gate's columns, then the up's.
    theirs.experts.gate_up_proj.copy_(torch.cat([ours.expert_gate, ours.expert_up], dim=1).transpose(1, 2))
    theirs.experts.down_proj.copy_(ours.expert_out.transpose(1, 2))
    for name in ("gate_proj", "up_proj", "down_proj"):
        getattr(theirs.shared_expert, name).weight.copy_(
            getattr(ours.shared, "out_proj" if name == "down_proj" else name).weight
        )
    x = torch.randn(2, 9, 16)
    torch.testing.assert_close(ours(x), theirs(x)[0].view(2, 9, 16), atol=1e-5, rtol=1e-5)  # theirs: (B·T, C)
    output_weighted = moe(**(LLAMA4 | dict(weights_at="output")), hidden=12)
    output_weighted.load_state_dict(ours.state_dict())
    assert not torch.allclose(output_weighted(x), ours(x), atol=1e-3)  # where the weight goes matters


# ---- counts, per-layer use, config errors ------------------------------------------------------


def test_active_parameters_are_what_a_forward_pass_multiplies(registry):
    C, H, E, k, shared = 32, 48, 8, 2, 1
    spec = {"name": "moe", "n_experts": E, "top_k": k, "hidden": H, "n_shared_experts": shared}
    config = tiny_config(
        registry, n_layers=2, layer_pattern=["dense", "moe"], layer_kinds={"dense": {}, "moe": {"feed_forward": spec}}
    )
    model = build(config)
    dense_ffn = 2 * C * 4 * C + 4 * C + C  # the default gelu MLP: two matrices and their biases
    assert costs.param_counts(model)["feed_forward"] == dense_ffn + C * E + 3 * E * H * C + 3 * shared * H * C
    idle = (E - k) * 3 * H * C
    assert costs.active_parameters_per_token(model) == costs.param_counts(model)["total"] - idle
    layer = model.blocks[1].feed_forward
    x = torch.randn(3, 5, C)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        layer(x)
    # Every multiply of the layer's forward: 2 FLOPs per active matrix weight per token.
    assert counter.get_total_flops() == 15 * (layer.flops_per_token(16) + layer.shared.flops_per_token(16))
    assert layer.flops_per_token(16) + layer.shared.flops_per_token(16) == 2 * (
        C * E + k * 3 * H * C + 3 * shared * H * C
    )


@pytest.mark.parametrize("family", [GPT_OSS, QWEN3_NEXT, LLAMA4], ids=["gpt_oss", "qwen3_next", "llama4"])
def test_families_active_parameters_and_flops_are_what_a_forward_pass_multiplies(registry, family):
    C, H = 32, 48
    spec = {"name": "moe", "hidden": H, **family}
    model = build(tiny_config(registry, n_layers=1, feed_forward=spec))
    layer = model.blocks[0].feed_forward
    E, k, p = layer.params.n_experts, layer.params.top_k, layer.params
    router = C * E + (E if p.router_bias else 0)
    expert = 3 * H * C + (2 * H + C if p.expert_biases else 0)
    shared = 3 * p.n_shared_experts * H * C
    gate = C if p.shared_expert_gate else 0
    assert costs.param_counts(model)["feed_forward"] == router + E * expert + shared + gate
    assert costs.active_parameters_per_token(model) == costs.param_counts(model)["total"] - (E - k) * expert
    x = torch.randn(3, 5, C)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        layer(x)
    shared_flops = layer.shared.flops_per_token(16) if layer.shared is not None else 0
    assert counter.get_total_flops() == 15 * (layer.flops_per_token(16) + shared_flops)
    assert layer.flops_per_token(16) + shared_flops == 2 * (C * E + k * 3 * H * C + shared + gate)


@pytest.mark.parametrize("family", [GPT_OSS, QWEN3_NEXT, LLAMA4], ids=["gpt_oss", "qwen3_next", "llama4"])
def test_the_kit_passes_for_each_familys_routing(registry, family):
    check_component("feed_forward", "moe", registry=registry, **family)


def test_a_gate_on_no_shared_experts_is_a_config_error(registry):
    with pytest.raises(ConfigError, match=r"feed_forward 'moe': shared_expert_gate=true .* n_shared_experts=0"):
        tiny_config(registry, feed_forward={"name": "moe", "shared_expert_gate": True})


def test_gpt_averages_the_moe_losses_over_the_layers_that_have_experts(registry):
    spec = {"name": "moe", "n_experts": 4, "top_k": 2, "z_loss_weight": 0.001}
    config = tiny_config(
        registry, n_layers=4, layer_pattern=["dense", "moe"], layer_kinds={"dense": {}, "moe": {"feed_forward": spec}}
    )
    model = build(config)
    model(torch.randint(0, 50, (2, 8)))
    layers = [model.blocks[i].feed_forward.auxiliary_losses() for i in (1, 3)]
    losses = model.auxiliary_losses()
    assert set(losses) == {"moe_balance", "moe_z"} and losses["moe_z"].weight == 0.001
    for name in losses:
        torch.testing.assert_close(losses[name].value, (layers[0][name].value + layers[1][name].value) / 2)


def test_top_k_above_the_experts_is_a_config_error(registry):
    with pytest.raises(ConfigError, match=r"feed_forward 'moe': top_k=3 is more than n_experts=2"):
        tiny_config(registry, feed_forward={"name": "moe", "n_experts": 2, "top_k": 3})


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(n_experts=6, n_groups=4), "n_experts=6 is not divisible into n_groups=4"),
        (
            dict(n_experts=4, n_groups=4, top_groups=2, top_k=1),
            "n_groups=4 leaves 1 expert per group; a group scores its two best experts",
        ),
        (dict(n_experts=8, n_groups=4, top_groups=5), "top_groups=5 is more than n_groups=4"),
        (
            dict(n_experts=8, n_groups=4, top_groups=1, top_k=3),
            "top_k=3 is more than the 2 experts in top_groups=1 groups of 2",
        ),
    ],
)
def test_impossible_groupings_are_config_errors(registry, params, message):
    with pytest.raises(ConfigError, match=r"feed_forward 'moe': " + re.escape(message)):
        tiny_config(registry, feed_forward={"name": "moe", **params})


def test_the_expert_bias_is_a_buffer_saved_with_the_weights(registry):
    model = GPT(tiny_config(registry, feed_forward={"name": "moe", "n_experts": 4, "expert_bias": True}, n_layers=1))
    layer = model.blocks[0].feed_forward
    assert "blocks.0.feed_forward.expert_bias" in model.state_dict() and layer.expert_bias.shape == (4,)
    assert "expert_bias" not in dict(layer.named_parameters())  # not trained by gradients
    assert layer.expert_bias.abs().sum() == 0


def test_init_schemes_draw_the_experts(registry):
    model = GPT(tiny_config(registry, feed_forward={"name": "moe", "n_experts": 4, "hidden": 64}, n_layers=2))
    layer = model.blocks[0].feed_forward
    assert layer.expert_gate.std().item() == pytest.approx(0.02, rel=0.1)
    assert layer.expert_out.std().item() == pytest.approx(0.02 / math.sqrt(4), rel=0.1)
    torch_default = GPT(
        tiny_config(registry, feed_forward={"name": "moe", "n_experts": 4, "hidden": 64}, init="torch_default")
    )
    bound = 1 / math.sqrt(32)  # nn.Linear(32, 64)'s uniform bound
    gate = torch_default.blocks[0].feed_forward.expert_gate
    assert gate.abs().max().item() <= bound and gate.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)


# ---- the experts operator: gradients, torch.compile, autocast -----------------------------------


def test_the_experts_operator_has_the_gradients_of_its_function():
    torch.manual_seed(0)
    E, H, C = 3, 5, 4
    grouped = torch.randn(7, C, dtype=torch.double, requires_grad=True)
    weights = [
        torch.randn(E, H, C, dtype=torch.double, requires_grad=True),
        torch.randn(E, H, C, dtype=torch.double, requires_grad=True),
        torch.randn(E, C, H, dtype=torch.double, requires_grad=True),
    ]
    ends = torch.tensor([3, 3, 7])  # an expert with no tokens among them
    # Finite differences, and PyTorch's own checks of the operator's registration (fake shapes, autograd).
    assert torch.autograd.gradcheck(lambda *a: torch.ops.gptzoo.moe_experts(*a, ends)[0], (grouped, *weights))
    torch.library.opcheck(torch.ops.gptzoo.moe_experts, (grouped, *weights, ends))


def test_the_experts_operator_with_biases_and_clamps_has_the_gradients_of_its_function():
    torch.manual_seed(0)
    E, H, C = 3, 5, 4
    grouped = torch.randn(7, C, dtype=torch.double, requires_grad=True)
    weights = [
        torch.randn(*shape, dtype=torch.double, requires_grad=True) for shape in ((E, H, C), (E, H, C), (E, C, H))
    ]
    biases = [torch.randn(*shape, dtype=torch.double, requires_grad=True) for shape in ((E, H), (E, H), (E, C))]
    ends = torch.tensor([3, 3, 7])
    form = dict(alpha=1.702, limit=1.5, shift=1.0)  # a limit the values cross: both clamps act
    g, u = torch.ops.gptzoo.moe_experts(grouped, *weights, ends, *biases, **form)[1:]
    assert (g > 1.5).any() and (u.abs() > 1.5).any() and (g.abs() < 1.5).any()

    def y(x, *tensors):
        return torch.ops.gptzoo.moe_experts(x, *tensors[:3], ends, *tensors[3:], **form)[0]

    assert torch.autograd.gradcheck(y, (grouped, *weights, *biases))
    torch.library.opcheck(torch.ops.gptzoo.moe_experts, (grouped, *weights, ends, *biases), form)


@pytest.mark.parametrize("family", [GPT_OSS, QWEN3_NEXT, LLAMA4], ids=["gpt_oss", "qwen3_next", "llama4"])
def test_families_compile_to_one_graph_with_the_gradients_of_eager(family):
    registry = make_registry(entry_points=False)
    torch.manual_seed(0)
    model = GPT(tiny_config(registry, n_layers=1, feed_forward={"name": "moe", **family}))
    with torch.no_grad():  # gates past the clamp, so the compiled backward's clamps are tested (gpt-oss)
        model.blocks[0].feed_forward.expert_gate.normal_(0, 1.0)
    idx = torch.randint(0, 50, (2, 10))
    explanation = torch._dynamo.explain(model)(idx)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    compiled(idx).square().mean().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    model(idx).square().mean().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, msg=name)
    torch._dynamo.reset()


def test_compiles_to_one_graph_with_the_gradients_of_eager(registry):
    spec = {
        "name": "moe",
        "n_experts": 4,
        "top_k": 2,
        "n_shared_experts": 1,
        "expert_bias": True,
        "n_groups": 2,
        "top_groups": 1,
    }
    torch.manual_seed(0)
    model = GPT(
        tiny_config(
            registry,
            n_layers=2,
            layer_pattern=["dense", "moe"],
            layer_kinds={"dense": {}, "moe": {"feed_forward": spec}},
        )
    )
    idx = torch.randint(0, 50, (2, 10))
    explanation = torch._dynamo.explain(model)(idx)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    compiled(idx).square().mean().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    model(idx).square().mean().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, msg=name)
    torch._dynamo.reset()


def test_runs_under_bfloat16_autocast(registry):
    layer = moe(n_experts=4, top_k=2, hidden=12)
    x = torch.randn(2, 5, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    y.float().square().sum().backward()
    assert y.dtype == torch.bfloat16 and layer.expert_gate.grad.dtype == torch.float32
    torch.testing.assert_close(y.float(), layer(x), atol=0.05, rtol=0.05)


@pytest.mark.parametrize("family", [GPT_OSS, QWEN3_NEXT, LLAMA4], ids=["gpt_oss", "qwen3_next", "llama4"])
def test_families_run_under_bfloat16_autocast(family):
    layer = moe(**family, hidden=12)
    x = torch.randn(2, 5, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    y.float().square().sum().backward()
    grads = [p.grad for p in (layer.expert_gate, layer.expert_gate_bias, layer.router.bias) if p is not None]
    assert y.dtype == torch.bfloat16 and all(g.dtype == torch.float32 for g in grads)
    torch.testing.assert_close(y.float(), layer(x), atol=0.05, rtol=0.05)


# ---- auxiliary-loss-free balancing (DeepSeek-V3) ------------------------------------------------


def _one_hot_router(E=4, rate=0.1, **params):
    """Router = identity: a token 5·e_i goes to expert i (sigmoid scores, top 1)."""
    layer = MixtureOfExperts(
        MoEParams(n_experts=E, top_k=1, hidden=4, scoring="sigmoid", expert_bias=True, bias_update_rate=rate, **params),
        dims(d_model=E),
    )
    with torch.no_grad():
        layer.router.weight.copy_(torch.eye(E))
    return layer.train()


def _tokens_to(*experts, E=4):
    return (5 * F.one_hot(torch.tensor(experts), E).float()).view(1, len(experts), E)


def test_the_bias_moves_by_the_rate_against_the_load_of_every_forward_since_the_step():
    layer = _one_hot_router()
    layer(_tokens_to(0, 0))  # two micro-batches: experts 0, 0, then 0, 1
    layer(_tokens_to(0, 1))
    # The last forward's imbalance: loads (1, 1, 0, 0), mean 1/2: max / mean - 1 = 1.
    assert layer.auxiliary_losses()["moe_imbalance"].value.item() == pytest.approx(1.0)
    assert layer.auxiliary_losses()["moe_imbalance"].weight == 0.0  # logged, never trained on
    with torch.no_grad():
        layer.eval()(_tokens_to(3, 3, 3))  # evaluation's tokens do not count
    layer.after_optimizer_step()
    # Loads (3, 1, 0, 0), mean 1: expert 0 overloaded (down), 1 at the mean (still), 2 and 3 under (up).
    torch.testing.assert_close(layer.expert_bias, torch.tensor([-0.1, 0.0, 0.1, 0.1]))
    layer.after_optimizer_step()  # no forward since: nothing to move
    torch.testing.assert_close(layer.expert_bias, torch.tensor([-0.1, 0.0, 0.1, 0.1]))


def test_without_a_rate_the_bias_stays_and_no_imbalance_is_logged():
    layer = _one_hot_router(rate=0.0)
    layer(_tokens_to(0, 0, 1))
    layer.after_optimizer_step()
    assert layer.expert_bias.abs().sum() == 0 and "moe_imbalance" not in layer.auxiliary_losses()


def test_an_imbalanced_router_drifts_toward_balance_over_steps():
    from gptzoo.recipes.training.optim import clip_and_step

    torch.manual_seed(0)
    layer = _one_hot_router(rate=0.02)
    for p in layer.parameters():
        p.requires_grad_(False)  # the router stays as it is: only the bias can balance it
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)
    generator = torch.Generator().manual_seed(1)

    def batch():  # every token leans toward expert 0
        return torch.randn(4, 32, 4, generator=generator) + torch.tensor([1.5, 0.0, 0.0, 0.0])

    probe = batch()

    def imbalance():
        with torch.no_grad():
            layer.eval()(probe)  # in eval mode: the probe's tokens do not count as load
        layer.train()
        return layer.auxiliary_losses()["moe_imbalance"].value.item()

    before = imbalance()
    assert before > 1.0  # expert 0 takes more than twice its share
    biases = [layer.expert_bias.clone()]
    for _ in range(60):
        layer(batch())
        clip_and_step(layer, optimizer, None)  # the training step's end calls after_optimizer_step
        biases.append(layer.expert_bias.clone())
    steps = torch.stack(biases).diff(dim=0).abs()  # each step moves each bias by 0 or the rate
    assert torch.all((steps < 1e-7) | ((steps - 0.02).abs() < 1e-7))
    assert layer.expert_bias.argmin().item() == 0
    after = imbalance()
    assert after < before / 4


def test_balancing_needs_the_expert_bias(registry):
    with pytest.raises(ConfigError, match=r"feed_forward 'moe': bias_update_rate=0.001 .* expert_bias=false"):
        tiny_config(registry, feed_forward={"name": "moe", "bias_update_rate": 0.001})


def test_the_kit_passes_with_balancing(registry):
    check_component("feed_forward", "moe", registry=registry, expert_bias=True, bias_update_rate=0.001)


def test_balancing_counts_the_load_under_compile_as_in_eager():
    registry = make_registry(entry_points=False)
    spec = {"name": "moe", "n_experts": 4, "top_k": 2, "expert_bias": True, "bias_update_rate": 0.01}
    torch.manual_seed(0)
    eager = GPT(tiny_config(registry, n_layers=1, feed_forward=spec)).train()
    model = GPT(tiny_config(registry, n_layers=1, feed_forward=spec)).train()
    model.load_state_dict(eager.state_dict())
    idx = torch.randint(0, 50, (2, 10))
    explanation = torch._dynamo.explain(model)(idx)  # a training forward: its load counts, as eager's
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    eager(idx)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    for _ in range(3):
        for batch in (idx, idx.flip(0)[:, :7]):  # two micro-batches a step
            compiled(batch)
            eager(batch)
        model.blocks[0].feed_forward.after_optimizer_step()
        eager.blocks[0].feed_forward.after_optimizer_step()
    torch.testing.assert_close(model.blocks[0].feed_forward.expert_bias, eager.blocks[0].feed_forward.expert_bias)
    assert eager.blocks[0].feed_forward.expert_bias.abs().sum() > 0
    torch._dynamo.reset()
