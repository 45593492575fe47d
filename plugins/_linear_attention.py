"""The computation the linear attention mixers share (gptzoo.plugins.linear_attention): the chunked and
recurrent forms of a decayed linear attention, and the mixers' common base."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gptzoo.core import Attention, AttentionContext, Params
from gptzoo.plugins._recurrent import RecurrentCache

# ---- the shared computation ----------------------------------------------------------------------
# Shapes: B batch, H key/value heads, G query heads per key/value head, T tokens, dk / dv the key
# and value widths. Queries are (B, H, G, T, dk), keys (B, H, 1, T, dk), values (B, H, 1, T, dv);
# log decays log λ_t ≤ 0 are None (λ = 1) or (B|1, H, 1, T, 1|dk); the state is (B, H, 1, dk, dv).
# Decays are summed and exponentiated in float32 (or wider), and the state is carried so (bfloat16
# would lose what a long text adds to it); products with queries, keys and values run in their dtype.


def wide(t: Tensor) -> Tensor:
    """t in float32, or wider if it is."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


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
        return (q @ k.transpose(-1, -2)) * decay.to(q.dtype)
    b = cum_log_decay
    decay = (b.unsqueeze(-2) - b.unsqueeze(-3)).masked_fill(later[..., None], float("-inf")).exp().to(q.dtype)
    return (q.unsqueeze(-2) * (k.unsqueeze(-3) * decay)).sum(-1)


def chunked(
    q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor | None, state: Tensor, chunk_size: int
) -> tuple[Tensor, Tensor]:
    """The chunked form: -> outputs (B, H, G, T, dv) and the float32 state after the last token."""
    T = q.size(-2)
    C = min(chunk_size, T)
    pad = -T % C
    if pad:  # trailing zero keys with λ = 1 change neither the outputs before them nor the state
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        log_decay = None if log_decay is None else F.pad(log_decay, (0, 0, 0, pad))
    n = (T + pad) // C
    q, k, v = (t.unflatten(-2, (n, C)) for t in (q, k, v))  # (B, H, G|1, n, C, d)
    b = None if log_decay is None else wide(log_decay).unflatten(-2, (n, C)).cumsum(-2)  # (B|1, H, 1, n, C, 1|dk)
    y = decayed_scores(q, k, b) @ v  # within each chunk: (B, H, G, n, C, dv)
    if b is None:
        k_to_end, chunk_decay = k, None
    else:
        k_to_end = k * (b[..., -1:, :] - b).exp().to(k.dtype)  # each key decayed to its chunk's end
        chunk_decay = b[..., -1, :].exp().unsqueeze(-1)  # (B|1, H, 1, n, 1|dk, 1)
    chunk_states = wide(k_to_end.transpose(-1, -2) @ v)  # what each chunk adds: (B, H, 1, n, dk, dv)
    # Unbound once: indexing chunk i in the loop would cost a full-size zero gradient per chunk.
    adds, decays = chunk_states.unbind(3), None if chunk_decay is None else chunk_decay.unbind(3)
    states = []  # the state before each chunk
    for i in range(n):
        states.append(state)
        if decays is not None:
            state = decays[i] * state
        state = state + adds[i]
    before = torch.stack(states, dim=3).to(q.dtype)  # (B, H, 1, n, dk, dv)
    q_from_start = q if b is None else q * b.exp().to(q.dtype)
    y = y + q_from_start @ before  # from the chunks before: (B, H, G, n, C, dv)
    return y.flatten(-3, -2)[..., :T, :], state


def recurrent(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor | None, state: Tensor) -> tuple[Tensor, Tensor]:
    """The recurrence, token by token: same shapes as ``chunked``."""
    ys = []
    for t in range(q.size(-2)):
        if log_decay is not None:
            state = wide(log_decay[..., t, :]).exp().unsqueeze(-1) * state  # λ_t ⊙ S
        state = state + wide(k[..., t, :].unsqueeze(-1) * v[..., t, :].unsqueeze(-2))  # + k_t v_tᵀ
        ys.append(q[..., t : t + 1, :] @ state.to(q.dtype))  # (B, H, G, 1, dv)
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
    static_cache = True  # a fixed-size state, updated in place
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
            b = None if log_decay is None else wide(log_decay).cumsum(-2)
            ctx.record(self.implicit_attention(decayed_scores(q, k, b)).reshape(B, H * G, T, T))
        state = cache.state if cache is not None else wide(q.new_zeros(B, H, 1, k.size(-1), v.size(-1)))
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
