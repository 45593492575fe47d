"""The delta rule's computation and the delta-rule mixers' common base (gptzoo.plugins.delta_rule holds
the variants: DeltaNet, Gated DeltaNet, Kimi Delta Attention, and the equations)."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gptzoo.core import Attention, AttentionContext, Params
from gptzoo.plugins._recurrent import RecurrentCache, ShortConv, zero_padding

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
