"""A third-party gptzoo plugin: gated linear attention (GLA; Yang et al., 2024, "Gated Linear
Attention Transformers with Hardware-Efficient Training") with a gate per head, registered as
``headwise_gla``. (gptzoo's built-in ``gla`` is the full one, gating each key channel; this is the
example the authoring docs walk through.)

Each key/value head keeps a state S (hs × hs) that a data-dependent gate g ∈ (0, 1) decays
before each token adds its key and value; a query reads it:

    S_t = g_t · S_{t-1} + k_tᵀ v_t,    y_t = q_t S_t / √hs,    g_t = σ(x_t w_g + b_g)^(1/τ)

Its gate is one scalar per head and token (GLA's paper gates each key channel; tying them, as
Mamba-2 does, keeps this example short). Unrolled, y = A·v with the masked matrix

    A[t, s] = (q_t · k_s) / √hs · g_{s+1} ··· g_t  for s ≤ t, else 0,

which is not a distribution: it may be negative and its rows need not sum to 1. So the mixer
declares ``inspection = "implicit_attention"`` and reports A as it is. Training runs chunk by
chunk: within a chunk, that matrix times v; across chunks, the state. Decoding runs the same
code on each new piece, starting from the cached state, so both forms are one.

Installed, it is found through its entry point (group "gptzoo"); nothing in gptzoo names it.
"""

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from gptzoo.core import Attention, AttentionContext, Dims, LayerCache, Params
from gptzoo.registry import hookimpl


class GLAParams(Params):
    chunk_size: int = Field(
        16, gt=0, description="tokens per chunk in training: the matrix form within a chunk, the state across chunks"
    )
    gate_temperature: float = Field(
        16.0, gt=0, description="τ in g = σ(x w_g + b_g)^(1/τ): GLA's normaliser, which starts the gates near 1"
    )


class GLAState(LayerCache):
    """One sequence batch's states, (B, nkv, hs, hs) in float32, allocated whole and updated in place."""

    def __init__(self, batch_size: int, n_kv_heads: int, head_size: int, device: torch.device):
        self.state = torch.zeros(batch_size, n_kv_heads, head_size, head_size, device=device, dtype=torch.float32)


