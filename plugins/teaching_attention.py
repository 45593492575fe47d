"""Two attentions for teaching:

- ``per_head``: independent single-head modules side by side, concatenated; the same function as
  ``fused`` and ``sdpa`` (plugins/attention.py) with the same params and state-dict layout, so
  weights move between them
- ``no_weights``: the book's first, parameter-free attention (another function)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from gptzoo.core import Attention, AttentionContext, Dims, LayerCache, Params
from gptzoo.core.interfaces import Inspection
from gptzoo.plugins.attention import (
    AttentionParams,
    QKNorm,
    attention_weights,
    gated,
    output_gate,
    query_temperature,
    value_norm,
)
from gptzoo.registry import hookimpl


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
    static_cache = True

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
        self.gate_proj = output_gate(params, dims)
        self.out_proj = nn.Linear(dims.n_heads * dims.head_size, dims.d_model, bias=dims.attn_out_bias)
        self.attn_dropout = nn.Dropout(dims.dropout)
        self.sinks = nn.Parameter(torch.zeros(dims.n_heads)) if params.sinks else None
        self._register_state_dict_hook(_stack_heads)
        self._register_load_state_dict_pre_hook(_split_heads, with_module=True)

    @classmethod
    def declared_inspection(cls, params: AttentionParams) -> Inspection:
        return "partial_probabilities" if params.sinks else cls.inspection

    @classmethod
    def check(cls, params: AttentionParams, dims: Dims) -> None:
        if params.shared_key_value or params.v_head_size is not None:
            raise ValueError(
                "per_head gives each key/value head a key and a value of the head size: shared_key_value and "
                "v_head_size need sdpa, fused, sliding_window or chunked"
            )

    def forward(self, x: Tensor, ctx: AttentionContext, cache: LayerCache | None = None) -> Tensor:
        q = torch.stack([h.query(x) for h in self.queries], dim=1)  # (B, nh, T, hs)
        k = torch.stack([h.key(x) for h in self.kv_heads], dim=1)  # (B, nkv, T, hs)
        v = torch.stack([h.value(x) for h in self.kv_heads], dim=1)  # (B, nkv, T, hs)
        if self.qk_norm is not None:
            q, k = (t.transpose(1, 2).flatten(2) for t in (q, k))  # (B, T, h·hs): the layout the norm reads
            q, k = self.qk_norm(q, k)
            q, k = (t.unflatten(-1, (-1, self.dims.head_size)).transpose(1, 2) for t in (q, k))  # (B, h, T, hs)
        if self.params.v_norm:
            v = value_norm(v, self.params.qk_norm_eps)
        if self.params.value_scale != 1.0:
            v = v * self.params.value_scale
        q, k = ctx.rotate(q, k)
        q = query_temperature(q, ctx.positions, self.params)
        if cache is not None:
            k, v = cache.update(k, v, ctx.offset)  # (B, nkv, Tk, hs)
        bias = ctx.bias(q.dtype)
        weights, outputs = [], []
        for h in range(q.size(1)):
            kv = h // self.group
            head_bias = None if bias is None else bias[:, h : h + 1] if bias.size(1) > 1 else bias
            sink = None if self.sinks is None else self.sinks[h : h + 1]
            weights.append(
                attention_weights(q[:, h : h + 1], k[:, kv : kv + 1], head_bias, self.scale, self.params.softcap, sink)
            )  # (B, 1, T, Tk)
            outputs.append(self.attn_dropout(weights[-1]) @ v[:, kv : kv + 1])  # (B, 1, T, hs)
        if ctx.capturing:
            ctx.record(torch.cat(weights, dim=1))  # (B, nh, T, Tk)
        y = torch.cat(outputs, dim=1).transpose(1, 2).flatten(2)  # (B, T, nh*hs)
        return self.out_proj(gated(y, self.gate_proj, x))


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

    static_cache = True

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
    register("attention", "no_weights", NoWeightsAttention)
