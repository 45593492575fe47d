"""Causal self-attention, three ways to compute the same function, and a sliding window:

- ``per_head``: independent single-head modules side by side, concatenated (the teaching form)
- ``fused``: one QKV projection split into heads, explicit mask and softmax
- ``sdpa``: the fused projection with torch's scaled_dot_product_attention (flash/memory-efficient kernels)
- ``sliding_window``: each query sees its latest ``window`` keys (Mistral; Gemma 2/3's local
  layers), with a decoding cache that holds one window

and ``no_weights``, the book's first, parameter-free attention (another function, for teaching).

The first four share one state-dict layout (see gptzoo.core.Attention), so weights move between them, and
the same options: QK-norm (``qk_norm``), the score scale (``scale``) and soft-capping (``softcap``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from gptzoo.core import Attention, AttentionContext, Dims, LayerCache, Params
from gptzoo.registry import hookimpl


class AttentionParams(Params):
    qk_norm: Literal["none", "per_head", "across_heads"] = Field(
        "none",
        description="RMSNorm on queries and keys before the scores (and before rotary): per_head over each head's "
        "head_size features, one weight shared by the heads (Qwen3, Gemma 3); across_heads over all heads' features "
        "together, nh·hs query and nkv·hs key weights (OLMo 2)",
    )
    qk_norm_eps: float = Field(1e-6, gt=0)
    qk_norm_unit_offset: bool = Field(
        False,
        description="QK-norm scales by (1 + weight), the weight starting at 0, in float32 (Gemma 3's q_norm and k_norm)",
    )
    scale: float | None = Field(
        None,
        gt=0,
        description="multiplies q·k; None: 1/sqrt(head_size). Gemma 2/3's query_pre_attn_scalar s is scale = s**-0.5",
    )
    softcap: float | None = Field(
        None,
        gt=0,
        description="cap·tanh(scores/cap) on the scaled scores before the mask (Gemma 2: 50); SDPA cannot cap, so "
        "sdpa and sliding_window then take the explicit path, which holds every (T, Tk) score in memory",
    )


def attention_weights(q: Tensor, k: Tensor, bias: Tensor | None, scale: float, softcap: float | None) -> Tensor:
    """q (..., h, T, hs), k (..., h, Tk, hs) -> the attention probabilities (..., h, T, Tk), written out step by step."""
    scores = q @ k.transpose(-2, -1) * scale  # (..., h, T, Tk)
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if bias is not None:
        scores = scores + bias
    return torch.softmax(scores.float(), dim=-1).to(q.dtype)


class QKNorm(nn.Module):
    """RMSNorm of the queries and keys as they leave the projection: (B, T, h·hs) each."""

    def __init__(self, params: AttentionParams, dims: Dims):
        super().__init__()
        self.per_head = params.qk_norm == "per_head"
        self.head_size, self.eps, self.unit_offset = dims.head_size, params.qk_norm_eps, params.qk_norm_unit_offset
        q_size, k_size = (1, 1) if self.per_head else (dims.n_heads, dims.n_kv_heads)
        start = torch.zeros if self.unit_offset else torch.ones
        self.q_norm = nn.Parameter(start(q_size * dims.head_size))
        self.k_norm = nn.Parameter(start(k_size * dims.head_size))

    def _norm(self, x: Tensor, weight: Tensor) -> Tensor:
        if self.unit_offset:
            return self._rms(x.float(), 1.0 + weight.float()).to(x.dtype)
        return self._rms(x, weight)

    def _rms(self, x: Tensor, weight: Tensor) -> Tensor:
        if self.per_head:
            return F.rms_norm(x.unflatten(-1, (-1, self.head_size)), (self.head_size,), weight, self.eps).flatten(-2)
        return F.rms_norm(x, (x.size(-1),), weight, self.eps)

    def forward(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        return self._norm(q, self.q_norm), self._norm(k, self.k_norm)


class FusedAttention(Attention):
    Params = AttentionParams
    equivalent_to = "sdpa"

    def __init__(self, params: AttentionParams, dims: Dims):
        super().__init__(params, dims)
        self.n_heads, self.n_kv_heads, self.head_size = dims.n_heads, dims.n_kv_heads, dims.head_size
        self.scale = params.scale or 1 / math.sqrt(dims.head_size)
        self.qkv = nn.Linear(dims.d_model, (dims.n_heads + 2 * dims.n_kv_heads) * dims.head_size, bias=dims.qkv_bias)
        self.qk_norm = QKNorm(params, dims) if params.qk_norm != "none" else None
        self.out_proj = nn.Linear(dims.n_heads * dims.head_size, dims.d_model, bias=dims.attn_out_bias)
        self.attn_dropout = nn.Dropout(dims.dropout)

    def project(self, x: Tensor, ctx: AttentionContext, cache: LayerCache | None) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, C) -> q (B, nh, T, hs), k and v (B, nkv, Tk, hs), normalised, rotated and cached."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split(
            [self.n_heads * self.head_size, self.n_kv_heads * self.head_size, self.n_kv_heads * self.head_size], dim=-1
        )
        if self.qk_norm is not None:
            q, k = self.qk_norm(q, k)
        q = q.view(B, T, self.n_heads, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_heads, self.head_size).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.n_kv_heads, self.head_size).transpose(1, 2)  # (B, nkv, T, hs)
        q, k = ctx.rotate(q, k)
        if cache is not None:
            k, v = cache.update(k, v, ctx.offset)  # (B, nkv, Tk, hs)
        return q, k, v

    def merge(self, y: Tensor) -> Tensor:
        B, _, T, _ = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(B, T, -1))  # (B, T, C)

    def explicit(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, ctx: AttentionContext) -> Tensor:
        """q (..., nh, T, hs), k and v (..., nkv, Tk, hs) -> (..., nh, T, hs): every score in memory."""
        groups = self.n_heads // self.n_kv_heads
        k, v = k.repeat_interleave(groups, dim=-3), v.repeat_interleave(groups, dim=-3)  # (..., nh, Tk, hs)
        weights = attention_weights(q, k, bias, self.scale, self.params.softcap)  # (..., nh, T, Tk)
        ctx.record(weights)
        return self.attn_dropout(weights) @ v

    def forward(self, x: Tensor, ctx: AttentionContext, cache: LayerCache | None = None) -> Tensor:
        q, k, v = self.project(x, ctx, cache)
        return self.merge(self.explicit(q, k, v, ctx.bias(q.dtype), ctx))


class SDPAAttention(FusedAttention):
    def attend(
        self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, ctx: AttentionContext, is_causal: bool = False
    ) -> Tensor:
        """q (..., nh, T, hs), k and v (..., nkv, Tk, hs) -> (..., nh, T, hs), through SDPA unless capped or inspected."""
        if (
            self.params.softcap is not None or ctx.capturing
        ):  # SDPA has no hook for the scores and never forms the weights
            if is_causal:
                T, Tk = q.size(-2), k.size(-2)
                bias = torch.full((T, Tk), float("-inf"), dtype=q.dtype, device=q.device).triu(Tk - T + 1)
            return self.explicit(q, k, v, bias, ctx)
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=bias,
            dropout_p=self.dims.dropout if self.training else 0.0,
            is_causal=is_causal,
            scale=self.scale,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )  # (..., nh, T, hs)

    def forward(self, x: Tensor, ctx: AttentionContext, cache: LayerCache | None = None) -> Tensor:
        q, k, v = self.project(x, ctx, cache)
        return self.merge(self.attend(q, k, v, None if ctx.is_causal else ctx.bias(q.dtype), ctx, ctx.is_causal))


class SlidingWindowParams(AttentionParams):
    window: int = Field(
        32,
        ge=1,
        description="keys each query sees, itself included; default: half of configs/tiny.toml's context, so it "
        "matters there (Mistral 7B: 4096; Gemma 2: 4096, Gemma 3: 1024 on local layers)",
    )


class WindowCache(LayerCache):
    """A ring of the latest ``size`` keys and values, (B, nkv, size, hs) each: position p sits in slot p % size."""

    def __init__(
        self, batch_size: int, n_kv_heads: int, size: int, head_size: int, device: torch.device, dtype: torch.dtype
    ):
        self.k = torch.zeros(batch_size, n_kv_heads, size, head_size, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)

    def slots(self, start: int, end: int) -> Tensor:
        """Ring slots of key slots start..end-1, in order."""
        return torch.arange(start, end, device=self.k.device) % self.k.size(2)


# Training forward and backward on a CPU thread (4 heads of 16): the blocks cost 2-3x the
# dense mask's time per score (the padded, unfolded copies and their backward), so they win
# only from about 8 windows and 512 tokens on (T=512, W=64: 1.24x faster; T=1024, W=128:
# 1.63x; T=256, W=32: 0.87x; T=64, W=8: 0.36x).
BLOCKED_FROM, BLOCKED_FROM_LENGTH = 8, 512


class SlidingWindowAttention(SDPAAttention):
    """Causal attention where each query sees its latest ``window`` keys (Beltagy et al., 2020; Mistral 7B).

    Training on long sequences splits them into blocks of ``window`` queries, each attending to
    its own block and the one before through one batched SDPA call with a fixed (window,
    2·window) mask: about 2·window scores per query instead of T. Shorter ones take one call with
    the (T, T) windowed mask, which is faster while T is small or not many windows long.
    Decoding keeps a ring of the latest ``window`` keys and values, so the cache's memory stays
    at the window however long the text grows; a step writes one slot and attends to the ring
    as it lies (attention does not care about the keys' order, and the mask, when there is one,
    is rotated to match).
    """

    Params = SlidingWindowParams
    equivalent_to = None

    @classmethod
    def receptive_field(cls, params: SlidingWindowParams) -> int:
        return params.window

    def new_cache(self, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype) -> WindowCache:
        return WindowCache(batch_size, self.n_kv_heads, min(self.params.window, max_len), self.head_size, device, dtype)

    def cache_bytes(self, n_tokens: int, dtype: torch.dtype = torch.float32) -> int:
        return (
            2
            * self.n_kv_heads
            * self.head_size
            * min(n_tokens, self.params.window)
            * torch.empty((), dtype=dtype).element_size()
        )

    def flops_per_token(self, context_length: int) -> int:
        return super().flops_per_token(min(context_length, self.params.window))

    def forward(self, x: Tensor, ctx: AttentionContext, cache: WindowCache | None = None) -> Tensor:
        q, k, v = self.project(x, ctx, None)  # (B, nh, T, hs), (B, nkv, T, hs) x2: the new tokens only
        W, T = self.params.window, q.size(2)
        if cache is not None and T == 1:
            return self.merge(self._step(q, k, v, ctx, cache))
        if ctx.is_causal and T >= BLOCKED_FROM * W and T >= BLOCKED_FROM_LENGTH and not ctx.capturing:
            y = self._blocks(q, k, v, ctx)
        elif ctx.is_causal and T <= W:
            y = self.attend(q, k, v, None, ctx, is_causal=True)
        else:  # a padded batch, a score bias, new tokens after cached ones, or inspection: the full windowed mask
            first = 0
            if cache is not None and ctx.offset:
                first = ctx.offset - min(ctx.offset, W - 1)  # earlier keys the new ones may still see
                kept = cache.slots(first, ctx.offset)
                k = torch.cat([cache.k[:, :, kept].to(k.dtype), k], dim=2)  # (B, nkv, kept + T, hs)
                v = torch.cat([cache.v[:, :, kept].to(v.dtype), v], dim=2)
            y = self.attend(q, k, v, ctx.bias(q.dtype, window=W, first_key=first), ctx)
        if cache is not None:
            n = min(T, cache.k.size(2))
            slots = cache.slots(ctx.offset + T - n, ctx.offset + T)
            cache.k[:, :, slots] = k[:, :, -n:].to(cache.k.dtype)
            cache.v[:, :, slots] = v[:, :, -n:].to(cache.v.dtype)
        return self.merge(y)

    def _step(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext, cache: WindowCache) -> Tensor:
        """One new token: write it into the ring, attend to the ring's filled slots."""
        size = cache.k.size(2)
        cache.k[:, :, ctx.offset % size] = k[:, :, 0]
        cache.v[:, :, ctx.offset % size] = v[:, :, 0]
        n = min(ctx.offset + 1, size)
        first = ctx.offset + 1 - n
        bias = ctx.bias(
            q.dtype, window=self.params.window, first_key=first
        )  # (B|1, nh|1, 1, n), keys in position order
        if bias is not None and first % size:
            bias = bias.roll(first % size, dims=-1)  # key slot first + i lies in ring slot (first + i) % size
        return self.attend(q, cache.k[:, :, :n].to(q.dtype), cache.v[:, :, :n].to(q.dtype), bias, ctx)

    def _blocks(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        """Causal windowed attention over blocks of W queries, each seeing its block and the one before."""
        B, nh, T, hs = q.shape
        W = self.params.window
        n_blocks = -(-T // W)
        pad = n_blocks * W - T  # padded queries come last and are dropped; no real query sees their keys
        q = F.pad(q, (0, 0, 0, pad)).view(B, nh, n_blocks, W, hs).transpose(1, 2)  # (B, nb, nh, W, hs)
        k, v = (
            F.pad(t, (0, 0, W, pad)).unfold(2, 2 * W, W).transpose(-1, -2).transpose(1, 2)  # (B, nb, nkv, 2W, hs)
            for t in (k, v)
        )
        i = torch.arange(W, device=q.device)[:, None]
        j = torch.arange(2 * W, device=q.device)[None, :] - W  # key offsets from the block's first query
        allowed = (j <= i) & (j > i - W)  # (W, 2W)
        allowed = allowed.expand(n_blocks, 1, W, 2 * W).clone()
        allowed[0, :, :, :W] = False  # the first block has no block before it
        bias = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(
            ~allowed, float("-inf")
        )  # (nb, 1, W, 2W)
        y = self.attend(q, k, v, bias, ctx)  # (B, nb, nh, W, hs)
        return y.transpose(1, 2).reshape(B, nh, n_blocks * W, hs)[:, :, :T]  # (B, nh, T, hs)


class SingleHead(nn.Module):
    """One head's query, or one key/value head's key and value, as its own projections."""

    def __init__(self, d_model: int, head_size: int, bias: bool, names: tuple[str, ...]):
        super().__init__()
        for name in names:
            self.add_module(name, nn.Linear(d_model, head_size, bias=bias))


class PerHeadAttention(Attention):
    """Each head computes its own causal attention; outputs are concatenated and projected.

    Stored in the shared layout: the state-dict hooks stack the heads' rows into ``qkv``.
    """

    Params = AttentionParams
    equivalent_to = "sdpa"

    def __init__(self, params: AttentionParams, dims: Dims):
        super().__init__(params, dims)
        self.group = dims.n_heads // dims.n_kv_heads
        self.scale = params.scale or 1 / math.sqrt(dims.head_size)
        self.queries = nn.ModuleList(
            SingleHead(dims.d_model, dims.head_size, dims.qkv_bias, ("query",)) for _ in range(dims.n_heads)
        )
        self.kv_heads = nn.ModuleList(
            SingleHead(dims.d_model, dims.head_size, dims.qkv_bias, ("key", "value")) for _ in range(dims.n_kv_heads)
        )
        self.qk_norm = QKNorm(params, dims) if params.qk_norm != "none" else None
        self.out_proj = nn.Linear(dims.n_heads * dims.head_size, dims.d_model, bias=dims.attn_out_bias)
        self.attn_dropout = nn.Dropout(dims.dropout)
        self._register_state_dict_hook(_stack_heads)
        self._register_load_state_dict_pre_hook(_split_heads, with_module=True)

    def forward(self, x: Tensor, ctx: AttentionContext, cache: LayerCache | None = None) -> Tensor:
        q = torch.stack([h.query(x) for h in self.queries], dim=1)  # (B, nh, T, hs)
        k = torch.stack([h.key(x) for h in self.kv_heads], dim=1)  # (B, nkv, T, hs)
        v = torch.stack([h.value(x) for h in self.kv_heads], dim=1)  # (B, nkv, T, hs)
        if self.qk_norm is not None:
            q, k = (t.transpose(1, 2).flatten(2) for t in (q, k))  # (B, T, h·hs): the layout the norm reads
            q, k = self.qk_norm(q, k)
            q, k = (t.unflatten(-1, (-1, self.dims.head_size)).transpose(1, 2) for t in (q, k))  # (B, h, T, hs)
        q, k = ctx.rotate(q, k)
        if cache is not None:
            k, v = cache.update(k, v, ctx.offset)  # (B, nkv, Tk, hs)
        bias = ctx.bias(q.dtype)
        weights, outputs = [], []
        for h in range(q.size(1)):
            kv = h // self.group
            head_bias = None if bias is None else bias[:, h : h + 1] if bias.size(1) > 1 else bias
            weights.append(
                attention_weights(q[:, h : h + 1], k[:, kv : kv + 1], head_bias, self.scale, self.params.softcap)
            )  # (B, 1, T, Tk)
            outputs.append(self.attn_dropout(weights[-1]) @ v[:, kv : kv + 1])  # (B, 1, T, hs)
        if ctx.capturing:
            ctx.record(torch.cat(weights, dim=1))  # (B, nh, T, Tk)
        y = torch.cat(outputs, dim=1).transpose(1, 2).flatten(2)  # (B, T, nh*hs)
        return self.out_proj(y)


def _per_head_keys(module: PerHeadAttention, suffix: str) -> list[str]:
    return (
        [f"queries.{i}.query.{suffix}" for i in range(len(module.queries))]
        + [f"kv_heads.{i}.key.{suffix}" for i in range(len(module.kv_heads))]
        + [f"kv_heads.{i}.value.{suffix}" for i in range(len(module.kv_heads))]
    )


def _stack_heads(module: PerHeadAttention, state: dict, prefix: str, local_metadata) -> None:
    for suffix in ("weight", "bias"):
        keys = [prefix + k for k in _per_head_keys(module, suffix)]
        if keys[0] in state:
            state[f"{prefix}qkv.{suffix}"] = torch.cat([state.pop(k) for k in keys])


def _split_heads(module: PerHeadAttention, state: dict, prefix: str, *args) -> None:
    for suffix in ("weight", "bias"):
        fused = state.pop(f"{prefix}qkv.{suffix}", None)
        if fused is not None:
            # not strict: a fused tensor of another size fails in load_state_dict, which names it
            for key, part in zip(_per_head_keys(module, suffix), fused.split(module.dims.head_size), strict=False):
                state[prefix + key] = part


class NoWeightsAttention(Attention):
    """The book's section 3.3.1: self-attention without trainable weights, made causal.

    Queries, keys and values are the input itself, split into heads: each token's output is
    the average of the earlier tokens' vectors weighted by softmax(x_i · x_j), the dot products
    unscaled as in the book's first version (the next sections add trainable projections and
    the 1/√d scale). Nothing here trains; the block's norm and the feed-forward still do.
    """

    def __init__(self, params: Params, dims: Dims):
        super().__init__(params, dims)
        self.out_proj = nn.Identity()  # no projection writes into the residual stream
        self.attn_dropout = nn.Dropout(dims.dropout)

    @classmethod
    def check(cls, params: Params, dims: Dims) -> None:
        if dims.n_kv_heads != dims.n_heads:
            raise ValueError(
                f"keys and values are the input's own heads, so n_kv_heads must equal n_heads ({dims.n_heads}), got {dims.n_kv_heads}"
            )
        if dims.n_heads * dims.head_size != dims.d_model:
            raise ValueError(
                f"n_heads × head size must equal d_model ({dims.d_model}): the heads are slices of the input"
            )

    def forward(self, x: Tensor, ctx: AttentionContext, cache: LayerCache | None = None) -> Tensor:
        B, T, C = x.shape
        q = k = v = x.view(B, T, self.dims.n_heads, self.dims.head_size).transpose(1, 2)  # (B, nh, T, hs)
        q, k = ctx.rotate(q, k)
        if cache is not None:
            k, v = cache.update(k, v, ctx.offset)  # (B, nh, Tk, hs)
        scores = q @ k.transpose(-2, -1)  # (B, nh, T, Tk), unscaled
        bias = ctx.bias(q.dtype)  # the causal mask (None only for one new token that may see every key)
        if bias is not None:
            scores = scores + bias
        weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)  # (B, nh, T, Tk)
        ctx.record(weights)
        return (self.attn_dropout(weights) @ v).transpose(1, 2).reshape(B, T, C)  # (B, T, C)


@hookimpl
def register_components(register):
    register("attention", "per_head", PerHeadAttention)
    register("attention", "fused", FusedAttention)
    register("attention", "sdpa", SDPAAttention)
    register("attention", "sliding_window", SlidingWindowAttention)
    register("attention", "no_weights", NoWeightsAttention)
