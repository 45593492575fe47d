"""A dense MLP beside a mixture of experts, each branch between norms of its own, their outputs summed:
Gemma 4's feed-forward (its 26B-A4B checkpoints, ``enable_moe_block``). With x the residual stream::

    y      = n1'(MLP(n1(x))) + n2'(Σ_{e in top k} w_e · Expert_e(n2(x)))
    logits = W_r · (x / rms(x) ⊙ s / √C)              the router reads the stream, not n2(x)
    w      = the chosen experts' softmax scores renormalised to sum to 1, times a learned scale per expert

The router's norm has no weight (s is a learned vector of its own) and both the MLP and the experts are
gated units (GeGLU in Gemma 4). The router reads the stream itself, so this feed-forward norms its own
input (``reads_stream``): a ``sandwich`` block hands it x and puts its output norm after y, which is
Gemma 4's post_feedforward_layernorm.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from gptzoo.core import Dims, FeedForward
from gptzoo.plugins.feed_forward import GeGLUFeedForward, GLUParams, SwiGLUFeedForward
from gptzoo.plugins.moe import MixtureOfExperts, MoEParams
from gptzoo.plugins.norms import RMSNorm, RMSNormParams
from gptzoo.registry import hookimpl


class ScaledRouterParams(MoEParams):
    router_norm_eps: float = Field(
        1e-6, gt=0, description="the epsilon of the router's weightless RMS norm (Gemma 4: rms_norm_eps)"
    )


class ScaledRouterExperts(MixtureOfExperts):
    """Experts whose router reads RMSNorm(x) (no weight) ⊙ ``router_scale`` / √C and whose chosen weights
    are multiplied by ``expert_scale`` (Gemma 4's router.scale and router.per_expert_scale), both learned."""

    Params = ScaledRouterParams

    def __init__(self, params: ScaledRouterParams, dims: Dims):
        super().__init__(params, dims)
        self.router_scale = nn.Parameter(torch.ones(dims.d_model))
        self.expert_scale = nn.Parameter(torch.ones(params.n_experts))

    def router_input(self, tokens: Tensor) -> Tensor:
        normed = nn.functional.rms_norm(tokens.float(), (tokens.size(-1),), eps=self.params.router_norm_eps)
        return normed.to(tokens.dtype) * self.router_scale * (self.dims.d_model**-0.5)

    def weigh(self, weights: Tensor, chosen: Tensor) -> Tensor:
        return weights * self.expert_scale[chosen]

    def active_parameters(self) -> int:
        return super().active_parameters() + self.router_scale.numel() + self.expert_scale.numel()


class MLPAndExpertsParams(GLUParams):
    """The MLP's params (``hidden``, ``bias``, ...: those of ``swiglu`` and ``geglu``), its gate, the experts' and
    the four norms' epsilon."""

    activation: Literal["swiglu", "geglu"] = Field("geglu", description="the MLP's gated unit (Gemma 4: geglu)")
    experts: ScaledRouterParams = Field(
        default_factory=ScaledRouterParams,
        description="the mixture of experts beside the MLP, as moe's params plus router_norm_eps "
        '(Gemma 4: { n_experts = 128, top_k = 8, hidden = 704, activation = "geglu" })',
    )
    norm_eps: float = Field(1e-6, gt=0, description="the epsilon of the RMS norms around each branch")


class MLPAndExperts(FeedForward):
    """x (B, T, C), the residual stream -> n1'(MLP(n1(x))) + n2'(experts(n2(x), routed by x))."""

    Params = MLPAndExpertsParams
    reads_stream = True

    @classmethod
    def check(cls, params: MLPAndExpertsParams, dims: Dims) -> None:
        try:
            ScaledRouterExperts.check(params.experts, dims)
        except ValueError as err:
            raise ValueError(f"experts: {err}") from None

    def __init__(self, params: MLPAndExpertsParams, dims: Dims):
        super().__init__(params, dims)
        mlp = GeGLUFeedForward if params.activation == "geglu" else SwiGLUFeedForward
        self.mlp = mlp(GLUParams(**params.model_dump(include=set(GLUParams.model_fields))), dims)
        self.experts = ScaledRouterExperts(params.experts, dims)
        norm = RMSNormParams(eps=params.norm_eps)
        self.mlp_norm, self.mlp_out_norm = RMSNorm(norm, dims), RMSNorm(norm, dims)
        self.experts_norm, self.experts_out_norm = RMSNorm(norm, dims), RMSNorm(norm, dims)

    def forward(self, x: Tensor) -> Tensor:
        dense = self.mlp_out_norm(self.mlp(self.mlp_norm(x)))
        routed = self.experts_out_norm(self.experts(self.experts_norm(x), route_from=x))
        return dense + routed


@hookimpl
def register_components(register):
    register("feed_forward", "mlp_and_experts", MLPAndExperts)
