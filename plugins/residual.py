"""Residual streams: the plain one stream, and hyper-connections' n streams with learned mixing.

Hyper-connections (Zhu et al., 2024, "Hyper-Connections", arXiv 2409.19606) widen the residual
stream h (C) to n streams H (n × C), the first block's input copied n times, and give each layer
a learned (n + 1) × (n + 1) connection matrix [[0, B], [A_m, A_r]]:

    h₀ = A_mᵀ H              the layer's input, a weighted sum of the streams  (A_m: n × 1)
    Ĥ  = B ᵀ T(h₀) + A_rᵀ H   its output written to each stream, the streams mixed  (B: 1 × n, A_r: n × n)

and the streams are summed into one before the final norm. Static hyper-connections (SHC) learn
A_m, A_r, B; dynamic ones (DHC) add, from each token's streams normalised (H̄ = norm(H)),

    A_m(H) = s_α · tanh(H̄ W_m) + A_m,   A_r(H) = s_α · tanh(H̄ W_r) + A_r,   B(H) = s_β · tanh(H̄ W_β)ᵀ + B

Here a layer T is one block, and a block adds its input back itself (h₀ + T(h₀)), so T(h₀) is
the block's output less its input; the per-sublayer placement of the paper is a layer pattern of
mixer-only and feed-forward-only blocks. The initialisation is the paper's (its Eq. 14): A_m the
(k mod n)-th unit vector at layer k, A_r the identity, B all ones, W zero, so every stream
starts as the plain residual stream.
"""

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from gptzoo.core import AttentionContext, Block, Dims, InitScheme, LayerCache, LayerSpec, Params, Residual
from gptzoo.registry import hookimpl


class PlainResidual(Residual):
    """One stream, which each block adds its sublayers' outputs to (x + f(x)): nothing to do between blocks."""


class HyperParams(Params):
    n_streams: int = Field(
        4, ge=1, description="n, the expansion rate: the streams the residual stream is widened to (the paper: 2 to 8)"
    )
    dynamic: bool = Field(
        True,
        description="dynamic hyper-connections (DHC): the mixing also depends on each token's streams, "
        "through tanh(norm(H)·W) scaled by s_α, s_β; false: static (SHC), the learned matrices alone",
    )
    dynamic_scale: float = Field(
        0.01, gt=0, description="s_α and s_β at initialisation: how much the dynamic part may move the mixing at first"
    )


