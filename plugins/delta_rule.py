"""Delta-rule token mixers: DeltaNet, Gated DeltaNet and Kimi Delta Attention.

Each head keeps a state S (head_k_dim × head_v_dim) that a token corrects towards its value
instead of only adding to it (the delta rule, Schlag et al., 2021; Yang et al., 2024). With a
decay α_t, written as in the papers (S as head_v_dim × head_k_dim):

    S_t = S_{t-1} α_t (I - β_t k_t k_tᵀ) + β_t v_t k_tᵀ        o_t = S_t q_t

- ``deltanet`` (Yang et al., 2024): α_t = 1;
- ``gated_deltanet`` (Yang et al., 2025; Qwen3-Next, Qwen3.5, OLMo Hybrid): one α_t per head,
  log α_t = -exp(A_log) · softplus(a(x_t) + dt_bias) as Mamba-2 discretises its decay;
- ``kimi_delta`` (Kimi Delta Attention, Kimi Linear): α_t is a vector, one decay per key channel,
  Diag(α_t) in place of the scalar.

Around the rule, as the references have it: q, k and v pass through a short causal convolution
and SiLU; q and k are L2-normalised per head and q is scaled by 1/√head_k_dim; β_t = sigmoid(b(x_t))
per head (``allow_neg_eigval``: 2·sigmoid, so I - β k kᵀ may have a negative eigenvalue, as OLMo
Hybrid does); the heads' outputs go through an RMSNorm per head, times a gate act(z(x_t)) when
gated, and the output projection. Query/key heads may be fewer than value heads and shared by
groups of them, as Qwen3-Next does (``num_k_heads``).

Training runs the chunked form (WY representation, Yang et al., 2024): within a chunk of C tokens
the corrections form a unit lower-triangular system (I + L) U = β V, solved for all tokens at
once (the UT transform); the state passes between chunks, so the cost is linear in the length.
Decoding one token at a time runs the recurrence above. The state is kept in float32. The model's
dropout applies to what out_proj reads (the references have none; 0 by default).

Written out over one forward from an empty state, the output is y = A v per head with

    A = (Q Kᵀ ⊙ D ⊙ M) (I + L)⁻¹ diag(β),   L = tril(diag(β) K Kᵀ ⊙ D, -1),

D_ij = α_{j+1} ⋯ α_i (channel-wise: inside the dot products) and M the causal mask: a lower-
triangular T × T matrix that these mixers report to inspection (Ali et al., 2024), formed only
while inspecting. It is not a distribution: rows need not sum to 1 and entries may be negative.
Kimi Delta Attention's channel-wise decays make it exact all the same (the decays enter each
pair's dot product), at the cost of a T × T × head_dim tensor per head while inspecting.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from gptzoo.core import Dims, Params
from gptzoo.plugins._delta_rule import DeltaRuleMixer, GatedRMSNorm
from gptzoo.plugins._recurrent import ShortConv
from gptzoo.registry import hookimpl


class DeltaNetParams(Params):
    num_heads: int | None = Field(
        None, gt=0, description="value heads, each with a head_k_dim × head_v_dim state; None: the model's n_heads"
    )
    num_k_heads: int | None = Field(
        None,
        gt=0,
        description="query/key heads, each shared by num_heads / num_k_heads consecutive value heads "
        "(Qwen3-Next: 16 for 32 value heads); None: the model's n_kv_heads",
    )
    head_k_dim: int | None = Field(None, gt=0, description="query/key width per head; None: the model's head_dim")
    head_v_dim: int | None = Field(
        None, gt=0, description="value width per head; None: head_k_dim (Gated DeltaNet's paper: 2 × head_k_dim)"
    )
    conv_size: int = Field(4, ge=2, description="tokens the short causal convolution on q, k and v spans")
    chunk_size: int = Field(
        16,
        gt=0,
        description="tokens per chunk of the training form; the result does not depend on it (FLA and transformers: 64)",
    )
    allow_neg_eigval: bool = Field(
        False,
        description="β = 2·sigmoid(b(x)) in (0, 2), so the transition I - βkkᵀ may have a negative eigenvalue "
        "(OLMo Hybrid: true; Grazzi et al., 2025)",
    )
    output_gate: bool = Field(
        False, description="multiply the normed output by SiLU(z(x)), z a linear map of the layer's input"
    )
    norm_eps: float = Field(1e-6, gt=0, description="epsilon of the RMSNorm on each head's output")


class GatedDeltaNetParams(DeltaNetParams):
    output_gate: bool = Field(
        True, description="multiply the normed output by SiLU(z(x)), z a linear map of the layer's input"
    )


def _delta_net_heads(params: DeltaNetParams, dims: Dims) -> tuple[int, int]:
    return params.num_heads or dims.n_heads, params.num_k_heads or dims.n_kv_heads


class DeltaNet(DeltaRuleMixer):
    """DeltaNet (Yang et al., 2024): the delta rule without decay. Weights are named as OLMo Hybrid's
    checkpoints name them: q_proj, k_proj, v_proj, b_proj (β), g_proj (output gate), o_norm;
    ``conv1d.conv.weight`` is their conv1d.weight over the channels [q | k | v]."""

    Params = DeltaNetParams

    @classmethod
    def check(cls, params: DeltaNetParams, dims: Dims) -> None:
        n_v, n_k = _delta_net_heads(params, dims)
        if n_v % n_k:
            raise ValueError(
                f"{n_v} value heads cannot share {n_k} query/key heads evenly: choose num_k_heads (or n_kv_heads) "
                f"dividing num_heads (or n_heads)"
            )

    def __init__(self, params: DeltaNetParams, dims: Dims):
        super().__init__(params, dims)
        self.n_v_heads, self.n_k_heads = _delta_net_heads(params, dims)
        self.head_k_dim = params.head_k_dim or dims.head_size
        self.head_v_dim = params.head_v_dim or self.head_k_dim
        self.chunk_size = params.chunk_size
        key_width, value_width = self.n_k_heads * self.head_k_dim, self.n_v_heads * self.head_v_dim
        self.q_proj = nn.Linear(dims.d_model, key_width, bias=False)
        self.k_proj = nn.Linear(dims.d_model, key_width, bias=False)
        self.v_proj = nn.Linear(dims.d_model, value_width, bias=False)
        self.conv1d = ShortConv(2 * key_width + value_width, params.conv_size)
        self.b_proj = nn.Linear(dims.d_model, self.n_v_heads, bias=False)
        if params.output_gate:
            self.g_proj = nn.Linear(dims.d_model, value_width, bias=False)
        self.o_norm = GatedRMSNorm(self.head_v_dim, params.norm_eps, "silu")
        self.out_proj = nn.Linear(value_width, dims.d_model, bias=False)

    def gates(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        beta = self.b_proj(x).float().sigmoid()
        return (2 * beta if self.params.allow_neg_eigval else beta), None

    def output_gate(self, x: Tensor) -> Tensor | None:
        if not self.params.output_gate:
            return None
        return self.g_proj(x).view(*x.shape[:2], self.n_v_heads, self.head_v_dim)


class GatedDeltaNet(DeltaNet):
    """Gated DeltaNet (Yang et al., 2025): DeltaNet with a decay per head and token,
    log α = -exp(A_log) · softplus(a(x) + dt_bias). Initialised as the paper's code (FLA) and OLMo
    Hybrid do: A ~ U(0, 16) (kept from 0, so A_log is finite, as Qwen3-Next does), dt log-uniform
    in [0.001, 0.1] and dt_bias its inverse softplus."""

    Params = GatedDeltaNetParams

    def __init__(self, params: DeltaNetParams, dims: Dims):
        super().__init__(params, dims)
        self.a_proj = nn.Linear(dims.d_model, self.n_v_heads, bias=False)
        self.A_log = nn.Parameter(torch.empty(self.n_v_heads))
        self.dt_bias = nn.Parameter(torch.empty(self.n_v_heads))
        self.reset_decay()

    def reset_decay(self) -> None:
        with torch.no_grad():
            self.A_log.copy_(torch.empty_like(self.A_log).uniform_(1e-2, 16).log())
            self.dt_bias.copy_(inverse_softplus(log_uniform_like(self.dt_bias, 1e-3, 1e-1).clamp(min=1e-4)))

    def init_weights(self, scheme) -> None:
        super().init_weights(scheme)
        self.reset_decay()

    def gates(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        beta, _ = super().gates(x)
        log_decay = -self.A_log.float().exp() * F.softplus(self.a_proj(x).float() + self.dt_bias)  # (B, T, h)
        return beta, log_decay.unsqueeze(-1)


def log_uniform_like(t: Tensor, low: float, high: float) -> Tensor:
    return torch.exp(torch.rand_like(t) * (math.log(high) - math.log(low)) + math.log(low))


def inverse_softplus(y: Tensor) -> Tensor:
    """x with softplus(x) = y (y > 0), computed stably."""
    return y + torch.log(-torch.expm1(-y))


# ---- Kimi Delta Attention --------------------------------------------------------------------


class KimiDeltaParams(Params):
    num_heads: int | None = Field(
        None, gt=0, description="heads, each with a head_dim × head_dim state; None: the model's n_heads"
    )
    head_dim: int | None = Field(None, gt=0, description="query, key and value width per head; None: the model's")
    conv_size: int = Field(4, ge=2, description="tokens the short causal convolution on q, k and v spans")
    chunk_size: int = Field(
        16,
        gt=0,
        description="tokens per chunk of the training form; the result does not depend on it (FLA and transformers: 64)",
    )
    norm_eps: float = Field(1e-5, gt=0, description="epsilon of the RMSNorm on each head's output")


class KimiDeltaAttention(DeltaRuleMixer):
    """Kimi Delta Attention (Kimi Linear): Gated DeltaNet with one decay per key channel, log α_t =
    -exp(A_log_h) · softplus(x W_fa W_fb + dt_bias), and a sigmoid output gate σ(x W_ga W_gb), both
    through rank-head_dim projections. Weights named as Kimi Linear's checkpoints (its forget_gate's
    f_a_proj, f_b_proj, dt_bias and A_log sit on the layer itself; o_proj is out_proj). Initialised
    as Kimi Linear (after FLA): A ~ U(1, 16), dt log-uniform in [0.001, 0.1] per channel."""

    Params = KimiDeltaParams

    @classmethod
    def check(cls, params: KimiDeltaParams, dims: Dims) -> None:
        if params.num_heads is None and dims.n_kv_heads != dims.n_heads:
            raise ValueError(
                f"every head has its own query, key and value, so there are no key/value head groups: leave "
                f"n_kv_heads unset or give the layer its own num_heads (got n_kv_heads={dims.n_kv_heads} for "
                f"n_heads={dims.n_heads})"
            )

    def __init__(self, params: KimiDeltaParams, dims: Dims):
        super().__init__(params, dims)
        h = self.n_v_heads = self.n_k_heads = params.num_heads or dims.n_heads
        d = self.head_k_dim = self.head_v_dim = params.head_dim or dims.head_size
        self.chunk_size = params.chunk_size
        self.q_proj = nn.Linear(dims.d_model, h * d, bias=False)
        self.k_proj = nn.Linear(dims.d_model, h * d, bias=False)
        self.v_proj = nn.Linear(dims.d_model, h * d, bias=False)
        self.conv1d = ShortConv(3 * h * d, params.conv_size)
        self.f_a_proj = nn.Linear(dims.d_model, d, bias=False)
        self.f_b_proj = nn.Linear(d, h * d, bias=False)
        self.A_log = nn.Parameter(torch.empty(h))
        self.dt_bias = nn.Parameter(torch.empty(h * d))
        self.b_proj = nn.Linear(dims.d_model, h, bias=False)
        self.g_a_proj = nn.Linear(dims.d_model, d, bias=False)
        self.g_b_proj = nn.Linear(d, h * d, bias=False)
        self.o_norm = GatedRMSNorm(d, params.norm_eps, "sigmoid")
        self.out_proj = nn.Linear(h * d, dims.d_model, bias=False)
        self.reset_decay()

    def reset_decay(self) -> None:
        with torch.no_grad():
            self.A_log.copy_(torch.empty_like(self.A_log).uniform_(1, 16).log())
            self.dt_bias.copy_(inverse_softplus(log_uniform_like(self.dt_bias, 1e-3, 1e-1).clamp(min=1e-4)))

    def init_weights(self, scheme) -> None:
        super().init_weights(scheme)
        self.reset_decay()

    def gates(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        B, T, _ = x.shape
        rate = self.f_b_proj(self.f_a_proj(x)).float() + self.dt_bias  # (B, T, h·d)
        log_decay = -self.A_log.float().exp()[:, None] * F.softplus(rate.view(B, T, self.n_v_heads, -1))
        return self.b_proj(x).float().sigmoid(), log_decay  # (B, T, h), (B, T, h, d)

    def output_gate(self, x: Tensor) -> Tensor | None:
        return self.g_b_proj(self.g_a_proj(x)).view(*x.shape[:2], self.n_v_heads, self.head_v_dim)


@hookimpl
def register_components(register):
    register("attention", "deltanet", DeltaNet)
    register("attention", "gated_deltanet", GatedDeltaNet)
    register("attention", "kimi_delta", KimiDeltaAttention)
