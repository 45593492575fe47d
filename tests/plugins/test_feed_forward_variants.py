"""Squared ReLU and xIELU against their formulas worked by hand and against transformers' Nemotron-H
and Apertus MLPs built tiny with our weights."""

import math

import pytest
import torch

from gptzoo.core import GPT, ConfigError, Dims
from gptzoo.plugins.feed_forward import (
    MLPParams,
    SquaredReLUFeedForward,
    XIELUFeedForward,
    XIELUParams,
)
from gptzoo.recipes.training import costs
from gptzoo.testing import check_component, tiny_config


def dims(d_model=8):
    return Dims(vocab_size=50, context_length=16, d_model=d_model, n_heads=2, n_kv_heads=2, n_layers=1)


def identity_mlp(cls, params):
    """An MLP whose projections are identities, so its output is the activation itself."""
    mlp = cls(params, dims(4))
    with torch.no_grad():
        mlp.in_proj.weight.copy_(torch.eye(4))
        mlp.out_proj.weight.copy_(torch.eye(4))
    return mlp


@torch.no_grad()
def test_squared_relu_is_relu_squared_on_worked_values():
    mlp = identity_mlp(SquaredReLUFeedForward, MLPParams(hidden=4, bias=False))
    x = torch.tensor([[[-2.0, -0.5, 0.5, 3.0]]])
    torch.testing.assert_close(mlp(x), torch.tensor([[[0.0, 0.0, 0.25, 9.0]]]))


@torch.no_grad()
def test_xielu_at_initialisation_on_worked_values():
    # α_p = 0.8, α_n = 0.8 (β = 0.5 plus softplus of the stored 0.3's inverse), β = 0.5.
    mlp = identity_mlp(XIELUFeedForward, XIELUParams(hidden=4, bias=False))
    x = torch.tensor([[[-2.0, -0.5, 1.0, 3.0]]])
    expected = [
        0.8 * (math.exp(-2.0) - 1 + 2.0) + 0.5 * -2.0,  # negative side: α_n (eˣ - 1 - x) + β x
        0.8 * (math.exp(-0.5) - 1 + 0.5) + 0.5 * -0.5,
        0.8 * 1.0 + 0.5 * 1.0,  # positive side: α_p x² + β x
        0.8 * 9.0 + 0.5 * 3.0,
    ]
    torch.testing.assert_close(mlp(x), torch.tensor([[expected]]))


@torch.no_grad()
def test_xielu_reads_its_learned_scalars_through_softplus():
    mlp = identity_mlp(XIELUFeedForward, XIELUParams(hidden=4, bias=False, beta=0.25))
    mlp.alpha_p.fill_(0.0)  # α_p = softplus(0) = ln 2
    mlp.alpha_n.fill_(math.log(math.e - 1))  # α_n = β + softplus(ln(e - 1)) = 0.25 + 1
    x = torch.tensor([[[-1.0, 0.0, 2.0, -1e-8]]])
    # At x = 0 and just below it, the exponential is taken of eps = -1e-6: α_n (e^eps - 1 - x) + β x.
    near_zero = [1.25 * (math.expm1(-1e-6) - x0) + 0.25 * x0 for x0 in (0.0, -1e-8)]
    expected = [1.25 * (math.exp(-1) - 1 + 1) - 0.25, near_zero[0], math.log(2) * 4 + 0.5, near_zero[1]]
    torch.testing.assert_close(mlp(x), torch.tensor([[expected]]), atol=1e-9, rtol=1e-6)


def test_xielu_learns_its_two_scalars():
    torch.manual_seed(0)
    mlp = XIELUFeedForward(XIELUParams(hidden=16), dims())
    mlp(torch.randn(2, 5, 8)).square().sum().backward()
    assert mlp.alpha_p.grad.abs().item() > 0 and mlp.alpha_n.grad.abs().item() > 0


# ---- against transformers ---------------------------------------------------------------------


@pytest.mark.parametrize("bias", [False, True])
@torch.no_grad()
def test_squared_relu_matches_transformers_nemotron_h_mlp(bias):
    from transformers import NemotronHConfig
    from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHMLP

    torch.manual_seed(0)
    ours = SquaredReLUFeedForward(MLPParams(hidden=24, bias=bias), dims())
    theirs = NemotronHMLP(NemotronHConfig(hidden_size=8, intermediate_size=24, mlp_bias=bias, mlp_hidden_act="relu2"))
    theirs.load_state_dict(
        {"up_proj." + k: v for k, v in ours.in_proj.state_dict().items()}
        | {"down_proj." + k: v for k, v in ours.out_proj.state_dict().items()}
    )
    x = torch.randn(2, 7, 8)
    torch.testing.assert_close(ours(x), theirs(x))


