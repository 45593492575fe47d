"""Linear attention and its decayed forms: a state S of key-value outer products replaces the
growing keys and values, so decoding costs the same at every length.

For each head, with keys and queries through a feature map φ and a decay λ_t ≤ 1 (a scalar per
head, or one per key dimension):

    S_t = λ_t ⊙ S_{t-1} + φ(k_t) v_tᵀ        (dk, dv)
    y_t = φ(q_t)ᵀ S_t                          (dv)

- ``linear`` (Katharopoulos et al., 2020, "Transformers are RNNs"): λ = 1, φ = elu + 1 (or relu,
  identity), optionally divided by φ(q_t)ᵀ z_t with z_t = Σ φ(k_s), the paper's normaliser;
- ``lightning`` (MiniMax-01's lightning attention, as transformers' MiniMaxLightningAttention):
  a fixed decay λ_h = exp(-s_h) per head (s_h = 2^(-8(h+1)/nh), scaled down in later layers),
  silu on q, k and v, an RMSNorm over the heads' outputs and a sigmoid output gate;
- ``retention`` (RetNet's multi-scale retention, Sun et al., 2023): a fixed decay
  γ_h = 1 - 2^(-5-h) per head, queries and keys rotated by the position scheme (RetNet rotates
  them as rope does), a per-head RMSNorm and a swish output gate;
- ``gla`` (Gated Linear Attention, Yang et al., 2024): λ_t = exp(logsigmoid(x_t W1 W2 + b) / τ),
  one decay per key dimension from a low-rank projection of the token, then a per-head RMSNorm
  and a swish output gate.

Training runs the chunked form: within a chunk of C tokens the outputs are a masked C×C product
(the decays between two tokens written out), across chunks the state carries the rest, so the
cost grows linearly with the length. Decoding a few tokens runs the recurrence above token by
token; both start from the cache's state. The same masked product over the whole text is the
implicit attention matrix A (y = A v) that ``gptzoo inspect`` shows.

Key/value heads may be fewer than query heads (``n_kv_heads``) where the state depends on keys,
values and decays alone (``linear``, ``gla``): the query heads of a group read one state.
Left padding: keys and values are zeroed there (and gates set to 1), so the state stays zero.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from gptzoo.core import AttentionContext, Dims, Params
from gptzoo.plugins._linear_attention import DecayedLinearAttention, heads
from gptzoo.plugins._recurrent import RecurrentCache, zero_padding
from gptzoo.registry import hookimpl

FEATURE_MAPS = {
    "elu_plus_one": lambda x: F.elu(x) + 1,
    "relu": F.relu,
    "identity": lambda x: x,
}


class LinearParams(Params):
    feature_map: Literal["elu_plus_one", "relu", "identity"] = Field(
        "elu_plus_one",
        description="φ applied to queries and keys: elu(x) + 1 (Katharopoulos et al., 2020), relu, or identity",
    )
    normalize: bool = Field(
        True,
        description="divide by φ(q_t)·Σ φ(k_s), the paper's normaliser (false: unnormalised, q scaled by 1/√head_size)",
    )
    eps: float = Field(1e-6, gt=0, description="added to the normaliser (the paper's code: 1e-6)")
    chunk_size: int = Field(
        64, gt=0, description="tokens per chunk of the training form (the outputs do not depend on it)"
    )


class LinearAttention(DecayedLinearAttention):
    """y_t = φ(q_t)ᵀ Σ_{s≤t} φ(k_s) v_sᵀ / (φ(q_t)ᵀ Σ_{s≤t} φ(k_s) + eps); the standard fused ``qkv``
    layout ((nh + 2·nkv)·hs rows: query heads, key heads, value heads) and ``out_proj``."""

    Params = LinearParams

    @classmethod
    def check(cls, params: LinearParams, dims: Dims) -> None:
        if params.normalize and params.feature_map == "identity":
            raise ValueError(
                "feature_map 'identity' makes the normaliser φ(q)·Σφ(k) any sign, so it can be 0: "
                "set normalize = false or choose elu_plus_one or relu"
            )

    def __init__(self, params: LinearParams, dims: Dims):
        super().__init__(params, dims)
        nh, nkv, hs = dims.n_heads, dims.n_kv_heads, dims.head_size
        self.qkv = nn.Linear(dims.d_model, (nh + 2 * nkv) * hs, bias=dims.qkv_bias)
        self.out_proj = nn.Linear(nh * hs, dims.d_model, bias=dims.attn_out_bias)
        self.feature_map = FEATURE_MAPS[params.feature_map]
        self.chunk_size = params.chunk_size
        self.state_heads, self.key_width = nkv, hs
        self.value_width = hs + 1 if params.normalize else hs  # the last column of S is z = Σ φ(k)

    def forward(self, x: Tensor, ctx: AttentionContext, cache: RecurrentCache | None = None) -> Tensor:
        B, T, _ = x.shape
        nh, nkv, hs = self.dims.n_heads, self.dims.n_kv_heads, self.dims.head_size
        q, k, v = self.qkv(x).split([nh * hs, nkv * hs, nkv * hs], dim=-1)
        q = self.feature_map(heads(q, nkv, hs))  # (B, nkv, G, T, hs)
        k = zero_padding(self.feature_map(k), ctx.valid)  # φ(0) need not be 0, so after φ
        k, v = heads(k, nkv, hs), heads(zero_padding(v, ctx.valid), nkv, hs)  # (B, nkv, 1, T, hs)
        if self.params.normalize:
            v = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)  # (B, nkv, 1, T, hs + 1)
        else:
            q = q / math.sqrt(hs)
        y = self.mix(q, k, v, None, ctx, cache)  # (B, nkv, G, T, hs | hs + 1)
        if self.params.normalize:
            y = y[..., :hs] / (y[..., hs:] + self.params.eps)
        y = F.dropout(y, self.dims.dropout, self.training)
        return self.out_proj(y.permute(0, 3, 1, 2, 4).reshape(B, T, nh * hs))  # (B, T, C)

    def implicit_attention(self, scores: Tensor) -> Tensor:
        if not self.params.normalize:
            return scores
        return scores / (scores.sum(-1, keepdim=True) + self.params.eps)


# ---- lightning attention (MiniMax-01) ---------------------------------------------------------------


class LightningParams(Params):
    eps: float = Field(1e-6, gt=0, description="eps of the RMSNorm over the heads' outputs (MiniMax's: 1e-6)")
    chunk_size: int = Field(
        64,
        gt=0,
        description="tokens per chunk of the training form (MiniMax's block_size, 256; the outputs do not depend on it)",
    )


class LightningAttention(DecayedLinearAttention):
    """MiniMax-01's lightning attention: (q, k, v) = silu(x W_qkv), S_t = λ_h S_{t-1} + k_t v_tᵀ,
    y_t = q_tᵀ S_t (unscaled, unnormalised), out = (σ(x W_g) ⊙ RMSNorm(y)) W_o, with the decay
    λ_h = exp(-s_h), s_h = 2^(-8(h+1)/nh) · (1 - l / (L - 1 + 1e-5) + 1e-5) in layer l of L: the
    last layer barely decays. Weights are named as MiniMax's checkpoints name them; ``qkv_proj``
    keeps each head's query, key and value rows together ([q_0 k_0 v_0 q_1 ...])."""

    Params = LightningParams

    @classmethod
    def check(cls, params: LightningParams, dims: Dims) -> None:
        if dims.n_kv_heads != dims.n_heads:
            raise ValueError(
                f"each head decays its own state, so lightning attention has no key/value head groups: "
                f"leave n_kv_heads unset (got {dims.n_kv_heads} for n_heads={dims.n_heads})"
            )

    def __init__(self, params: LightningParams, dims: Dims):
        super().__init__(params, dims)
        nh, hs = dims.n_heads, dims.head_size
        self.qkv_proj = nn.Linear(dims.d_model, 3 * nh * hs, bias=dims.qkv_bias)
        self.output_gate = nn.Linear(dims.d_model, nh * hs, bias=False)
        self.norm = nn.RMSNorm(nh * hs, eps=params.eps)
        self.out_proj = nn.Linear(nh * hs, dims.d_model, bias=dims.attn_out_bias)
        self.chunk_size = params.chunk_size
        self.state_heads, self.key_width, self.value_width = nh, hs, hs

    def slopes(self, device: torch.device) -> Tensor:
        """s_h per head, (nh,): ALiBi's slopes, shrunk linearly with the depth (MiniMax's get_slope_rate)."""
        nh, n_layers = self.dims.n_heads, self.dims.n_layers
        depth = 1 - self.dims.layer_idx / (n_layers - 1 + 1e-5) + 1e-5
        return (2 ** (-8 / nh)) ** torch.arange(1, nh + 1, device=device, dtype=torch.float32) * depth

    def forward(self, x: Tensor, ctx: AttentionContext, cache: RecurrentCache | None = None) -> Tensor:
        B, T, _ = x.shape
        nh, hs = self.dims.n_heads, self.dims.head_size
        qkv = zero_padding(F.silu(self.qkv_proj(x)), ctx.valid)  # silu(0) = 0: nothing enters the state there
        q, k, v = heads(qkv, nh, 3 * hs).split(hs, dim=-1)  # (B, nh, 1, T, hs) each
        log_decay = -self.slopes(x.device).to(x.dtype).view(1, nh, 1, 1, 1).expand(1, nh, 1, T, 1)
        y = self.mix(q, k, v, log_decay, ctx, cache)  # (B, nh, 1, T, hs)
        y = self.norm(y.permute(0, 3, 1, 2, 4).reshape(B, T, nh * hs))
        y = F.dropout(torch.sigmoid(self.output_gate(x)) * y, self.dims.dropout, self.training)
        return self.out_proj(y)  # (B, T, C)


