"""Linear attention and its decayed forms: a state S of key-value outer products replaces the
growing keys and values, so decoding costs the same at every length.

For each head, with keys and queries through a feature map φ and a decay λ_t ≤ 1 (a scalar per
head, or one per key dimension):

    S_t = λ_t ⊙ S_{t-1} + φ(k_t) v_tᵀ        (dk, dv)
    y_t = φ(q_t)ᵀ S_t                          (dv)

- ``linear`` (Katharopoulos et al., 2020, "Transformers are RNNs"): λ = 1, φ = elu + 1 (or relu,
  identity), optionally divided by φ(q_t)ᵀ z_t with z_t = Σ φ(k_s), the paper's normaliser.

Training runs the chunked form: within a chunk of C tokens the outputs are a masked C×C product
(the decays between two tokens written out), across chunks the state carries the rest, so the
cost grows linearly with the length. Decoding a few tokens runs the recurrence above token by
token; both start from the cache's state. The same masked product over the whole text is the
implicit attention matrix A (y = A v) that ``gptzoo inspect`` shows.

Key/value heads may be fewer than query heads (``n_kv_heads``) where the state depends on keys,
values and decays alone (``linear``): the query heads of a group read one state.
Left padding: keys and values are zeroed there (and gates set to 1), so the state stays zero.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from gptzoo.core import Attention, AttentionContext, Dims, Params
from gptzoo.plugins._recurrent import RecurrentCache, zero_padding
from gptzoo.registry import hookimpl

FEATURE_MAPS = {
    "elu_plus_one": lambda x: F.elu(x) + 1,
    "relu": F.relu,
    "identity": lambda x: x,
}

# ---- the shared computation ----------------------------------------------------------------------
# Shapes: B batch, H key/value heads, G query heads per key/value head, T tokens, dk / dv the key
# and value widths. Queries are (B, H, G, T, dk), keys (B, H, 1, T, dk), values (B, H, 1, T, dv);
# log decays log λ_t ≤ 0 are None (λ = 1) or (B|1, H, 1, T, 1|dk); the state is (B, H, 1, dk, dv).


def decayed_scores(q: Tensor, k: Tensor, cum_log_decay: Tensor | None) -> Tensor:
    """A_ij = Σ_d q_id k_jd exp(b_id - b_jd) for j ≤ i, else 0, with b the cumulative log decays
    over the last-but-one axis: (..., G, C, dk), (..., 1, C, dk), (..., 1, C, 1|dk) -> (..., G, C, C).
    exp(b_i - b_j) ≤ 1 is formed for each pair, never exp(-b_j) alone, so nothing overflows."""
    C = q.size(-2)
    later = torch.ones(C, C, dtype=torch.bool, device=q.device).triu(1)  # (C, C): key j after query i
    if cum_log_decay is None:
        return (q @ k.transpose(-1, -2)).masked_fill(later, 0.0)
    if cum_log_decay.size(-1) == 1:  # one decay per head: a (C, C) factor
        b = cum_log_decay
        decay = (b - b.transpose(-1, -2)).masked_fill(later, float("-inf")).exp()  # (..., 1, C, C)
        return (q @ k.transpose(-1, -2)) * decay
    b = cum_log_decay
    decay = (b.unsqueeze(-2) - b.unsqueeze(-3)).masked_fill(later[..., None], float("-inf")).exp()  # (..., 1, C, C, dk)
    return (q.unsqueeze(-2) * (k.unsqueeze(-3) * decay)).sum(-1)


def chunked(
    q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor | None, state: Tensor, chunk_size: int
) -> tuple[Tensor, Tensor]:
    """The chunked form: -> outputs (B, H, G, T, dv) and the state after the last token."""
    T = q.size(-2)
    C = min(chunk_size, T)
    pad = -T % C
    if pad:  # trailing zero keys with λ = 1 change neither the outputs before them nor the state
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        log_decay = None if log_decay is None else F.pad(log_decay, (0, 0, 0, pad))
    n = (T + pad) // C
    q, k, v = (t.unflatten(-2, (n, C)) for t in (q, k, v))  # (B, H, G|1, n, C, d)
    b = None if log_decay is None else log_decay.unflatten(-2, (n, C)).cumsum(-2)  # (B|1, H, 1, n, C, 1|dk)
    y = decayed_scores(q, k, b) @ v  # within each chunk: (B, H, G, n, C, dv)
    if b is None:
        k_to_end, chunk_decay = k, None
    else:
        k_to_end = k * (b[..., -1:, :] - b).exp()  # each key decayed to its chunk's end
        chunk_decay = b[..., -1, :].exp().unsqueeze(-1)  # (B|1, H, 1, n, 1|dk, 1)
    chunk_states = k_to_end.transpose(-1, -2) @ v  # what each chunk adds: (B, H, 1, n, dk, dv)
    states = []  # the state before each chunk
    for i in range(n):
        states.append(state)
        if chunk_decay is not None:
            state = chunk_decay[:, :, :, i] * state
        state = state + chunk_states[:, :, :, i]
    before = torch.stack(states, dim=3)  # (B, H, 1, n, dk, dv)
    q_from_start = q if b is None else q * b.exp()
    y = y + q_from_start @ before  # from the chunks before: (B, H, G, n, C, dv)
    return y.flatten(-3, -2)[..., :T, :], state


def recurrent(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor | None, state: Tensor) -> tuple[Tensor, Tensor]:
    """The recurrence, token by token: same shapes as ``chunked``."""
    ys = []
    for t in range(q.size(-2)):
        if log_decay is not None:
            state = log_decay[..., t, :].exp().unsqueeze(-1) * state  # λ_t ⊙ S
        state = state + k[..., t, :].unsqueeze(-1) * v[..., t, :].unsqueeze(-2)  # + k_t v_tᵀ
        ys.append(q[..., t : t + 1, :] @ state)  # (B, H, G, 1, dv)
    return torch.cat(ys, dim=-2), state


def heads(x: Tensor, n_groups: int, width: int) -> Tensor:
    """(B, T, n_groups · G · width) -> (B, n_groups, G, T, width)."""
    B, T, _ = x.shape
    return x.view(B, T, n_groups, -1, width).permute(0, 2, 3, 1, 4)


class DecayedLinearAttention(Attention):
    """What the variants share: the state cache, the choice between the chunked and the recurrent
    form, the implicit attention matrix. A variant projects x into queries, keys, values and log
    decays (``mix``'s inputs) and finishes the heads' outputs its own way."""

    inspection = "implicit_attention"
    position_hooks = frozenset()
    cache_kind = "state"
    chunk_size: int
    key_width: int  # dk per head
    value_width: int  # dv per head, the state's (the normaliser adds a column)
    state_heads: int  # H

    @classmethod
    def kit_lengths(cls, params: Params) -> tuple[int, ...]:
        return (3 * params.chunk_size + 5,)

    def new_cache(
        self, batch_size: int, max_len: int | None, device: torch.device, dtype: torch.dtype
    ) -> RecurrentCache:
        shape = (batch_size, self.state_heads, 1, self.key_width, self.value_width)
        return RecurrentCache(state=torch.zeros(shape, device=device, dtype=torch.float32))

    def cache_bytes(self, n_tokens: int, dtype: torch.dtype = torch.float32) -> int:
        return self.state_heads * self.key_width * self.value_width * 4  # float32, whatever the length

    def flops_per_token(self, context_length: int) -> int:
        # Per query head: scores and weighted sum against the keys of its chunk, and reading the
        # state; per key/value head: writing the state.
        projections = sum(2 * m.weight.numel() for m in self.owned_modules() if isinstance(m, nn.Linear))
        dk, dv, C = self.key_width, self.value_width, min(self.chunk_size, context_length)
        return projections + self.dims.n_heads * 2 * (C * (dk + dv) + dk * dv) + self.state_heads * 2 * dk * dv

    def mix(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        log_decay: Tensor | None,
        ctx: AttentionContext,
        cache: RecurrentCache | None,
    ) -> Tensor:
        """q (B, H, G, T, dk), k (B, H, 1, T, dk), v (B, H, 1, T, dv), log decays (B|1, H, 1, T, 1|dk)
        or None -> the heads' outputs (B, H, G, T, dv), reporting the implicit attention matrix."""
        B, H, G, T, _ = q.shape
        if ctx.capturing:
            b = None if log_decay is None else log_decay.cumsum(-2)
            ctx.record(self.implicit_attention(decayed_scores(q, k, b)).reshape(B, H * G, T, T))
        state = torch.zeros(B, H, 1, k.size(-1), v.size(-1), device=q.device, dtype=q.dtype)
        if cache is not None:
            state = cache.state.to(q.dtype)
        if cache is not None and T < self.chunk_size:
            y, state = recurrent(q, k, v, log_decay, state)
        else:
            y, state = chunked(q, k, v, log_decay, state, self.chunk_size)
        if cache is not None:
            cache.state.copy_(state)
        return y

    def implicit_attention(self, scores: Tensor) -> Tensor:
        """The (…, T, T) matrix A with y = A·v as this mixer computes y (a normalising mixer divides it)."""
        return scores


# ---- linear attention ------------------------------------------------------------------------------


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


@hookimpl
def register_components(register):
    register("attention", "linear", LinearAttention)
