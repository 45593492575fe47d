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
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from gptzoo.core import Attention, AttentionContext, Dims, Params
from gptzoo.plugins._recurrent import RecurrentCache, ShortConv, zero_padding
from gptzoo.registry import hookimpl

# ---- the delta rule --------------------------------------------------------------------------
# Shapes: q, k (B, h, T, dk), v (B, h, T, dv), beta (B, h, T), log_decay (B, h, T, 1) for one decay
# per head or (B, h, T, dk) for one per key channel, None for none; state (B, h, dk, dv), float32.


def l2_normalize(x: Tensor, eps: float = 1e-6) -> Tensor:
    """x / √(Σx² + eps) over the last dimension, as the references (and FLA's kernels) compute it."""
    return x * torch.rsqrt(x.square().sum(-1, keepdim=True) + eps)


def decayed_products(x: Tensor, y: Tensor, cum_decay: Tensor | None, strict: bool) -> Tensor:
    """Σ_c x_ic y_jc exp(γ_ic - γ_jc) for j ≤ i (j < i when ``strict``), 0 elsewhere: x, y (..., C, d),
    cum_decay γ (..., C, 1 | d) the log decay accumulated up to each token, or None (no decay) ->
    (..., C, C). Only j ≤ i is exponentiated, where γ_i - γ_j ≤ 0, so nothing overflows."""
    C = x.size(-2)
    hidden = torch.ones(C, C, dtype=torch.bool, device=x.device).triu(0 if strict else 1)  # (C, C)
    if cum_decay is None:
        return (x @ y.transpose(-1, -2)).masked_fill(hidden, 0.0)
    if cum_decay.size(-1) == 1:  # one decay per head: a (C, C) factor
        gaps = cum_decay - cum_decay.transpose(-1, -2)  # (..., C, C)
        return (x @ y.transpose(-1, -2)) * gaps.masked_fill(hidden, float("-inf")).exp()
    gaps = cum_decay.unsqueeze(-2) - cum_decay.unsqueeze(-3)  # (..., C, C, d)
    decay = gaps.masked_fill(hidden.unsqueeze(-1), float("-inf")).exp()
    return (x.unsqueeze(-2) * y.unsqueeze(-3) * decay).sum(-1)


SEGMENT_TOKENS = 128  # chunks are worked through this many tokens at a time (see chunked_delta_rule)


