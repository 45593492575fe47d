"""A sliding-window attention written as a third-party plugin would write it, from docs/extending.md alone.

Each query sees its latest ``window`` keys (itself included). Decoding keeps only the last
``window - 1`` keys and values, the most a later token can see, so the cache's memory stays
bounded however long the text grows; ``cache_bytes`` tells ``describe`` so.
"""

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from gptzoo.core import Attention, AttentionContext, Dims, LayerCache, Params
from gptzoo.registry import hookimpl


class WindowParams(Params):
    window: int = Field(8, ge=2)


class WindowCache(LayerCache):
    """The latest window - 1 keys and values: (B, nkv, window - 1, hs) each."""

    def __init__(self, batch_size: int, n_kv_heads: int, window: int, head_size: int, device, dtype):
        self.k = torch.zeros(batch_size, n_kv_heads, window - 1, head_size, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.filled = 0

    def extend(self, k: Tensor, v: Tensor, offset: int) -> tuple[Tensor, Tensor, int]:
        """Kept + new keys and values (B, nkv, filled + T, hs) and the slot of the first of them."""
        keys = torch.cat([self.k[:, :, : self.filled].to(k.dtype), k], dim=2)
        values = torch.cat([self.v[:, :, : self.filled].to(v.dtype), v], dim=2)
        first_key = offset - self.filled
        self.filled = min(self.k.size(2), keys.size(2))
        self.k[:, :, : self.filled] = keys[:, :, keys.size(2) - self.filled :]
        self.v[:, :, : self.filled] = values[:, :, values.size(2) - self.filled :]
        return keys, values, first_key


class WindowAttention(Attention):
    Params = WindowParams
    cache_kind = "window"  # the cache keeps window - 1 keys and values, however long the text

    @classmethod
    def receptive_field(cls, params: WindowParams) -> int:
        return params.window

    def __init__(self, params: WindowParams, dims: Dims):
        super().__init__(params, dims)
        self.sizes = [dims.n_heads * dims.head_size, dims.n_kv_heads * dims.head_size, dims.n_kv_heads * dims.head_size]
        self.qkv = nn.Linear(dims.d_model, sum(self.sizes), bias=dims.qkv_bias)
        self.out_proj = nn.Linear(dims.n_heads * dims.head_size, dims.d_model, bias=dims.attn_out_bias)

    def forward(self, x: Tensor, ctx: AttentionContext, cache: WindowCache | None = None) -> Tensor:
        B, T, _ = x.shape
        hs = self.dims.head_size
        q, k, v = self.qkv(x).split(self.sizes, dim=-1)
        q = q.view(B, T, -1, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, -1, hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, -1, hs).transpose(1, 2)  # (B, nkv, T, hs)
        q, k = ctx.rotate(q, k)
        first_key = 0
        if cache is not None:
            k, v, first_key = cache.extend(k, v, ctx.offset)  # (B, nkv, kept + T, hs)
        mask = ctx.bias(q.dtype, window=self.params.window, first_key=first_key)  # (B|1, nh|1, T, kept + T)
        if ctx.capturing:  # inspection wants the weights, which SDPA never forms
            k, v = (t.repeat_interleave(q.size(1) // t.size(1), dim=1) for t in (k, v))  # (B, nh, Tk, hs)
            scores = q @ k.transpose(-2, -1) / hs**0.5  # (B, nh, T, Tk)
            weights = torch.softmax(scores if mask is None else scores + mask, dim=-1)
            ctx.record(weights)
            y = weights @ v
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dims.dropout if self.training else 0.0, enable_gqa=True
            )
        return self.out_proj(y.transpose(1, 2).reshape(B, T, -1))  # (B, T, C)

    def new_cache(self, batch_size: int, max_len: int | None, device, dtype) -> WindowCache:
        return WindowCache(batch_size, self.dims.n_kv_heads, self.params.window, self.dims.head_size, device, dtype)

    def cache_bytes(self, n_tokens: int, dtype: torch.dtype = torch.float32) -> int:
        kept = min(n_tokens, self.params.window - 1)
        return 2 * self.dims.n_kv_heads * self.dims.head_size * kept * torch.empty((), dtype=dtype).element_size()


@hookimpl
def register_components(register):
    register("attention", "window", WindowAttention)