@torch.no_grad()
def test_xielu_matches_transformers_apertus_mlp():
    from transformers import ApertusConfig
    from transformers.models.apertus.modeling_apertus import ApertusMLP

    torch.manual_seed(0)
    ours = XIELUFeedForward(XIELUParams(hidden=24, bias=False), dims())
    ours.alpha_p.fill_(-0.4)  # away from the initial values, so a swap of the two would show
    ours.alpha_n.fill_(0.9)
    theirs = ApertusMLP(ApertusConfig(hidden_size=8, intermediate_size=24, hidden_act="xielu", dtype=torch.float32))
    theirs.load_state_dict(
        {
            "up_proj.weight": ours.in_proj.weight,
            "down_proj.weight": ours.out_proj.weight,
            "act_fn.alpha_p": ours.alpha_p,
            "act_fn.alpha_n": ours.alpha_n,
        }
        | {f"act_fn.{name}": buffer for name, buffer in theirs.act_fn.named_buffers()}
    )
    x = 3 * torch.randn(2, 7, 8)  # both sides of zero, well into the negative side
    torch.testing.assert_close(ours(x), theirs(x))


@torch.no_grad()
def test_xielu_initialises_as_transformers_does():
    from transformers.activations import XIELUActivation

    ours = XIELUFeedForward(XIELUParams(alpha_p_init=0.6, alpha_n_init=0.9, beta=0.4), dims())
    theirs = XIELUActivation(alpha_p_init=0.6, alpha_n_init=0.9, beta=0.4, dtype=torch.float32)
    torch.testing.assert_close(ours.alpha_p, theirs.alpha_p)
    torch.testing.assert_close(ours.alpha_n, theirs.alpha_n)


# ---- config, the kit, counts ---------------------------------------------------------------------


def test_xielu_with_alpha_n_at_beta_is_a_config_error(registry):
    with pytest.raises(ConfigError, match=r"feed_forward 'xielu': alpha_n_init=0.5 is not above beta=0.5"):
        tiny_config(registry, feed_forward={"name": "xielu", "alpha_n_init": 0.5})


@pytest.mark.parametrize(
    "name, params", [("squared_relu", dict(bias=False, hidden=48)), ("xielu", dict(bias=False, beta=0.3, eps=-1e-4))]
)
def test_the_kit_passes_with_non_default_params(registry, name, params):
    check_component("feed_forward", name, registry=registry, **params)


@pytest.mark.parametrize("name", ["squared_relu", "xielu"])
def test_parameter_and_flop_counts_are_the_two_matrices(registry, name):
    C, H = 32, 48
    model = GPT(tiny_config(registry, feed_forward={"name": name, "hidden": H, "bias": False}, n_layers=1))
    scalars = 2 if name == "xielu" else 0  # a_p and a_n
    layer = model.blocks[0].feed_forward
    assert costs.param_counts(model)["feed_forward"] == 2 * C * H + scalars
    assert layer.flops_per_token(16) == 2 * 2 * C * H


@torch.no_grad()
def test_swiglu_gate_and_out_multipliers_on_worked_values():
    """Falcon-H1's µP mlp_multipliers: down(silu(gate(x) · g) ⊙ up(x)) · d, with identity projections."""
    from gptzoo.plugins.feed_forward import GLUParams, SwiGLUFeedForward

    mlp = SwiGLUFeedForward(GLUParams(hidden=4, gate_multiplier=2.0, out_multiplier=0.5), dims(4))
    for proj in (mlp.gate_proj, mlp.up_proj, mlp.out_proj):
        proj.weight.copy_(torch.eye(4))
    x = torch.tensor([[[-1.0, 0.0, 0.5, 2.0]]])
    silu = lambda v: v / (1 + math.exp(-v))  # noqa: E731
    expected = torch.tensor([[[0.5 * silu(2.0 * v) * v for v in (-1.0, 0.0, 0.5, 2.0)]]])
    torch.testing.assert_close(mlp(x), expected)
