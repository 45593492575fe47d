"""Normalisation layers: LayerNorm (scale and shift), RMSNorm (scale only, no centring) and none."""

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from gptzoo.core import Dims, Norm, Params
from gptzoo.registry import hookimpl


class LayerNormParams(Params):
    eps: float = 1e-5
    bias: bool = Field(True, description="a learned shift")
    scale: bool = Field(
        True, description="a learned scale; scale = false with bias = false is OLMo 1's non-parametric LayerNorm"
    )


class LayerNorm(Norm):
    """(x - mean) / sqrt(var + eps) · scale + shift, with the biased variance."""

    Params = LayerNormParams

    def __init__(self, params: LayerNormParams, dims: Dims):
        super().__init__(params, dims)
        self.weight = nn.Parameter(torch.ones(dims.d_model)) if params.scale else None
        self.bias = nn.Parameter(torch.zeros(dims.d_model)) if params.bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, (x.size(-1),), self.weight, self.bias, self.params.eps)


class RMSNormParams(Params):
    eps: float = 1e-5
    unit_offset: bool = Field(
        False, description="scale by (1 + weight), the weight starting at 0, computed in float32 (Gemma)"
    )
    scale: bool = Field(True, description="a learned scale; scale = false is nanochat's RMSNorm, with no weight")


class RMSNorm(Norm):
    """x / sqrt(mean(x²) + eps) · scale (Zhang & Sennrich, 2019).

    With ``unit_offset`` the scale is (1 + weight) and the whole norm runs in float32 before
    casting back, as Gemma's does; the stored weight is then Gemma's (0 means identity).
    """

    Params = RMSNormParams

    @classmethod
    def check(cls, params: RMSNormParams, dims: Dims) -> None:
        if params.unit_offset and not params.scale:
            raise ValueError("unit_offset offsets the learned scale, so it needs scale = true")

    def __init__(self, params: RMSNormParams, dims: Dims):
        super().__init__(params, dims)
        start = torch.zeros(dims.d_model) if params.unit_offset else torch.ones(dims.d_model)
        self.weight = nn.Parameter(start) if params.scale else None

    def forward(self, x: Tensor) -> Tensor:
        if self.params.unit_offset:
            assert self.weight is not None  # check refuses unit_offset without scale
            return F.rms_norm(x.float(), (x.size(-1),), 1.0 + self.weight.float(), self.params.eps).to(x.dtype)
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