class HyperConnections(Residual):
    """n residual streams that each layer reads its block's input from, mixes, and writes its block's output to,
    with learned weights, static or moved per token: hyper-connections (Zhu et al., 2024, arXiv 2409.19606)."""

    Params = HyperParams
    several_streams = True

    def __init__(self, params: HyperParams, dims: Dims, layer: LayerSpec):
        super().__init__(params, dims, layer)
        n, C = params.n_streams, dims.d_model
        self.mix_in = nn.Parameter(torch.empty(n))  # A_m: how much each stream feeds the block
        self.mix_streams = nn.Parameter(torch.empty(n, n))  # A_r[j, i]: how much stream j carries into stream i
        self.mix_out = nn.Parameter(torch.empty(n))  # B: how much of the block's output each stream receives
        if params.dynamic:
            self.norm = layer.norm.build(dims)
            self.dynamic_weights = nn.Parameter(torch.empty(C, n + 2))  # [W_m | W_r | W_β]
            self.in_scale = nn.Parameter(torch.empty(()))  # s_α
            self.out_scale = nn.Parameter(torch.empty(()))  # s_β
        self.init_weights("gpt2")

    def init_weights(self, scheme: InitScheme) -> None:
        # The paper's initialisation whatever the scheme: the model starts with the plain residual stream.
        n = self.params.n_streams
        with torch.no_grad():
            self.mix_in.zero_()[self.dims.layer_idx % n] = 1.0
            self.mix_streams.copy_(torch.eye(n))
            self.mix_out.fill_(1.0)
            if self.params.dynamic:
                self.dynamic_weights.zero_()
                self.in_scale.fill_(self.params.dynamic_scale)
                self.out_scale.fill_(self.params.dynamic_scale)

    def widen(self, x: Tensor) -> Tensor:  # (B, T, C) -> (B, T, n, C)
        return x.unsqueeze(-2).expand(*x.shape[:-1], self.params.n_streams, x.size(-1))

    def narrow(self, x: Tensor) -> Tensor:  # (B, T, n, C) -> (B, T, C)
        return x.sum(-2)

    def mixing(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """A_m (.., n), A_r (.., n, n), B (.., n) for the streams x (B, T, n, C): the static ones, or per token (B, T, ..)."""
        if not self.params.dynamic:
            return self.mix_in, self.mix_streams, self.mix_out
        n = self.params.n_streams
        dynamic = torch.tanh(self.norm(x) @ self.dynamic_weights)  # (B, T, n, n + 2)
        mix_in = self.mix_in + self.in_scale * dynamic[..., 0]
        mix_streams = self.mix_streams + self.in_scale * dynamic[..., 1 : n + 1]
        mix_out = self.mix_out + self.out_scale * dynamic[..., n + 1]
        return mix_in, mix_streams, mix_out

    def forward(self, x: Tensor, block: Block, ctx: AttentionContext, cache: LayerCache | None = None) -> Tensor:
        mix_in, mix_streams, mix_out = self.mixing(x)
        h = (mix_in.unsqueeze(-2) @ x).squeeze(-2)  # h₀ = A_mᵀ H: (B, T, C)
        carried = mix_streams.transpose(-1, -2) @ x  # A_rᵀ H: (B, T, n, C)
        out = block(h, ctx, cache)  # h₀ + T(h₀)
        # Bᵀ T(h₀) = Bᵀ out − Bᵀ h₀: at initialisation A_rᵀ H − Bᵀ h₀ is exactly zero, so each stream is out exactly.
        mix_out = mix_out.unsqueeze(-1)  # (.., n, 1)
        return (carried - mix_out * h.unsqueeze(-2)) + mix_out * out.unsqueeze(-2)

    def flops_per_token(self, context_length: int) -> int:
        # Reading (n·C), mixing the streams (n²·C) and writing (n·C) multiply-adds; as many again to form
        # the dynamic weights (H̄ times C × (n + 2)).
        n, C = self.params.n_streams, self.dims.d_model
        return 2 * n * C * (n + 2) * (2 if self.params.dynamic else 1)


class ManifoldParams(Params):
    n_streams: int = Field(4, ge=2, description="n, the expansion rate: the streams the residual stream is widened to")
    sinkhorn_iterations: int = Field(
        20,
        ge=1,
        description="t_max: alternating column and row normalisations making H_res doubly stochastic (mHC: 20)",
    )
    gate_init: float = Field(0.01, gt=0, description="α_pre, α_post and α_res at initialisation")


# Sigmoids and Sinkhorn's exponentials never reach 0 or 1: the initial weights beside the stream a layer reads
# and off the identity, so that the model starts as the plain residual stream, its streams told apart.
INITIAL_LEAK = 0.01


class ManifoldHyperConnections(HyperConnections):
    """Hyper-connections whose stream mixing is doubly stochastic (DeepSeek, 2025, "mHC: Manifold-Constrained
    Hyper-Connections", arXiv 2512.24880; DeepSeek-V4), from each token's streams x (n × C):

        x' = RMSNorm(vec(x))                             (1 × nC; weightless here: φ absorbs a per-feature scale)
        H_pre = σ(α_pre · x'φ_pre + b_pre),  H_post = 2σ(α_post · x'φ_post + b_post)   (1 × n)
        H_res = Sinkhorn-Knopp(α_res · mat(x'φ_res) + b_res)                            (n × n)
        x_{l+1} = H_res x + H_postᵀ F(H_pre x)

    Sinkhorn-Knopp takes exp and then normalises columns, then rows, ``sinkhorn_iterations`` times, so the
    streams are mixed by a convex combination of permutations: the mixing neither grows nor shrinks them
    across layers. As ``hyper``, a layer is one block (F(h) is its output less its input) and the
    streams are summed before the final norm. Initialised with φ = 0, H_pre reading stream k mod n
    (``INITIAL_LEAK`` on the others, summing to 1), H_res the identity but for ``INITIAL_LEAK`` off its
    diagonal and H_post = 1: at first every stream is the plain residual stream."""

    Params = ManifoldParams

    def __init__(self, params: ManifoldParams, dims: Dims, layer: LayerSpec):
        Residual.__init__(self, params, dims, layer)
        n, C = params.n_streams, dims.d_model
        self.phi = nn.Parameter(torch.empty(n * C, 2 * n + n * n))  # [φ_pre | φ_post | φ_res]
        self.gates = nn.Parameter(torch.empty(3))  # α_pre, α_post, α_res
        self.pre_bias = nn.Parameter(torch.empty(n))
        self.post_bias = nn.Parameter(torch.empty(n))
        self.res_bias = nn.Parameter(torch.empty(n, n))
        self.init_weights("gpt2")

    def init_weights(self, scheme: InitScheme) -> None:
        n, leak = self.params.n_streams, INITIAL_LEAK
        with torch.no_grad():
            self.phi.zero_()
            self.gates.fill_(self.params.gate_init)
            self.pre_bias.fill_(math.log(leak / (1 - leak)))  # σ⁻¹(leak)
            read = 1 - (n - 1) * leak
            self.pre_bias[self.dims.layer_idx % n] = math.log(read / (1 - read))
            self.post_bias.zero_()  # 2σ(0) = 1
            self.res_bias.fill_(math.log(leak)).fill_diagonal_(math.log(read))  # already doubly stochastic

    def mixing(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """H_pre (B, T, n), H_resᵀ (B, T, n, n) and H_post (B, T, n) for the streams x (B, T, n, C)."""
        n = self.params.n_streams
        projected = F.rms_norm(x.flatten(-2), (x.size(-2) * x.size(-1),), eps=1e-6) @ self.phi  # x'φ: (B, T, 2n + n²)
        pre = torch.sigmoid(self.gates[0] * projected[..., :n] + self.pre_bias)
        post = 2 * torch.sigmoid(self.gates[1] * projected[..., n : 2 * n] + self.post_bias)
        res = sinkhorn(self.gates[2] * projected[..., 2 * n :].unflatten(-1, (n, n)) + self.res_bias, self.params)
        return pre, res.transpose(-1, -2), post  # HyperConnections mixes by A_rᵀ: A_r = H_resᵀ

    def flops_per_token(self, context_length: int) -> int:
        # x'φ, Sinkhorn's normalisations (a sum and a division of n² entries, per columns and rows), then the
        # reading (n·C), mixing (n²·C) and writing (n·C) multiply-adds.
        n, C = self.params.n_streams, self.dims.d_model
        return 2 * n * C * (n * n + 2 * n) + 4 * self.params.sinkhorn_iterations * n * n + 2 * n * C * (n + 2)


def sinkhorn(logits: Tensor, params: ManifoldParams) -> Tensor:
    """exp(logits) (.., n, n) made doubly stochastic: columns, then rows normalised, t_max times, as mHC's."""
    matrix = torch.exp(logits - logits.amax(dim=(-2, -1), keepdim=True))  # the same matrix once normalised
    for _ in range(params.sinkhorn_iterations):
        matrix = matrix / matrix.sum(-2, keepdim=True)
        matrix = matrix / matrix.sum(-1, keepdim=True)
    return matrix


@hookimpl
def register_components(register):
    register("residual", "plain", PlainResidual)
    register("residual", "hyper", HyperConnections)
    register("residual", "mhc", ManifoldHyperConnections)
