"""Position-wise feed-forward networks: GELU (GPT-2's tanh approximation), ReLU, squared ReLU,
xIELU, SwiGLU, GeGLU. The mixture of experts lives in gptzoo.plugins.moe."""

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from gptzoo.core import Dims, FeedForward, InitScheme, Params
from gptzoo.registry import hookimpl


class MLPParams(Params):
    hidden: int | None = Field(None, gt=0, description="the hidden width; None: 4 × d_model")
    bias: bool = Field(True, description="biases in both projections")


def gelu_tanh(x: Tensor) -> Tensor:
    """GELU's tanh approximation, as in GPT-2: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))."""
    return F.gelu(x, approximate="tanh")


class _TwoLayerMLP(FeedForward):
    Params = MLPParams
    activation = staticmethod(gelu_tanh)

    def __init__(self, params: MLPParams, dims: Dims):
        super().__init__(params, dims)
        hidden = params.hidden or 4 * dims.d_model
        self.in_proj = nn.Linear(dims.d_model, hidden, bias=params.bias)
        self.out_proj = nn.Linear(hidden, dims.d_model, bias=params.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_proj(self.activation(self.in_proj(x)))  # (B, T, C) -> (B, T, hidden) -> (B, T, C)


class GELUParams(MLPParams):
    approximate: Literal["tanh", "none"] = Field(
        "tanh", description="tanh: GPT-2's approximation (gelu_new); none: the exact erf GELU (GPT-NeoX, Pythia, BERT)"
    )


class GELUFeedForward(_TwoLayerMLP):
    Params = GELUParams

    def activation(self, x: Tensor) -> Tensor:
        return F.gelu(x, approximate=self.params.approximate)


class ReLUFeedForward(_TwoLayerMLP):
    activation = staticmethod(torch.relu)


def squared_relu(x: Tensor) -> Tensor:
    """relu(x)²."""
    return torch.relu(x).square()


class SquaredReLUFeedForward(_TwoLayerMLP):
    """relu(x W_in)², then W_out (So et al., 2021, "Primer"; nanochat, Nemotron-H, RWKV-7's channel mixing)."""

    activation = staticmethod(squared_relu)


def inverse_softplus(y: float) -> float:
    """The x with softplus(x) = log(1 + eˣ) = y, for y > 0."""
    return math.log(math.expm1(y))


class XIELUParams(MLPParams):
    alpha_p_init: float = Field(
        0.8, gt=0, description="the positive side's learned curvature α_p at initialisation (Apertus: 0.8)"
    )
    alpha_n_init: float = Field(
        0.8,
        gt=0,
        description="the negative side's learned curvature α_n at initialisation, above beta (Apertus: 0.8)",
    )
    beta: float = Field(0.5, description="the fixed slope β of both sides (Apertus: 0.5)")
    eps: float = Field(
        -1e-6, lt=0, description="the negative side's exponential is taken of min(x, eps) (Apertus: -1e-6)"
    )


class XIELUFeedForward(_TwoLayerMLP):
    """xIELU(x W_in), then W_out: a learned piecewise activation, quadratic for x > 0 and ELU-like
    below (Huang & Schlag, 2025, "Deriving activation functions using integration"; Apertus).

    xIELU(x) = α_p · x² + β · x for x > 0, and α_n · (e^min(x, eps) - 1 - x) + β · x otherwise,
    with α_p = softplus(a_p) and α_n = β + softplus(a_n) from the two learned scalars ``alpha_p``
    and ``alpha_n`` (a_p, a_n: transformers' XIELUActivation keeps these same two numbers).
    """

    Params = XIELUParams

    @classmethod
    def check(cls, params: XIELUParams, dims: Dims) -> None:
        if params.alpha_n_init <= params.beta:
            raise ValueError(
                f"alpha_n_init={params.alpha_n_init} is not above beta={params.beta}: α_n = beta + softplus(a_n) starts above beta"
            )

    def __init__(self, params: XIELUParams, dims: Dims):
        super().__init__(params, dims)
        self.alpha_p = nn.Parameter(torch.empty(1))
        self.alpha_n = nn.Parameter(torch.empty(1))
        self.init_weights("torch_default")

    def init_weights(self, scheme: InitScheme) -> None:
        """The projections as every MLP's; a_p and a_n at the values whose softplus gives the initial α_p and α_n - β."""
        super().init_weights(scheme)
        with torch.no_grad():
            self.alpha_p.fill_(inverse_softplus(self.params.alpha_p_init))
            self.alpha_n.fill_(inverse_softplus(self.params.alpha_n_init - self.params.beta))

    def activation(self, x: Tensor) -> Tensor:
        p = self.params
        alpha_p = F.softplus(self.alpha_p)
        alpha_n = p.beta + F.softplus(self.alpha_n)
        negative = (torch.expm1(x.clamp(max=p.eps)) - x) * alpha_n
        return torch.where(x > 0, alpha_p * x * x, negative) + p.beta * x


class GLUParams(Params):
    hidden: int | None = None  # None: 8/3 × d_model rounded up to a multiple of 64 (about 4 × d_model's parameters)
    bias: bool = False
    gate_multiplier: float = Field(
        1.0,
        description="multiplies the gate projection's output before the activation (Falcon-H1's µP mlp_multipliers[0])",
    )
    out_multiplier: float = Field(
        1.0, description="multiplies the output projection's output (Falcon-H1's µP mlp_multipliers[1])"
    )
    double_wide_kv_shared: bool = Field(
        False,
        description="twice the hidden width on layers that attend with another layer's keys and values "
        "(kv_shared_layers; Gemma 4's use_double_wide_mlp)",
    )


def glu_hidden(d_model: int) -> int:
    """8/3 × d_model rounded up to a multiple of 64: three matrices with about the parameters of a 4 × d_model MLP's two."""
    return 64 * math.ceil(8 * d_model / 3 / 64)


class _GatedLinearUnit(FeedForward):
    """activation(x W_gate) ⊙ (x W_up), then W_out (Shazeer, 2020, "GLU Variants Improve Transformer")."""

    Params = GLUParams
    activation = staticmethod(F.silu)

    def __init__(self, params: GLUParams, dims: Dims):
        super().__init__(params, dims)
        hidden = params.hidden or glu_hidden(dims.d_model)
        if params.double_wide_kv_shared and dims.kv_from is not None:
            hidden *= 2
        self.gate_proj = nn.Linear(dims.d_model, hidden, bias=params.bias)
        self.up_proj = nn.Linear(dims.d_model, hidden, bias=params.bias)
        self.out_proj = nn.Linear(hidden, dims.d_model, bias=params.bias)

    def forward(self, x: Tensor) -> Tensor:
        p = self.params
        gate = self.gate_proj(x) if p.gate_multiplier == 1.0 else self.gate_proj(x) * p.gate_multiplier
        y = self.out_proj(self.activation(gate) * self.up_proj(x))  # (B, T, hidden) -> (B, T, C)
        return y if p.out_multiplier == 1.0 else y * p.out_multiplier


class SwiGLUFeedForward(_GatedLinearUnit):
    """SiLU gate (Llama, Mistral, Qwen)."""


class GeGLUFeedForward(_GatedLinearUnit):
    """GELU gate in its tanh approximation (Gemma's gelu_pytorch_tanh)."""

    activation = staticmethod(gelu_tanh)


@hookimpl
def register_components(register):
    register("feed_forward", "gelu", GELUFeedForward)
    register("feed_forward", "relu", ReLUFeedForward)
    register("feed_forward", "squared_relu", SquaredReLUFeedForward)
    register("feed_forward", "xielu", XIELUFeedForward)
    register("feed_forward", "swiglu", SwiGLUFeedForward)
    register("feed_forward", "geglu", GeGLUFeedForward)