def chunked_delta_rule(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, log_decay: Tensor | None, state: Tensor, chunk_size: int
) -> tuple[Tensor, Tensor]:
    """The delta rule over T tokens from ``state``, chunk by chunk -> outputs (B, h, T, dv), final state.

    The chunks go through ``chunks`` a segment of SEGMENT_TOKENS at a time: a channel-wise decay
    forms C × C × dk numbers per chunk, and formed for the whole text at once they outgrow the
    processor's caches, so the time per token would grow with the length."""
    B, h, T, dk = k.shape
    dv = v.size(-1)
    C = chunk_size
    pad = -T % C  # tokens with k = 0 and β = 0 at the end leave the state as it is
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        beta = F.pad(beta, (0, pad))
        log_decay = None if log_decay is None else F.pad(log_decay, (0, 0, 0, pad))
    n = (T + pad) // C
    q, k, v = (t.reshape(B, h, n, C, -1) for t in (q, k, v))  # (B, h, n, C, ·)
    beta = beta.reshape(B, h, n, C, 1)
    per_segment = max(1, SEGMENT_TOKENS // C)
    # Split once (indexing in the loop would make backward zero-fill whole tensors).
    segments = [t.split(per_segment, dim=2) for t in (q, k, v, beta)]
    decays = log_decay.reshape(B, h, n, C, -1).split(per_segment, dim=2) if log_decay is not None else None
    outputs = []
    for i, (q_s, k_s, v_s, beta_s) in enumerate(zip(*segments, strict=True)):
        y, state = chunks(q_s, k_s, v_s, beta_s, None if decays is None else decays[i], state)
        outputs.append(y)
    return torch.cat(outputs, 2).reshape(B, h, n * C, dv)[:, :, :T], state


def chunks(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, log_decay: Tensor | None, state: Tensor
) -> tuple[Tensor, Tensor]:
    """n chunks of C tokens from ``state``: q, k (B, h, n, C, dk), v (B, h, n, C, dv), beta (B, h, n, C, 1),
    log_decay (B, h, n, C, 1 | dk) or None -> outputs (B, h, n, C, dv), the state after the last chunk."""
    B, h, n, C, dk = k.shape
    dv = v.size(-1)
    cum = None if log_decay is None else log_decay.cumsum(3)  # (B, h, n, C, 1 | dk)
    k_beta = k * beta
    # U = (I + L)⁻¹ β V and W = (I + L)⁻¹ β K decayed to the chunk start: the chunk's corrected values
    # are U - W S for the state S it starts from.
    lower = decayed_products(k_beta, k, cum, strict=True)  # L (B, h, n, C, C)
    scores = decayed_products(q, k, cum, strict=False)  # (B, h, n, C, C)
    k_from_start = k_beta if cum is None else k_beta * cum.exp()
    identity = torch.eye(C, dtype=lower.dtype, device=k.device).expand_as(lower)
    inverse = torch.linalg.solve_triangular(lower, identity, upper=False, unitriangular=True)  # (I + L)⁻¹
    u, w = (inverse @ torch.cat([v * beta, k_from_start], -1)).split([dv, dk], dim=-1)  # (B, h, n, C, dv | dk)
    if cum is None:
        q_from_start, k_to_end, chunk_decay = q, k, torch.ones(B, h, n, 1, 1, dtype=k.dtype, device=k.device)
    else:
        q_from_start = q * cum.exp()
        k_to_end = k * (cum[..., -1:, :] - cum).exp()
        chunk_decay = cum[..., -1, :].exp().unsqueeze(-1)  # (B, h, n, 1 | dk, 1)
    outputs = []
    # Chunk i's slices, unbound once (indexing in the loop would make backward zero-fill whole tensors).
    for u_i, w_i, q_i, scores_i, k_i, decay_i in zip(
        *(t.unbind(2) for t in (u, w, q_from_start, scores, k_to_end, chunk_decay)), strict=True
    ):
        corrected = u_i - w_i @ state  # (B, h, C, dv)
        outputs.append(q_i @ state + scores_i @ corrected)
        state = state * decay_i + k_i.transpose(-1, -2) @ corrected  # (B, h, dk, dv)
    return torch.stack(outputs, 2), state


def delta_rule_step(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, log_decay: Tensor | None, state: Tensor
) -> tuple[Tensor, Tensor]:
    """One token of the recurrence (T = 1 in the shapes above) -> output (B, h, 1, dv), new state."""
    if log_decay is not None:
        state = state * log_decay.transpose(-1, -2).exp()  # (B, h, 1 | dk, 1): decays the rows of S
    predicted = k @ state  # (B, h, 1, dv): what the state recalls for k
    state = state + k.transpose(-1, -2) @ (beta.unsqueeze(-1) * (v - predicted))
    return q @ state, state


def implicit_attention(q: Tensor, k: Tensor, beta: Tensor, log_decay: Tensor | None) -> Tensor:
    """A (B, h, T, T) with outputs = A v over these tokens from an empty state (see the module's docstring)."""
    cum = None if log_decay is None else log_decay.cumsum(2)
    lower = decayed_products(k * beta.unsqueeze(-1), k, cum, strict=True)  # (B, h, T, T)
    scores = decayed_products(q, k, cum, strict=False)
    weights = torch.linalg.solve_triangular(lower, torch.diag_embed(beta), upper=False, unitriangular=True)
    return scores @ weights


# ---- the layers ------------------------------------------------------------------------------


class GatedRMSNorm(nn.Module):
    """RMSNorm over each head's output, times act(gate) when a gate is given: (..., d) -> (..., d)."""

    def __init__(self, width: int, eps: float, activation: Literal["silu", "sigmoid"]):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps
        self.activation = F.silu if activation == "silu" else torch.sigmoid

    def forward(self, x: Tensor, gate: Tensor | None = None) -> Tensor:
        y = F.rms_norm(x, self.weight.shape, self.weight.to(x.dtype), self.eps)
        return y if gate is None else y * self.activation(gate.float())


class DeltaRuleMixer(Attention):
    """What the delta-rule mixers share: q, k, v through one short convolution, the rule chunked for
    training and stepped for decoding, the output norm and projection. A variant builds its
    projections and says how it computes β and the decay (``gates``) and the output gate."""

    inspection = "implicit_attention"
    position_hooks = frozenset()
    cache_kind = "state"
    static_cache = True  # a fixed-size state, updated in place
    # Set by each variant's __init__:
    n_v_heads: int
    n_k_heads: int
    head_k_dim: int
    head_v_dim: int
    chunk_size: int
    q_proj: nn.Linear
    k_proj: nn.Linear
    v_proj: nn.Linear
    conv1d: ShortConv
    o_norm: GatedRMSNorm
    out_proj: nn.Linear

    @classmethod
    def kit_lengths(cls, params: Params) -> tuple[int, ...]:
        chunk_size = params.chunk_size  # type: ignore[attr-defined]
        return (3 * chunk_size + 5,)  # three chunk boundaries and a ragged end

    def gates(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """x (B, T, C) -> β (B, T, h) and the log decay (B, T, h, 1 | dk) or None, in float32."""
        raise NotImplementedError

    def output_gate(self, x: Tensor) -> Tensor | None:
        """x (B, T, C) -> the output norm's gate (B, T, h, dv), or None."""
        return None

    def new_cache(
        self, batch_size: int, max_len: int | None, device: torch.device, dtype: torch.dtype
    ) -> RecurrentCache:
        state = torch.zeros(batch_size, self.n_v_heads, self.head_k_dim, self.head_v_dim, device=device)
        return RecurrentCache(window=self.conv1d.new_window(batch_size, device, dtype), state=state)

    def cache_bytes(self, n_tokens: int, dtype: torch.dtype = torch.float32) -> int:
        state = self.n_v_heads * self.head_k_dim * self.head_v_dim * 4  # float32 whatever the model's dtype
        window = (
            self.conv1d.conv.in_channels * (self.conv1d.kernel_size - 1) * torch.empty((), dtype=dtype).element_size()
        )
        return state + window

    def flops_per_token(self, context_length: int) -> int:
        # Projections, the convolution, then the chunked rule per value head and token (multiply-
        # adds × 2): q·k and k·k within the chunk (4·C·dk), (I + L)⁻¹ times β·[V K] for U and W
        # (2·C·(dv + dk)), the scores times the corrected values (2·C·dv), and reading, correcting
        # and writing the state (6·dk·dv). Inverting the unit triangular I + L (about C²/3 per
        # token), the gates and the norms are left out.
        C, dk, dv = self.chunk_size, self.head_k_dim, self.head_v_dim
        conv = 2 * self.conv1d.conv.weight.numel()
        rule = C * (6 * dk + 4 * dv) + 6 * dk * dv
        projections = sum(2 * m.weight.numel() for m in self.owned_modules() if isinstance(m, nn.Linear))
        return projections + conv + self.n_v_heads * rule

    def share(self, x: Tensor) -> Tensor:
        """Query/key heads (B, T, hk, dk) -> (B, h, T, dk), each serving h / hk consecutive value heads
        (as Qwen3-Next groups them)."""
        x = x.transpose(1, 2)
        groups = self.n_v_heads // self.n_k_heads
        return x if groups == 1 else x.repeat_interleave(groups, dim=1)

    def forward(self, x: Tensor, ctx: AttentionContext, cache: RecurrentCache | None = None) -> Tensor:
        B, T, _ = x.shape
        h, dk, dv = self.n_v_heads, self.head_k_dim, self.head_v_dim
        x = zero_padding(x, ctx.valid)
        qkv = torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)
        qkv = F.silu(self.conv1d(qkv, None if cache is None else cache.window))
        q, k, v = qkv.float().split([self.n_k_heads * dk, self.n_k_heads * dk, h * dv], dim=-1)
        q = self.share(l2_normalize(q.view(B, T, -1, dk)) / math.sqrt(dk))
        k = self.share(l2_normalize(k.view(B, T, -1, dk)))  # (B, h, T, dk)
        v = v.view(B, T, h, dv).transpose(1, 2)  # (B, h, T, dv)
        beta, log_decay = self.gates(x)
        beta, log_decay = beta.float(), None if log_decay is None else log_decay.float()  # as q, k, v
        if ctx.valid is not None:  # padding neither writes (β = 0) nor decays (α = 1) the state
            valid = ctx.valid.to(beta.dtype)
            beta = beta * valid[..., None]
            log_decay = None if log_decay is None else log_decay * valid[..., None, None]
        beta = beta.transpose(1, 2)  # (B, h, T)
        log_decay = None if log_decay is None else log_decay.transpose(1, 2)  # (B, h, T, 1 | dk)
        state = cache.state if cache is not None else torch.zeros(B, h, dk, dv, device=x.device)
        # The rule runs in float32 under autocast as well: the triangular solve has no bfloat16 form,
        # and the corrections subtract nearly equal numbers.
        with torch.autocast(x.device.type, enabled=False):
            if ctx.capturing:
                ctx.record(implicit_attention(q, k, beta, log_decay))
            if cache is not None and T == 1:
                y, state = delta_rule_step(q, k, v, beta, log_decay, state)
            else:
                y, state = chunked_delta_rule(q, k, v, beta, log_decay, state, self.chunk_size)
        if cache is not None:
            cache.state.copy_(state)
        y = self.o_norm(y.transpose(1, 2), self.output_gate(x))  # (B, T, h, dv)
        return self.out_proj(F.dropout(y.reshape(B, T, h * dv).to(x.dtype), self.dims.dropout, self.training))


# ---- DeltaNet and Gated DeltaNet -------------------------------------------------------------


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
