"""Normalisation layers: LayerNorm (scale and shift), RMSNorm (scale only, no centring) and none."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gptzoo.core import Dims, Norm, Params
from gptzoo.registry import hookimpl


class LayerNormParams(Params):
    eps: float = 1e-5
    bias: bool = True


class LayerNorm(Norm):
    """(x - mean) / sqrt(var + eps) · scale + shift, with the biased variance."""

    Params = LayerNormParams

    def __init__(self, params: LayerNormParams, dims: Dims):
        super().__init__(params, dims)
        self.weight = nn.Parameter(torch.ones(dims.d_model))
        self.bias = nn.Parameter(torch.zeros(dims.d_model)) if params.bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, (x.size(-1),), self.weight, self.bias, self.params.eps)


class RMSNormParams(Params):
    eps: float = 1e-5


class RMSNorm(Norm):
    """x / sqrt(mean(x²) + eps) · scale (Zhang & Sennrich, 2019)."""

    Params = RMSNormParams

    def __init__(self, params: RMSNormParams, dims: Dims):
        super().__init__(params, dims)
        self.weight = nn.Parameter(torch.ones(dims.d_model))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.size(-1),), self.weight, self.params.eps)


class NoNorm(Norm):
    """The identity: no normalisation (an ablation, and the book's section 4.4 network, which has none)."""

    def forward(self, x: Tensor) -> Tensor:
        return x


@hookimpl
def register_components(register):
    register("norm", "layernorm", LayerNorm)
    register("norm", "rmsnorm", RMSNorm)
    register("norm", "none", NoNorm)
