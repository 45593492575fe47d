"""Sliding-window attention: each query sees its latest ``window`` keys (Mistral; Gemma 2/3's local
layers), with a decoding cache that holds one window.

It is ``sdpa`` with a window: the same params and options (plugins/attention.py) plus ``window``,
and the same state-dict layout, so weights move between them.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from gptzoo.core import AttentionContext, LayerCache
from gptzoo.plugins.attention import AttentionParams, SDPAAttention
from gptzoo.registry import hookimpl


class SlidingWindowParams(AttentionParams):
    window: int = Field(
        32,
        ge=1,
        description="keys each query sees, itself included; default: half of configs/tiny.toml's context, so it "
        "matters there (Mistral 7B: 4096; Gemma 2: 4096, Gemma 3: 1024 on local layers)",
    )


class WindowCache(LayerCache):
    """A ring of the latest ``size`` keys and values, (B, nkv, size, hs) and (B, nkv, size, vs): position p sits
    in slot p % size."""

    def __init__(
        self,
        batch_size: int,
        n_kv_heads: int,
        size: int,
        head_size: int,
        device: torch.device,
        dtype: torch.dtype,
        value_size: int | None = None,
    ):
        self.k = torch.zeros(batch_size, n_kv_heads, size, head_size, device=device, dtype=dtype)
        self.v = torch.zeros(batch_size, n_kv_heads, size, value_size or head_size, device=device, dtype=dtype)

    def slots(self, start: int, end: int) -> Tensor:
        """Ring slots of key slots start..end-1, in order."""
        return torch.arange(start, end, device=self.k.device) % self.k.size(2)


# Training forward and backward on a CPU thread (4 heads of 16): the blocks cost 2-3x the
# dense mask's time per score (the padded, unfolded copies and their backward), so they win
# only from about 8 windows and 512 tokens on (T=512, W=64: 1.24x faster; T=1024, W=128:
# 1.63x; T=256, W=32: 0.87x; T=64, W=8: 0.36x).
BLOCKED_FROM, BLOCKED_FROM_LENGTH = 8, 512


class RingCachedAttention(SDPAAttention):
    """``sdpa`` whose decoding cache is a ``WindowCache``: a ring of the latest ``cache_window(params)``
    keys and values, the memory bounded however long the text grows. Compiled decoding (a static
    cache) keeps every key and value, as ``sdpa`` does, and a subclass's forward masks them; costs
    count the ring's keys."""

    cache_kind = "window"
    static_cache = True  # a static cache keeps every key and value, the ring's keys a mask (new_static_cache)

    @property
    def ring(self) -> int:
        return cast(int, type(self).cache_window(self.params))

    def new_cache(self, batch_size: int, max_len: int | None, device: torch.device, dtype: torch.dtype) -> WindowCache:
        size = self.ring if max_len is None else min(self.ring, max_len)
        return WindowCache(batch_size, self.n_kv_heads, size, self.head_size, device, dtype, self.v_size)

    new_static_cache = SDPAAttention.new_cache
    static_cache_bytes = SDPAAttention.cache_bytes

    def cache_bytes(self, n_tokens: int, dtype: torch.dtype = torch.float32) -> int:
        return self.kv_bytes_per_token(dtype) * min(n_tokens, self.ring)

    def flops_per_token(self, context_length: int) -> int:
        return super().flops_per_token(min(context_length, self.ring))


class SlidingWindowAttention(RingCachedAttention):
    """Causal attention where each query sees its latest ``window`` keys (Beltagy et al., 2020; Mistral 7B).

    Training on long sequences splits them into blocks of ``window`` queries, each attending to
    its own block and the one before through one batched SDPA call with a fixed (window,
    2·window) mask: about 2·window scores per query instead of T. Shorter ones take one call with
    the (T, T) windowed mask, which is faster while T is small or not many windows long.
    Decoding keeps a ring of the latest ``window`` keys and values, so the cache's memory stays
    at the window however long the text grows; a step writes one slot and attends to the ring
    as it lies (attention does not care about the keys' order, and the mask, when there is one,
    is rotated to match). Compiled decoding (a static cache, ``generate --compile``) writes a
    ring at no Python offset: it keeps every key and value instead, as ``sdpa`` does, with the
    window a mask over them, so the memory saving of the ring is given up there.
    """

    Params = SlidingWindowParams
    equivalent_to = None

    @classmethod
    def receptive_field(cls, params: SlidingWindowParams) -> int:
        return params.window

    def forward(self, x: Tensor, ctx: AttentionContext, cache: LayerCache | None = None) -> Tensor:
        if ctx.static:  # every slot of a static cache (or the keys an earlier layer shares), the window a mask
            q, k, v = self.project(x, ctx, cache)
            ctx.share_kv(self.dims.layer_idx, k, v)
            return self.merge(self.attend(q, k, v, ctx.bias(q.dtype, window=self.params.window), ctx), x)
        cache = cast(WindowCache | None, cache)
        # (B, nh, T, hs), (B, nkv, T, hs) x2: the new tokens only (or the keys and values an earlier layer shares)
        q, k, v = self.project(x, ctx, None)
        W, T = self.params.window, q.size(2)
        if cache is not None and T == 1:
            return self.merge(self._step(q, k, v, ctx, cache), x)
        if cache is not None and ctx.offset:
            first = ctx.offset - min(ctx.offset, W - 1)  # earlier keys the new ones may still see
            kept = cache.slots(first, ctx.offset)
            k = torch.cat([cache.k[:, :, kept].to(k.dtype), k], dim=2)  # (B, nkv, kept + T, hs)
            v = torch.cat([cache.v[:, :, kept].to(v.dtype), v], dim=2)
        ctx.share_kv(self.dims.layer_idx, k, v)
        if ctx.is_causal and T >= BLOCKED_FROM * W and T >= BLOCKED_FROM_LENGTH and not ctx.capturing:
            y = self._blocks(q, k, v, ctx)
        elif ctx.is_causal and T <= W:
            y = self.attend(q, k, v, None, ctx, is_causal=True)
        else:  # a padded batch, a score bias, new tokens after cached ones, or inspection: the full windowed mask
            first = ctx.offset + T - k.size(2)  # the key slot of the first key at hand
            y = self.attend(q, k, v, ctx.bias(q.dtype, window=W, first_key=first), ctx)
        if cache is not None:
            n = min(T, cache.k.size(2))
            slots = cache.slots(ctx.offset + T - n, ctx.offset + T)
            cache.k[:, :, slots] = k[:, :, -n:].to(cache.k.dtype)
            cache.v[:, :, slots] = v[:, :, -n:].to(cache.v.dtype)
        return self.merge(y, x)

    def _step(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext, cache: WindowCache) -> Tensor:
        """One new token: write it into the ring, attend to the ring's filled slots."""
        size = cache.k.size(2)
        cache.k[:, :, ctx.offset % size] = k[:, :, 0]
        cache.v[:, :, ctx.offset % size] = v[:, :, 0]
        n = min(ctx.offset + 1, size)
        first = ctx.offset + 1 - n
        if ctx.kv_store is not None and self.dims.layer_idx in ctx.kv_store:  # later layers read them in order
            ordered = cache.slots(first, ctx.offset + 1)
            ctx.share_kv(self.dims.layer_idx, cache.k[:, :, ordered].to(q.dtype), cache.v[:, :, ordered].to(q.dtype))
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
        return y.transpose(1, 2).reshape(B, nh, n_blocks * W, -1)[:, :, :T]  # (B, nh, T, vs)


@hookimpl
def register_components(register):
    register("attention", "sliding_window", SlidingWindowAttention)
