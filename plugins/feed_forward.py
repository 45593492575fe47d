"""Position-wise feed-forward networks: GELU (GPT-2's tanh approximation), ReLU, SwiGLU, GeGLU.
The mixture of experts lives in gptzoo.plugins.moe."""

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from gptzoo.core import Dims, FeedForward, Params
from gptzoo.registry import hookimpl


class MLPParams(Params):
    hidden: int | None = None  # None: 4 × d_model
    bias: bool = True


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


class GLUParams(Params):
    hidden: int | None = None  # None: 8/3 × d_model rounded up to a multiple of 64 (about 4 × d_model's parameters)
    bias: bool = False


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
        self.gate_proj = nn.Linear(dims.d_model, hidden, bias=params.bias)
        self.up_proj = nn.Linear(dims.d_model, hidden, bias=params.bias)
        self.out_proj = nn.Linear(hidden, dims.d_model, bias=params.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_proj(self.activation(self.gate_proj(x)) * self.up_proj(x))  # (B, T, hidden) -> (B, T, C)


class SwiGLUFeedForward(_GatedLinearUnit):
    """SiLU gate (Llama, Mistral, Qwen)."""


class GeGLUFeedForward(_GatedLinearUnit):
    """GELU gate in its tanh approximation (Gemma's gelu_pytorch_tanh)."""

    activation = staticmethod(gelu_tanh)


@hookimpl
def register_components(register):
    register("feed_forward", "gelu", GELUFeedForward)
    register("feed_forward", "relu", ReLUFeedForward)
    register("feed_forward", "swiglu", SwiGLUFeedForward)
    register("feed_forward", "geglu", GeGLUFeedForward)
