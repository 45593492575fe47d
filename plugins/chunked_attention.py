"""Chunked attention: the text is cut into chunks of ``chunk_size`` positions and a query sees only
the keys of its own chunk, up to itself (Llama 4's ``attention_chunk_size`` on its RoPE layers).

It is ``sdpa`` with chunks: the same params and options (plugins/attention.py) plus ``chunk_size``,
and the same state-dict layout, so weights move between them.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from gptzoo.core import AttentionContext, LayerCache
from gptzoo.plugins.attention import AttentionParams
from gptzoo.plugins.sliding_window import RingCachedAttention, WindowCache
from gptzoo.registry import hookimpl


class ChunkedParams(AttentionParams):
    chunk_size: int = Field(
        32,
        ge=1,
        description="positions per chunk: a query sees the keys from its chunk's first position up to itself. "
        "Chunks count real tokens, so a left-padded row is chunked as it is alone (Llama 4: 8192)",
    )


class ChunkedAttention(RingCachedAttention):
    """Causal attention within chunks of ``chunk_size`` positions (Llama 4's chunked local layers).

    A chunk is not a sliding window: the first query of a chunk sees itself only, the last one the
    whole chunk, so its ``receptive_field`` is None (the kit's sliding-window check would not
    apply) while its cache is bounded: a ring of the latest ``chunk_size`` keys and values, which
    always holds the current chunk (``cache_window``). Training without padding runs each chunk
    as its own causal SDPA call, batched over the chunks; everything else (padding, a score bias,
    the cache, inspection) takes one call with a mask that is causal, within the ring's keys and
    within the query's chunk. Compiled decoding (a static cache, ``generate --compile``) writes a
    ring at no Python offset: it keeps every key and value instead, as ``sdpa`` does, the chunks a
    mask over them, so the memory saving of the ring is given up there. Its FLOPs count the whole
    chunk, as a window's count the window, though a query sees (chunk_size + 1) / 2 keys on average.
    """

    Params = ChunkedParams
    equivalent_to = None

    @classmethod
    def cache_window(cls, params: ChunkedParams) -> int:
        return params.chunk_size

    @classmethod
    def kit_lengths(cls, params: ChunkedParams) -> tuple[int, ...]:
        return (2 * params.chunk_size + 3,)  # into a third chunk

    def forward(self, x: Tensor, ctx: AttentionContext, cache: LayerCache | None = None) -> Tensor:
        if ctx.static:  # every slot of a static cache (or the keys an earlier layer shares), the chunks a mask
            q, k, v = self.project(x, ctx, cache)
            ctx.share_kv(self.dims.layer_idx, k, v)
            return self.merge(self.attend(q, k, v, self._chunk_bias(ctx, q.dtype, 0), ctx), x)
        cache = cast(WindowCache | None, cache)
        # (B, nh, T, hs), (B, nkv, T, hs) x2: the new tokens only (or the keys and values an earlier layer shares)
        q, k, v = self.project(x, ctx, None)
        C, T = self.params.chunk_size, q.size(2)
        if cache is not None and ctx.offset:
            first = ctx.offset - min(ctx.offset, C - 1)  # earlier keys the new ones may still share a chunk with
            kept = cache.slots(first, ctx.offset)
            k = torch.cat([cache.k[:, :, kept].to(k.dtype), k], dim=2)  # (B, nkv, kept + T, hs)
            v = torch.cat([cache.v[:, :, kept].to(v.dtype), v], dim=2)
        ctx.share_kv(self.dims.layer_idx, k, v)
        if ctx.is_causal and cache is None and not ctx.capturing:
            return self.merge(self._chunks(q, k, v, ctx), x)
        y = self.attend(q, k, v, self._chunk_bias(ctx, q.dtype, ctx.offset + T - k.size(2)), ctx)
        if cache is not None:
            n = min(T, cache.k.size(2))
            slots = cache.slots(ctx.offset + T - n, ctx.offset + T)
            cache.k[:, :, slots] = k[:, :, -n:].to(cache.k.dtype)
            cache.v[:, :, slots] = v[:, :, -n:].to(cache.v.dtype)
        return self.merge(y, x)

    def _chunk_bias(self, ctx: AttentionContext, dtype: torch.dtype, first: int) -> Tensor:
        """The context's mask for key slots first.. (causal, padding, score bias), -inf also where a
        key lies in another chunk than the query: (B|1, nh|1, T, Tk - first)."""
        C = self.params.chunk_size
        key_positions = ctx.key_positions[:, first - ctx.key_origin :]  # (B|1, Tk - first)
        same_chunk = (key_positions // C)[:, None, :] == (ctx.positions // C)[:, :, None]  # (B|1, T, Tk - first)
        chunk_bias = torch.zeros(same_chunk.shape, dtype=dtype, device=same_chunk.device)
        chunk_bias = chunk_bias.masked_fill(~same_chunk, float("-inf")).unsqueeze(1)  # (B|1, 1, T, Tk - first)
        bias = ctx.bias(dtype, first_key=first)
        return chunk_bias if bias is None else bias + chunk_bias

    def _chunks(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext) -> Tensor:
        """Causal attention within each chunk of C positions, the chunks batched: (B, nh, T, vs)."""
        B, nh, T, _ = q.shape
        C = self.params.chunk_size
        n_chunks = -(-T // C)
        pad = n_chunks * C - T  # padded positions come last and are dropped; causality keeps them unseen
        q, k, v = (F.pad(t, (0, 0, 0, pad)).unflatten(2, (n_chunks, C)).transpose(1, 2) for t in (q, k, v))
        y = self.attend(q, k, v, None, ctx, is_causal=True)  # (B, n_chunks, nh, C, hs)
        return y.transpose(1, 2).reshape(B, nh, n_chunks * C, -1)[:, :, :T]


@hookimpl
def register_components(register):
    register("attention", "chunked", ChunkedAttention)