# ---- retention (RetNet) -----------------------------------------------------------------------------------


class RetentionParams(Params):
    expand_v: float = Field(
        2.0, gt=0, description="value width per head as a multiple of head_dim (RetNet's value_factor: 2)"
    )
    eps: float = Field(
        1e-6, gt=0, description="eps of the per-head RMSNorm on the output (RetNet's layernorm_eps: 1e-6)"
    )
    chunk_size: int = Field(
        64, gt=0, description="tokens per chunk of the training form (the outputs do not depend on it)"
    )


class Retention(DecayedLinearAttention):
    """RetNet's multi-scale retention (Sun et al., 2023; torchscale's MultiScaleRetention):
    S_t = γ_h S_{t-1} + k̃_t v_tᵀ, y_t = q̃_tᵀ S_t with γ_h = 1 - 2^(-5-h), then
    out = (swish(x W_g) ⊙ RMSNorm(y)) W_o per head. q̃ and k̃ are the queries and keys rotated by the
    position scheme, k̃ scaled by 1/√head_dim. RetNet's own rotation turns side-by-side pairs by
    θ_n = 10000^(-n/(hs/2 - 1)); ``rope`` with ``layout = "interleaved"`` turns them by 10000^(-2n/hs).
    RetNet's parallel form also rescales each query's row (by the decays' sum and the scores'
    absolute sum): a positive factor per query and head, which the RMSNorm divides out (up to its
    eps), so it is left out."""

    Params = RetentionParams
    position_hooks = frozenset({"rotate"})

    @classmethod
    def check(cls, params: RetentionParams, dims: Dims) -> None:
        if dims.n_kv_heads != dims.n_heads:
            raise ValueError(
                f"each head decays its own state, so retention has no key/value head groups: "
                f"leave n_kv_heads unset (got {dims.n_kv_heads} for n_heads={dims.n_heads})"
            )
        width = params.expand_v * dims.head_size
        if width != int(width) or width < 1:
            raise ValueError(f"expand_v = {params.expand_v} × head_dim {dims.head_size} is not a whole width")

    def __init__(self, params: RetentionParams, dims: Dims):
        super().__init__(params, dims)
        nh, hs, C = dims.n_heads, dims.head_size, dims.d_model
        dv = int(params.expand_v * hs)
        self.q_proj = nn.Linear(C, nh * hs, bias=dims.qkv_bias)
        self.k_proj = nn.Linear(C, nh * hs, bias=dims.qkv_bias)
        self.v_proj = nn.Linear(C, nh * dv, bias=dims.qkv_bias)
        self.g_proj = nn.Linear(C, nh * dv, bias=False)
        self.group_norm = nn.RMSNorm(dv, eps=params.eps, elementwise_affine=False)
        self.out_proj = nn.Linear(nh * dv, C, bias=dims.attn_out_bias)
        self.chunk_size = params.chunk_size
        self.state_heads, self.key_width, self.value_width = nh, hs, dv

    def forward(self, x: Tensor, ctx: AttentionContext, cache: RecurrentCache | None = None) -> Tensor:
        B, T, _ = x.shape
        nh, hs, dv = self.dims.n_heads, self.dims.head_size, self.value_width
        q = self.q_proj(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = zero_padding(self.k_proj(x), ctx.valid).view(B, T, nh, hs).transpose(1, 2)
        q, k = ctx.rotate(q, k)
        q, k = q.unsqueeze(2), k.unsqueeze(2) / math.sqrt(hs)  # (B, nh, 1, T, hs)
        v = heads(zero_padding(self.v_proj(x), ctx.valid), nh, dv)  # (B, nh, 1, T, dv)
        gamma = 1 - 2 ** (-5 - torch.arange(nh, device=x.device, dtype=torch.float32))
        log_decay = gamma.log().to(x.dtype).view(1, nh, 1, 1, 1).expand(1, nh, 1, T, 1)
        y = self.mix(q, k, v, log_decay, ctx, cache)  # (B, nh, 1, T, dv)
        y = self.group_norm(y.squeeze(2).transpose(1, 2)) * F.silu(self.g_proj(x).view(B, T, nh, dv))
        y = F.dropout(y, self.dims.dropout, self.training)
        return self.out_proj(y.reshape(B, T, nh * dv))  # (B, T, C)


# ---- gated linear attention ---------------------------------------------------------------------------


class GLAParams(Params):
    expand_k: float = Field(
        0.5, gt=0, description="key width per head as a multiple of head_dim (GLA: 0.5, queries and keys half as wide)"
    )
    expand_v: float = Field(1.0, gt=0, description="value width per head as a multiple of head_dim (GLA: 1)")
    gate_low_rank_dim: int = Field(
        16, gt=0, description="width of the low-rank projection the decays come from (GLA: 16)"
    )
    gate_logit_normalizer: float = Field(
        16.0, gt=0, description="τ in log λ = logsigmoid(·) / τ: larger keeps decays nearer 1 (GLA: 16)"
    )
    eps: float = Field(1e-5, gt=0, description="eps of the per-head RMSNorm on the output (GLA's norm_eps: 1e-5)")
    chunk_size: int = Field(
        16,
        gt=0,
        description="tokens per chunk of the training form (the outputs do not depend on it); the in-chunk part "
        "holds C × C × key width decays per head, so it stays small (GLA's exact in-chunk blocks are 16)",
    )


class GatedLinearAttention(DecayedLinearAttention):
    """GLA (Yang et al., 2024; the layer as flash-linear-attention's GatedLinearAttention):
    S_t = diag(α_t) S_{t-1} + k_t v_tᵀ, y_t = q_tᵀ S_t / √dk, with α_t = exp(logsigmoid(x_t W1 W2 + b) / τ)
    per key dimension, then out = (RMSNorm(y) ⊙ swish(x W_g)) W_o per head. Keys, values and decays
    have ``n_kv_heads`` heads, each read by a group of query heads."""

    Params = GLAParams

    @classmethod
    def check(cls, params: GLAParams, dims: Dims) -> None:
        for name in ("expand_k", "expand_v"):
            width = getattr(params, name) * dims.head_size
            if width != int(width) or width < 1:
                raise ValueError(f"{name} = {getattr(params, name)} × head_dim {dims.head_size} is not a whole width")

    def __init__(self, params: GLAParams, dims: Dims):
        super().__init__(params, dims)
        nh, nkv, C = dims.n_heads, dims.n_kv_heads, dims.d_model
        dk, dv = int(params.expand_k * dims.head_size), int(params.expand_v * dims.head_size)
        self.q_proj = nn.Linear(C, nh * dk, bias=dims.qkv_bias)
        self.k_proj = nn.Linear(C, nkv * dk, bias=dims.qkv_bias)
        self.v_proj = nn.Linear(C, nkv * dv, bias=dims.qkv_bias)
        self.gk_proj = nn.Sequential(
            nn.Linear(C, params.gate_low_rank_dim, bias=False), nn.Linear(params.gate_low_rank_dim, nkv * dk)
        )
        self.g_proj = nn.Linear(C, nh * dv, bias=False)
        self.g_norm = nn.RMSNorm(dv, eps=params.eps)
        self.out_proj = nn.Linear(nh * dv, C, bias=dims.attn_out_bias)
        self.chunk_size = params.chunk_size
        self.state_heads, self.key_width, self.value_width = nkv, dk, dv

    def forward(self, x: Tensor, ctx: AttentionContext, cache: RecurrentCache | None = None) -> Tensor:
        B, T, _ = x.shape
        nh, nkv, dk, dv = self.dims.n_heads, self.dims.n_kv_heads, self.key_width, self.value_width
        q = heads(self.q_proj(x), nkv, dk) / math.sqrt(dk)  # (B, nkv, G, T, dk)
        k = heads(zero_padding(self.k_proj(x), ctx.valid), nkv, dk)  # (B, nkv, 1, T, dk)
        v = heads(zero_padding(self.v_proj(x), ctx.valid), nkv, dv)  # (B, nkv, 1, T, dv)
        log_decay = F.logsigmoid(self.gk_proj(x)) / self.params.gate_logit_normalizer
        log_decay = heads(zero_padding(log_decay, ctx.valid), nkv, dk)  # λ = 1 at padding: (B, nkv, 1, T, dk)
        y = self.mix(q, k, v, log_decay, ctx, cache)  # (B, nkv, G, T, dv)
        y = self.g_norm(y.permute(0, 3, 1, 2, 4).reshape(B, T, nh, dv))
        y = y * F.silu(self.g_proj(x).view(B, T, nh, dv))
        y = F.dropout(y, self.dims.dropout, self.training)
        return self.out_proj(y.reshape(B, T, nh * dv))  # (B, T, C)


@hookimpl
def register_components(register):
    register("attention", "linear", LinearAttention)
    register("attention", "lightning", LightningAttention)
    register("attention", "retention", Retention)
    register("attention", "gla", GatedLinearAttention)
