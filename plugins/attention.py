"""Causal self-attention, three ways to compute the same function:

- ``per_head``: independent single-head modules side by side, concatenated (the teaching form)
- ``fused``: one QKV projection split into heads, explicit mask and softmax
- ``sdpa``: the fused projection with torch's scaled_dot_product_attention (flash/memory-efficient kernels)

and ``no_weights``, the book's first, parameter-free attention (another function, for teaching).

All share one state-dict layout (see gptzoo.core.Attention), so weights move between them.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gptzoo.core import Attention, AttentionContext, Dims, LayerCache, Params
from gptzoo.registry import hookimpl


def _softmax_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, dropout: nn.Dropout) -> Tensor:
    """q (B, h, T, hs), k and v (B, h, Tk, hs) -> (B, h, T, hs), written out step by step."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, h, T, Tk)
    if bias is not None:
        scores = scores + bias
    weights = dropout(torch.softmax(scores.float(), dim=-1).to(q.dtype))
    return weights @ v


class FusedAttention(Attention):
    equivalent_to = "sdpa"

    def __init__(self, params: Params, dims: Dims):
        super().__init__(params, dims)
        self.n_heads, self.n_kv_heads, self.head_size = dims.n_heads, dims.n_kv_heads, dims.head_size
        self.qkv = nn.Linear(dims.d_model, (dims.n_heads + 2 * dims.n_kv_heads) * dims.head_size, bias=dims.qkv_bias)
        self.out_proj = nn.Linear(dims.n_heads * dims.head_size, dims.d_model, bias=dims.attn_out_bias)
        self.attn_dropout = nn.Dropout(dims.dropout)

    def project(self, x: Tensor, ctx: AttentionContext, cache: LayerCache | None) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, C) -> q (B, nh, T, hs), k and v (B, nkv, Tk, hs), rotated and cached."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split([self.n_heads * self.head_size, self.n_kv_heads * self.head_size, self.n_kv_heads * self.head_size], dim=-1)
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

    def forward(self, x: Tensor, ctx: AttentionContext, cache: LayerCache | None = None) -> Tensor:
        q, k, v = self.project(x, ctx, cache)
        groups = self.n_heads // self.n_kv_heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)  # (B, nh, Tk, hs)
        return self.merge(_softmax_attention(q, k, v, ctx.bias(q.dtype), self.attn_dropout))


class SDPAAttention(FusedAttention):
    def forward(self, x: Tensor, ctx: AttentionContext, cache: LayerCache | None = None) -> Tensor:
        q, k, v = self.project(x, ctx, cache)
        y = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=None if ctx.is_causal else ctx.bias(q.dtype),
            dropout_p=self.dims.dropout if self.training else 0.0,
            is_causal=ctx.is_causal,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )  # (B, nh, T, hs)
        return self.merge(y)


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

    equivalent_to = "sdpa"

    def __init__(self, params: Params, dims: Dims):
        super().__init__(params, dims)
        self.group = dims.n_heads // dims.n_kv_heads
        self.queries = nn.ModuleList(SingleHead(dims.d_model, dims.head_size, dims.qkv_bias, ("query",)) for _ in range(dims.n_heads))
        self.kv_heads = nn.ModuleList(SingleHead(dims.d_model, dims.head_size, dims.qkv_bias, ("key", "value")) for _ in range(dims.n_kv_heads))
        self.out_proj = nn.Linear(dims.n_heads * dims.head_size, dims.d_model, bias=dims.attn_out_bias)
        self.attn_dropout = nn.Dropout(dims.dropout)
        self._register_state_dict_hook(_stack_heads)
        self._register_load_state_dict_pre_hook(_split_heads, with_module=True)

    def forward(self, x: Tensor, ctx: AttentionContext, cache: LayerCache | None = None) -> Tensor:
        q = torch.stack([h.query(x) for h in self.queries], dim=1)  # (B, nh, T, hs)
        k = torch.stack([h.key(x) for h in self.kv_heads], dim=1)  # (B, nkv, T, hs)
        v = torch.stack([h.value(x) for h in self.kv_heads], dim=1)  # (B, nkv, T, hs)
        q, k = ctx.rotate(q, k)
        if cache is not None:
            k, v = cache.update(k, v, ctx.offset)  # (B, nkv, Tk, hs)
        bias = ctx.bias(q.dtype)
        outputs = []
        for h in range(q.size(1)):
            kv = h // self.group
            head_bias = None if bias is None else bias[:, h : h + 1] if bias.size(1) > 1 else bias
            outputs.append(_softmax_attention(q[:, h : h + 1], k[:, kv : kv + 1], v[:, kv : kv + 1], head_bias, self.attn_dropout))
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
            for key, part in zip(_per_head_keys(module, suffix), fused.split(module.dims.head_size)):
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
            raise ValueError(f"keys and values are the input's own heads, so n_kv_heads must equal n_heads ({dims.n_heads}), got {dims.n_kv_heads}")
        if dims.n_heads * dims.head_size != dims.d_model:
            raise ValueError(f"n_heads × head size must equal d_model ({dims.d_model}): the heads are slices of the input")

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
        weights = self.attn_dropout(torch.softmax(scores.float(), dim=-1).to(q.dtype))
        return (weights @ v).transpose(1, 2).reshape(B, T, C)  # (B, T, C)


@hookimpl
def register_components(register):
    register("attention", "per_head", PerHeadAttention)
    register("attention", "fused", FusedAttention)
    register("attention", "sdpa", SDPAAttention)
    register("attention", "no_weights", NoWeightsAttention)
