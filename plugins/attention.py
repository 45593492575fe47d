"""Causal self-attention through one fused QKV projection, computed two ways:

- ``fused``: the projection split into heads, explicit mask and softmax
- ``sdpa``: the same with torch's scaled_dot_product_attention (flash/memory-efficient kernels)

Both share one state-dict layout (see gptzoo.core.Attention), and the options here: QK-norm
(``qk_norm``), the score scale (``scale``), soft-capping (``softcap``), a sigmoid gate on the
output (``output_gate``), attention sinks (``sinks``), a value norm (``v_norm``) and Llama 4's query
temperature (``query_temperature_floor_scale``), one projection for keys and values
(``shared_key_value``) and a value head size of its own (``v_head_size``). The other attentions
build on these pieces: the sliding window (plugins/sliding_window.py), the teaching forms
(plugins/teaching_attention.py) and multi-head latent attention (plugins/latent_attention.py).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from gptzoo.core import Attention, AttentionContext, Dims, LayerCache, Params
from gptzoo.core.cache import KVLayerCache
from gptzoo.core.interfaces import Inspection
from gptzoo.registry import hookimpl


class AttentionParams(Params):
    qk_norm: Literal["none", "per_head", "across_heads"] = Field(
        "none",
        description="RMSNorm on queries and keys before the scores (and before rotary): per_head over each head's "
        "head_size features, one weight shared by the heads (Qwen3, Gemma 3); across_heads over all heads' features "
        "together, nh·hs query and nkv·hs key weights (OLMo 2)",
    )
    qk_norm_eps: float = Field(1e-6, gt=0, description="eps of the QK-norm and of the value norm")
    qk_norm_unit_offset: bool = Field(
        False,
        description="QK-norm scales by (1 + weight), the weight starting at 0, in float32 (Gemma 3's q_norm and k_norm)",
    )
    qk_norm_weight: bool = Field(
        True,
        description="false: the QK-norm has no weight and normalises in float32 (Llama 4's L2 norm, which is an "
        "RMSNorm of each head; nanochat's per-head RMSNorm)",
    )
    v_norm: bool = Field(
        False,
        description="RMSNorm without a weight on each head's values, in float32, before the cache (Gemma 3n, Gemma 4)",
    )
    query_temperature_floor_scale: float | None = Field(
        None,
        gt=0,
        description="Llama 4's query temperature on its NoPE layers (attn_temperature_tuning): queries scaled by "
        "log1p(floor((p + 1) / floor_scale)) · query_temperature_scale + 1 at position p, after the QK-norm; "
        "None: off. Llama 4: 8192",
    )
    query_temperature_scale: float = Field(0.1, description="Llama 4's attn_scale (see query_temperature_floor_scale)")
    shared_key_value: bool = Field(
        False,
        description="one projection gives the keys and the values (Gemma 4's global layers, attention_k_eq_v): the "
        "values are the key projection as it leaves qkv, before the QK-norm and rotary (then v_norm, if on); "
        "qkv.weight holds (nh + nkv)·hs rows [query heads | key heads]. Both are still cached",
    )
    v_head_size: int | None = Field(
        None,
        ge=1,
        description="each value head's size where it differs from the query and key heads' (MiMo-V2-Flash's "
        "v_head_dim): qkv.weight holds nh·hs + nkv·hs + nkv·v_head_size rows and out_proj reads nh·v_head_size; "
        "None: the head size",
    )
    value_scale: float = Field(
        1.0,
        gt=0,
        description="multiplies the values as they leave qkv (after v_norm, if on), before the cache (MiMo-V2-Flash's "
        "attention_value_scale: 0.707); 1: unscaled",
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
    output_gate: Literal["none", "elementwise", "per_head"] = Field(
        "none",
        description="a sigmoid gate between attention and out_proj, read from the layer's input x: y · σ(x·Wg + bg). "
        "elementwise: one gate per output feature, nh·hs (Qwen3-Next); per_head: one per head, nh (Qiu et al., 2025's "
        "head-wise gate). Its weight is gate_proj.weight (nh·hs or nh, C), with gate_proj.bias when qkv_bias; "
        "Qwen3-Next stores it inside q_proj, each head's query rows followed by its gate rows",
    )
    sinks: bool = Field(
        False,
        description="a learned logit per head added to the softmax's denominator, carrying no value, so a query may "
        "attend to nothing (gpt-oss, MiMo-V2-Flash): its weight is sinks (nh,), starting at 0, and the probabilities "
        "inspection reports then sum to less than 1. sdpa stays on SDPA's kernels (see sdpa_with_sinks)",
    )

    @model_validator(mode="after")
    def _norm_options_need_a_norm(self) -> AttentionParams:
        if not self.qk_norm_weight and self.qk_norm_unit_offset:
            raise ValueError("qk_norm_unit_offset scales by 1 + weight: it needs qk_norm_weight = true")
        if self.shared_key_value and self.v_head_size is not None:
            raise ValueError("shared_key_value makes the values the keys, as wide as they are: leave v_head_size unset")
        return self


def attention_weights(
    q: Tensor, k: Tensor, bias: Tensor | None, scale: float, softcap: float | None, sinks: Tensor | None = None
) -> Tensor:
    """q (..., h, T, hs), k (..., h, Tk, hs) -> the attention probabilities (..., h, T, Tk), written out step by step.

    With ``sinks`` (h,), each head's sink logit joins the softmax as one more score with no value:
    the probabilities of the keys then sum to less than 1."""
    scores = q @ k.transpose(-2, -1) * scale  # (..., h, T, Tk)
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if bias is not None:
        scores = scores + bias
    if sinks is None:
        return torch.softmax(scores.float(), dim=-1).to(q.dtype)
    sink = sinks.float().view(-1, 1, 1).expand(*scores.shape[:-1], 1)  # (..., h, T, 1)
    return torch.softmax(torch.cat([scores.float(), sink], dim=-1), dim=-1)[..., :-1].to(q.dtype)


def max_logit(q: Tensor, k: Tensor, bias: Tensor | None, scale: float) -> Tensor:
    """The largest logit q·k·scale over the (query, key) pairs ``bias`` allows (finite there), before the
    bias and any soft-capping: q (..., nh, T, hs), k (..., nkv, Tk, hs) with nkv dividing nh."""
    k = k.repeat_interleave(q.size(-3) // k.size(-3), dim=-3)  # (..., nh, Tk, hs)
    scores = (q @ k.transpose(-2, -1)).float() * scale  # (..., nh, T, Tk)
    if bias is not None:
        scores = scores.masked_fill(~torch.isfinite(bias), float("-inf"))
    return scores.amax()


def sdpa_with_sinks(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: Tensor | None,
    sinks: Tensor,
    scale: float,
    dropout_p: float,
    is_causal: bool,
    enable_gqa: bool,
) -> Tensor:
    """SDPA whose softmax also counts each head's sink logit, exactly, on SDPA's own kernels.

    SDPA has no hook for a sink, so it becomes one more key, first, that every query sees, with a
    zero value and the score sinks[h] against every query of head h. That score comes from one more
    feature: the queries carry sinks[h] / scale there, the sink key 1 and the other keys 0 (so it
    works for grouped keys too); q, k and v get zero features up to one width, since fused kernels
    want them equally wide. A causal call also gets one query first that sees only the sink, so
    SDPA's top-left causal mask still lets query t see keys 0..t.
    q and k (..., nh|nkv, T|Tk, hs), v (..., nkv, Tk, vs), bias (..., T, Tk) or None -> (..., nh, T, vs).
    """
    hs, vs = q.size(-1), v.size(-1)
    width = max(hs + 1, vs)  # one width for q, k and v
    sink_feature = (sinks / scale).to(q.dtype).view(-1, 1, 1).expand(*q.shape[:-1], 1)  # (..., nh, T, 1)
    q = F.pad(torch.cat([q, sink_feature], dim=-1), (0, width - hs - 1))  # (..., nh, T, width)
    if is_causal:
        q = F.pad(q, (0, 0, 1, 0))  # (..., nh, 1 + T, width)
    sink_key = torch.zeros(*k.shape[:-2], 1, width, dtype=k.dtype, device=k.device)
    sink_key[..., hs] = 1.0
    k = torch.cat([sink_key, F.pad(k, (0, width - hs))], dim=-2)  # (..., nkv, 1 + Tk, width)
    v = F.pad(v, (0, width - vs, 1, 0))  # (..., nkv, 1 + Tk, width), the sink's value zero
    if bias is not None:
        bias = F.pad(bias, (1, 0))  # every query sees the sink
    y = F.scaled_dot_product_attention(
        q, k, v, attn_mask=bias, dropout_p=dropout_p, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa
    )
    return y[..., 1:, :vs] if is_causal else y[..., :vs]


class QKNorm(nn.Module):
    """RMSNorm of the queries and keys as they leave the projection: (B, T, h·hs) each (queries only
    in a layer that attends with an earlier layer's keys)."""

    def __init__(self, params: AttentionParams, dims: Dims):
        super().__init__()
        self.per_head = params.qk_norm == "per_head"
        self.head_size, self.eps, self.unit_offset = dims.head_size, params.qk_norm_eps, params.qk_norm_unit_offset
        self.q_norm: nn.Parameter | None = None
        self.k_norm: nn.Parameter | None = None
        if params.qk_norm_weight:
            q_size, k_size = (1, 1) if self.per_head else (dims.n_heads, dims.n_kv_heads)
            start = torch.zeros if self.unit_offset else torch.ones
            self.q_norm = nn.Parameter(start(q_size * dims.head_size))
            if dims.kv_from is None:
                self.k_norm = nn.Parameter(start(k_size * dims.head_size))

    def _norm(self, x: Tensor, weight: Tensor | None) -> Tensor:
        if weight is None:
            return self._rms(x.float(), None).to(x.dtype)
        if self.unit_offset:
            return self._rms(x.float(), 1.0 + weight.float()).to(x.dtype)
        return self._rms(x, weight)

    def _rms(self, x: Tensor, weight: Tensor | None) -> Tensor:
        if self.per_head:
            return F.rms_norm(x.unflatten(-1, (-1, self.head_size)), (self.head_size,), weight, self.eps).flatten(-2)
        return F.rms_norm(x, (x.size(-1),), weight, self.eps)

    def forward(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        return self._norm(q, self.q_norm), self._norm(k, self.k_norm)

    def queries(self, q: Tensor) -> Tensor:
        return self._norm(q, self.q_norm)


def value_norm(v: Tensor, eps: float) -> Tensor:
    """v (..., hs) -> each head's values over their RMS, in float32, with no weight (Gemma 3n's v_norm)."""
    return F.rms_norm(v.float(), (v.size(-1),), None, eps).to(v.dtype)


def query_temperature(q: Tensor, positions: Tensor, params: AttentionParams) -> Tensor:
    """q (B, nh, T, hs) times Llama 4's temperature at each token's position (B|1, T), or q as it is."""
    if params.query_temperature_floor_scale is None:
        return q
    floors = torch.floor((positions.float() + 1.0) / params.query_temperature_floor_scale)
    scales = torch.log1p(floors) * params.query_temperature_scale + 1.0  # (B|1, T)
    return (q * scales[:, None, :, None]).to(q.dtype)


def output_gate(params: AttentionParams, dims: Dims) -> nn.Linear | None:
    """The projection of the output gate (``gate_proj``), or None without one."""
    if params.output_gate == "none":
        return None
    n_gates = (
        dims.n_heads * (params.v_head_size or dims.head_size) if params.output_gate == "elementwise" else dims.n_heads
    )
    return nn.Linear(dims.d_model, n_gates, bias=dims.qkv_bias)


def gated(y: Tensor, gate_proj: nn.Linear | None, x: Tensor | None) -> Tensor:
    """y (B, T, nh·hs), the heads' outputs side by side, times σ(gate_proj(x)) per feature or per head."""
    if gate_proj is None:
        return y
    assert x is not None, "the output gate reads the layer's input: pass x"
    gate = torch.sigmoid(gate_proj(x))  # (B, T, nh·hs) or (B, T, nh)
    if gate.size(-1) == y.size(-1):
        return y * gate
    return (y.unflatten(-1, (gate.size(-1), -1)) * gate.unsqueeze(-1)).flatten(-2)


class FusedAttention(Attention):
    """Softmax attention through one fused QKV projection, with the options of ``AttentionParams``.

    In a layer that attends with an earlier layer's keys and values (``kv_shared_layers``), ``qkv``
    holds the query rows alone and the layer keeps no cache."""

    Params = AttentionParams
    equivalent_to = "sdpa"
    kv_sharing = True
    static_cache = True
    measurements = frozenset({"max_logit"})

    def __init__(self, params: AttentionParams, dims: Dims):
        super().__init__(params, dims)
        self.n_heads, self.n_kv_heads, self.head_size = dims.n_heads, dims.n_kv_heads, dims.head_size
        self.v_size = params.v_head_size or dims.head_size
        self.scale = params.scale or 1 / math.sqrt(dims.head_size)
        self.qkv_sizes = [dims.n_heads * dims.head_size]
        if dims.kv_from is None:
            self.qkv_sizes.append(dims.n_kv_heads * dims.head_size)
        if dims.kv_from is None and not params.shared_key_value:
            self.qkv_sizes.append(dims.n_kv_heads * self.v_size)
        self.qkv = nn.Linear(dims.d_model, sum(self.qkv_sizes), bias=dims.qkv_bias)
        self.qk_norm = QKNorm(params, dims) if params.qk_norm != "none" else None
        self.gate_proj = output_gate(params, dims)
        self.out_proj = nn.Linear(dims.n_heads * self.v_size, dims.d_model, bias=dims.attn_out_bias)
        self.attn_dropout = nn.Dropout(dims.dropout)
        self.sinks = nn.Parameter(torch.zeros(dims.n_heads)) if params.sinks else None

    @classmethod
    def declared_inspection(cls, params: AttentionParams) -> Inspection:
        return "partial_probabilities" if params.sinks else cls.inspection

    def new_cache(self, batch_size: int, max_len: int | None, device: torch.device, dtype: torch.dtype) -> LayerCache:
        assert max_len is not None, "a cache of every key and value needs a length"
        return KVLayerCache(batch_size, self.n_kv_heads, max_len, self.head_size, device, dtype, self.v_size)

    def cache_bytes(self, n_tokens: int, dtype: torch.dtype = torch.float32) -> int:
        return self.kv_bytes_per_token(dtype) * n_tokens

    def kv_bytes_per_token(self, dtype: torch.dtype) -> int:
        """Bytes one token's keys and values take in this layer's cache (none where it reads another's)."""
        if self.dims.kv_from is not None:
            return 0
        return self.n_kv_heads * (self.head_size + self.v_size) * torch.empty((), dtype=dtype).element_size()

    def flops_per_token(self, context_length: int) -> int:
        # Projections plus q·k (head_size wide) and the weighted values (v_size wide) against each key.
        projections = sum(2 * m.weight.numel() for m in self.owned_modules() if isinstance(m, nn.Linear))
        return projections + 2 * self.n_heads * (self.head_size + self.v_size) * context_length

    def project(self, x: Tensor, ctx: AttentionContext, cache: LayerCache | None) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, C) -> q (B, nh, T, hs), k (B, nkv, Tk, hs) and v (B, nkv, Tk, vs), normalised, rotated and cached
        (k and v: the earlier layer's, in a layer that reads them)."""
        if self.dims.kv_from is not None:
            q, (k, v) = self._queries(x, ctx), ctx.shared_kv(self.dims.kv_from)
        else:
            q, k, v = self._own_keys(x, ctx, cache)
        if ctx.measuring:
            window = type(self).receptive_field(self.params)
            ctx.measure("max_logit", max_logit(q, k, ctx.bias(q.dtype, window), self.scale))
        return q, k, v

    def _own_keys(self, x: Tensor, ctx: AttentionContext, cache: LayerCache | None) -> tuple[Tensor, Tensor, Tensor]:
        """``project`` in a layer with its own keys and values."""
        B, T, _ = x.shape
        q, k, *rest = self.qkv(x).split(self.qkv_sizes, dim=-1)
        v = rest[0] if rest else k  # shared_key_value: the keys as projected, before their norm and rotation
        if self.qk_norm is not None:
            q, k = self.qk_norm(q, k)
        q = q.view(B, T, self.n_heads, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_heads, self.head_size).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.reshape(B, T, self.n_kv_heads, self.v_size).transpose(1, 2)  # (B, nkv, T, vs)
        if self.params.v_norm:
            v = value_norm(v, self.params.qk_norm_eps)
        if self.params.value_scale != 1.0:
            v = v * self.params.value_scale
        q, k = ctx.rotate(q, k)
        q = query_temperature(q, ctx.positions, self.params)
        if cache is not None:
            k, v = cache.update(k, v, ctx.offset)  # (B, nkv, Tk, hs)
        return q, k, v

    def _queries(self, x: Tensor, ctx: AttentionContext) -> Tensor:
        """x (B, T, C) -> q (B, nh, T, hs) alone, normalised and rotated (the keys are another layer's)."""
        B, T, _ = x.shape
        q = self.qkv(x)
        if self.qk_norm is not None:
            q = self.qk_norm.queries(q)
        q = q.view(B, T, self.n_heads, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        q, _ = ctx.rotate(q, q[:, :0])  # no key heads to rotate
        return query_temperature(q, ctx.positions, self.params)

    def merge(self, y: Tensor, x: Tensor | None = None) -> Tensor:
        """y (B, nh, T, hs) -> (B, T, C): the heads side by side, gated (reading the layer's input x) and projected."""
        B, _, T, _ = y.shape
        return self.out_proj(gated(y.transpose(1, 2).reshape(B, T, -1), self.gate_proj, x))  # (B, T, C)

    def explicit(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, ctx: AttentionContext) -> Tensor:
        """q (..., nh, T, hs), k and v (..., nkv, Tk, hs) -> (..., nh, T, hs): every score in memory."""
        groups = self.n_heads // self.n_kv_heads
        k, v = k.repeat_interleave(groups, dim=-3), v.repeat_interleave(groups, dim=-3)  # (..., nh, Tk, hs)
        weights = attention_weights(q, k, bias, self.scale, self.params.softcap, self.sinks)  # (..., nh, T, Tk)
        ctx.record(weights)
        return self.attn_dropout(weights) @ v

    def forward(self, x: Tensor, ctx: AttentionContext, cache: LayerCache | None = None) -> Tensor:
        q, k, v = self.project(x, ctx, cache)
        ctx.share_kv(self.dims.layer_idx, k, v)
        return self.merge(self.explicit(q, k, v, ctx.bias(q.dtype), ctx), x)


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
        dropout_p, enable_gqa = self.dims.dropout if self.training else 0.0, self.n_kv_heads != self.n_heads
        if self.sinks is not None:
            return sdpa_with_sinks(q, k, v, bias, self.sinks, self.scale, dropout_p, is_causal, enable_gqa)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=dropout_p, is_causal=is_causal, scale=self.scale, enable_gqa=enable_gqa
        )  # (..., nh, T, hs)

    def forward(self, x: Tensor, ctx: AttentionContext, cache: LayerCache | None = None) -> Tensor:
        q, k, v = self.project(x, ctx, cache)
        ctx.share_kv(self.dims.layer_idx, k, v)
        return self.merge(self.attend(q, k, v, None if ctx.is_causal else ctx.bias(q.dtype), ctx, ctx.is_causal), x)


@hookimpl
def register_components(register):
    register("attention", "fused", FusedAttention)
    register("attention", "sdpa", SDPAAttention)