class GatedLinearAttention(Attention):
    """x (B, T, C) -> (B, T, C). Query heads share key/value heads (and their states and gates) in
    groups, as grouped-query attention shares keys and values."""

    Params = GLAParams
    inspection = "implicit_attention"  # y = A·v with A formed explicitly while ctx.capturing
    position_hooks = frozenset()  # never calls ctx.rotate or ctx.bias: rope and alibi are refused
    cache_kind = "state"  # a fixed-size state, whatever the length

    def __init__(self, params: GLAParams, dims: Dims):
        super().__init__(params, dims)  # shapes only: describe builds this on the meta device
        nh, nkv, hs = dims.n_heads, dims.n_kv_heads, dims.head_size
        self.qkv = nn.Linear(dims.d_model, (nh + 2 * nkv) * hs, bias=dims.qkv_bias)
        self.gate = nn.Linear(dims.d_model, nkv)  # one gate logit per key/value head
        self.out_proj = nn.Linear(nh * hs, dims.d_model, bias=dims.attn_out_bias)
        self.dropout = nn.Dropout(dims.dropout)

    @classmethod
    def kit_lengths(cls, params: GLAParams) -> tuple[int, ...]:
        return (3 * params.chunk_size + 5,)  # three chunk boundaries and a ragged last chunk

    def forward(self, x: Tensor, ctx: AttentionContext, cache: GLAState | None = None) -> Tensor:
        B, T, _ = x.shape
        nh, nkv, hs = self.dims.n_heads, self.dims.n_kv_heads, self.dims.head_size
        q, k, v = self.qkv(x).split([nh * hs, nkv * hs, nkv * hs], dim=-1)
        q = q.view(B, T, nh, hs).transpose(1, 2) / math.sqrt(hs)  # (B, nh, T, hs)
        k = k.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        log_g = F.logsigmoid(self.gate(x)).transpose(1, 2) / self.params.gate_temperature  # (B, nkv, T)
        if ctx.valid is not None:
            # Left padding adds nothing (k, v = 0) and decays nothing (g = 1), so a row's state is its own.
            keep = ctx.valid[:, None, :].to(x.dtype)  # (B, 1, T)
            k, v, log_g = k * keep[..., None], v * keep[..., None], log_g * keep
        state = cache.state if cache is not None else x.new_zeros(B, nkv, hs, hs, dtype=torch.float32)
        pieces = []
        for start in range(0, T, self.params.chunk_size):
            end = start + self.params.chunk_size
            y, state = self.chunk(
                q[:, :, start:end], k[:, :, start:end], v[:, :, start:end], log_g[..., start:end], state
            )
            pieces.append(y)
        if cache is not None:
            cache.state.copy_(state)
        if ctx.capturing:
            ctx.record(self.implicit_attention(q, k, log_g))
        y = torch.cat(pieces, dim=2).transpose(1, 2).reshape(B, T, nh * hs)
        return self.out_proj(self.dropout(y))

    def chunk(self, q: Tensor, k: Tensor, v: Tensor, log_g: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One chunk of L tokens from ``state`` (B, nkv, hs, hs): q (B, nh, L, hs), k, v (B, nkv, L, hs),
        log_g (B, nkv, L) -> y (B, nh, L, hs) and the state after the chunk."""
        groups = self.dims.n_heads // self.dims.n_kv_heads
        decay = log_g.float().cumsum(-1)  # (B, nkv, L): log(g_1 ··· g_t) within the chunk
        A = self.masked_scores(q, k, decay)  # (B, nh, L, L)
        carried = (q.float() * decay.exp().repeat_interleave(groups, 1)[..., None]) @ state.repeat_interleave(groups, 1)
        y = A @ v.float().repeat_interleave(groups, 1) + carried  # (B, nh, L, hs)
        to_end = (decay[..., -1:] - decay).exp()  # (B, nkv, L): g_{s+1} ··· g_L
        state = decay[..., -1, None, None].exp() * state + (k.float() * to_end[..., None]).transpose(-2, -1) @ v.float()
        return y.to(q.dtype), state

    def masked_scores(self, q: Tensor, k: Tensor, decay: Tensor) -> Tensor:
        """A[t, s] = (q_t · k_s) · exp(decay_t - decay_s) for s ≤ t, else 0: (B, nh, L, L)."""
        groups = self.dims.n_heads // self.dims.n_kv_heads
        L = q.size(2)
        causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
        between = (decay[..., :, None] - decay[..., None, :]).masked_fill(~causal, float("-inf"))  # (B, nkv, L, L)
        return (q.float() @ k.float().transpose(-2, -1).repeat_interleave(groups, 1)) * between.exp().repeat_interleave(
            groups, 1
        )

    def implicit_attention(self, q: Tensor, k: Tensor, log_g: Tensor) -> Tensor:
        """The whole forward's A (B, nh, T, T), as the chunks apply it: what inspection shows."""
        return self.masked_scores(q, k, log_g.float().cumsum(-1))

    def new_cache(self, batch_size: int, max_len: int | None, device: torch.device, dtype: torch.dtype) -> GLAState:
        return GLAState(batch_size, self.dims.n_kv_heads, self.dims.head_size, device)  # max_len: any, or None

    def cache_bytes(self, n_tokens: int, dtype: torch.dtype = torch.float32) -> int:
        return self.dims.n_kv_heads * self.dims.head_size**2 * 4  # the float32 states, whatever n_tokens and dtype

    def flops_per_token(self, context_length: int) -> int:
        # Projections, then per query head the scores and weighted sum against the keys of its
        # chunk and the read of the state; per key/value head the state's decay and update.
        nh, nkv, hs = self.dims.n_heads, self.dims.n_kv_heads, self.dims.head_size
        projections = sum(2 * m.weight.numel() for m in (self.qkv, self.gate, self.out_proj))
        within = 4 * nh * hs * min(self.params.chunk_size, context_length)
        return projections + within + 2 * nh * hs * hs + 3 * nkv * hs * hs


@hookimpl
def register_components(register):
    register("attention", "headwise_gla", GatedLinearAttention)
