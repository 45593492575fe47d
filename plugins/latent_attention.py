"""Multi-head latent attention (MLA, DeepSeek-V2 and V3): keys and values decompressed from one
small latent per token, which is all the decoding cache keeps, beside a rotary key shared by the heads.

Per token x (C features), with r = kv_lora_rank, dn = qk_nope_head_dim, dr = the model's
head_dim (DeepSeek's qk_rope_head_dim) and dv = v_head_dim:

    c      = RMSNorm(x W_DKV)                 (r)        the latent, cached
    k_rot  = RoPE(x W_KR)                     (dr)       one rotary key for every head, cached
    k_h    = [c W_UK_h, k_rot]                (dn + dr)  head h's key
    v_h    = c W_UV_h                         (dv)
    q_h    = [q_nope_h, RoPE(q_rot_h)]        (dn + dr)  from x, or from a latent of q_lora_rank

Rotary positions cannot pass through W_UK (a rotation between q and W_UK would not commute
with it), hence the separate rotary part. Its width is the model's ``head_dim``, because the
model's position scheme is built for that width and MLA applies it through ``ctx.rotate``
exactly as other variants do (DeepSeek's own config sets head_dim = qk_rope_head_dim, too).
Other schemes work as well: with ALiBi the bias comes through ``ctx.bias``; with learned,
sinusoidal or no positions the rotary part is left as it is, a key part shared by the heads.

Decoding absorbs the decompression into the query and output sides: q_h·k_h = (q_nope_h
W_UK_hᵀ)·c + q_rot_h·k_rot and Σ p·v_h = (Σ p·c) W_UV_hᵀ, so attention runs on the cached
latents directly, as one multi-query attention of width r + dr, instead of decompressing every
cached token at every step. Which path runs is chosen by counting multiply-adds for the shapes
at hand (absorbed for decoding, explicit for training and long prefills with the usual sizes).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from gptzoo.core import Attention, AttentionContext, Dims, LayerCache, Params
from gptzoo.plugins.attention import attention_weights
from gptzoo.registry import hookimpl


class LatentParams(Params):
    kv_lora_rank: int | None = Field(
        None, gt=0, description="width r of the cached latent; None: 8 × head_dim (DeepSeek-V2/V3: 512 = 8 × 64)"
    )
    q_lora_rank: int | None = Field(
        None,
        gt=0,
        description="queries through a latent of this width (DeepSeek-V2/V3: 1536); None: one projection from x (V2-Lite)",
    )
    qk_nope_head_dim: int | None = Field(
        None, gt=0, description="per-head query/key width without positions; None: 2 × head_dim (DeepSeek: 128)"
    )
    v_head_dim: int | None = Field(None, gt=0, description="per-head value width; None: 2 × head_dim (DeepSeek: 128)")
    scale: float | None = Field(
        None,
        gt=0,
        description="multiplies q·k; None: 1/sqrt(qk_nope_head_dim + head_dim) (DeepSeek-V3 with YaRN multiplies it by mscale²)",
    )


class LatentCache(LayerCache):
    """Each token's latent and rotary key side by side: (B, 1, max_len, r + dr), written in place."""

    def __init__(self, batch_size: int, max_len: int, width: int, device: torch.device, dtype: torch.dtype):
        self.kv = torch.zeros(batch_size, 1, max_len, width, device=device, dtype=dtype)

    def update(self, kv: Tensor, start: int | Tensor) -> Tensor:
        """Write kv (B, 1, T, r + dr) at slots start.. -> every token's so far (B, 1, start + T, r + dr); a tensor
        ``start`` (a static cache's) gives every slot, as ``KVLayerCache.update`` does."""
        if isinstance(start, Tensor):
            self.kv.index_copy_(2, start + torch.arange(kv.size(2), device=kv.device), kv.to(self.kv.dtype))
            return self.kv.to(kv.dtype)
        end = start + kv.size(2)
        self.kv[:, :, start:end] = kv
        return self.kv[:, :, :end].to(kv.dtype)


class LatentAttention(Attention):
    Params = LatentParams
    static_cache = True

    @classmethod
    def check(cls, params: LatentParams, dims: Dims) -> None:
        if dims.n_kv_heads != dims.n_heads:
            raise ValueError(
                f"every head decompresses its keys and values from one shared latent, so there are no key/value head "
                f"groups: leave n_kv_heads unset (got {dims.n_kv_heads} for n_heads={dims.n_heads})"
            )

    def __init__(self, params: LatentParams, dims: Dims):
        super().__init__(params, dims)
        nh, dr = dims.n_heads, dims.head_size
        self.rank = params.kv_lora_rank or 8 * dr
        self.nope = params.qk_nope_head_dim or 2 * dr
        self.value = params.v_head_dim or 2 * dr
        self.scale = params.scale or 1 / math.sqrt(self.nope + dr)
        q_width = nh * (self.nope + dr)
        if params.q_lora_rank is None:
            self.q_proj = nn.Linear(dims.d_model, q_width, bias=dims.qkv_bias)
        else:
            self.q_a_proj = nn.Linear(dims.d_model, params.q_lora_rank, bias=dims.qkv_bias)
            self.q_a_layernorm = nn.RMSNorm(params.q_lora_rank, eps=1e-6)
            self.q_b_proj = nn.Linear(params.q_lora_rank, q_width, bias=False)
        # Names follow DeepSeek's checkpoints (o_proj is out_proj here, as in every attention variant).
        self.kv_a_proj_with_mqa = nn.Linear(dims.d_model, self.rank + dr, bias=dims.qkv_bias)
        self.kv_a_layernorm = nn.RMSNorm(self.rank, eps=1e-6)
        self.kv_b_proj = nn.Linear(self.rank, nh * (self.nope + self.value), bias=False)
        self.out_proj = nn.Linear(nh * self.value, dims.d_model, bias=dims.attn_out_bias)

    def new_cache(self, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype) -> LatentCache:
        return LatentCache(batch_size, max_len, self.rank + self.dims.head_size, device, dtype)

    def cache_bytes(self, n_tokens: int, dtype: torch.dtype = torch.float32) -> int:
        return (self.rank + self.dims.head_size) * n_tokens * torch.empty((), dtype=dtype).element_size()

    def flops_per_token(self, context_length: int) -> int:
        # Projections (keys and values decompressed once per token, as training does), then
        # q·k over nope + rope dims and the weighted sum over v dims against every key.
        projections = sum(2 * m.weight.numel() for m in self.owned_modules() if isinstance(m, nn.Linear))
        return projections + 2 * self.dims.n_heads * (self.nope + self.dims.head_size + self.value) * context_length

    def forward(self, x: Tensor, ctx: AttentionContext, cache: LatentCache | None = None) -> Tensor:
        B, T, _ = x.shape
        nh, dr = self.dims.n_heads, self.dims.head_size
        q = self.q_proj(x) if self.params.q_lora_rank is None else self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q_nope, q_rot = (
            q.view(B, T, nh, self.nope + dr).transpose(1, 2).split([self.nope, dr], dim=-1)
        )  # (B, nh, T, dn), (B, nh, T, dr)
        latent, k_rot = self.kv_a_proj_with_mqa(x).split([self.rank, dr], dim=-1)  # (B, T, r), (B, T, dr)
        q_rot, k_rot = ctx.rotate(q_rot, k_rot.unsqueeze(1))  # (B, nh, T, dr), (B, 1, T, dr)
        kv = torch.cat([self.kv_a_layernorm(latent).unsqueeze(1), k_rot], dim=-1)  # (B, 1, T, r + dr)
        if cache is not None:
            kv = cache.update(kv, ctx.offset)  # (B, 1, Tk, r + dr)
        bias = None if ctx.is_causal else ctx.bias(q.dtype)
        attend = self.absorbed if self.absorbing_is_cheaper(T, kv.size(2)) else self.explicit
        y = attend(q_nope, q_rot, kv, bias, ctx.is_causal, ctx if ctx.capturing else None)  # (B, nh, T, dv)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, nh * self.value))  # (B, T, C)

    def absorbing_is_cheaper(self, T: int, Tk: int) -> bool:
        """Multiply-adds per head: explicit decompresses Tk latents, absorbed maps T queries and outputs."""
        d = self.nope + self.value
        explicit = Tk * self.rank * d + T * Tk * (self.nope + self.dims.head_size + self.value)
        absorbed = T * self.rank * d + T * Tk * (2 * self.rank + self.dims.head_size)
        return absorbed < explicit

    def _sdpa(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        bias: Tensor | None,
        is_causal: bool,
        capture: AttentionContext | None = None,
    ) -> Tensor:
        """q (B, nh, T, d), k (B, nh|1, Tk, d), v (B, nh|1, Tk, dv) -> (B, nh, T, dv). While
        inspecting, ``capture`` is the context to report the weights to; SDPA never forms them,
        so they are written out then (the same scores in both paths, so either reports the same)."""
        dropout = self.dims.dropout if self.training else 0.0
        if capture is not None:
            mask = capture.bias(q.dtype) if bias is None else bias  # None: causal, or one token alone
            weights = attention_weights(q, k, mask, self.scale, softcap=None)  # (B, nh, T, Tk)
            capture.record(weights)
            return F.dropout(weights, dropout, self.training) @ v
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=bias,
            is_causal=is_causal,
            scale=self.scale,
            dropout_p=dropout,
            enable_gqa=k.size(1) != q.size(1),
        )

    def explicit(
        self,
        q_nope: Tensor,
        q_rot: Tensor,
        kv: Tensor,
        bias: Tensor | None,
        is_causal: bool,
        capture: AttentionContext | None = None,
    ) -> Tensor:
        """Decompress every key and value, then attend: (B, nh, T, ·), kv (B, 1, Tk, r + dr) -> (B, nh, T, dv)."""
        B, nh, _, dr = q_rot.shape
        latent, k_rot = kv.split([self.rank, dr], dim=-1)  # (B, 1, Tk, r), (B, 1, Tk, dr)
        Tk = latent.size(2)
        k_nope, v = (
            self.kv_b_proj(latent)
            .view(B, Tk, nh, self.nope + self.value)
            .transpose(1, 2)
            .split([self.nope, self.value], dim=-1)
        )  # (B, nh, Tk, dn), (B, nh, Tk, dv)
        k = torch.cat([k_nope, k_rot.expand(B, nh, Tk, dr)], dim=-1)  # (B, nh, Tk, dn + dr)
        return self._sdpa(torch.cat([q_nope, q_rot], dim=-1), k, v, bias, is_causal, capture)

    def absorbed(
        self,
        q_nope: Tensor,
        q_rot: Tensor,
        kv: Tensor,
        bias: Tensor | None,
        is_causal: bool,
        capture: AttentionContext | None = None,
    ) -> Tensor:
        """Attend on the latents, with W_UK folded into the queries and W_UV applied after: same shapes as ``explicit``."""
        w_uk, w_uv = self.kv_b_proj.weight.view(self.dims.n_heads, self.nope + self.value, self.rank).split(
            [self.nope, self.value], dim=1
        )  # (nh, dn, r), (nh, dv, r)
        q = torch.cat([q_nope @ w_uk, q_rot], dim=-1)  # (B, nh, T, r + dr)
        if capture is not None:  # each head's weights, (B, nh, T, Tk): the heads stay apart
            return self._sdpa(q, kv, kv[..., : self.rank], bias, is_causal, capture) @ w_uv.transpose(1, 2)
        # All heads share the one latent "head": as rows of a single query they make attention one
        # matrix product over the latents (SDPA's grouped path would copy the latents once per head).
        B, nh, T, _ = q.shape
        Tk = kv.size(2)
        if is_causal:
            bias = torch.ones(T, Tk, dtype=torch.bool, device=q.device).tril(Tk - T)  # (T, Tk)
        if bias is not None:
            bias = bias.expand(B, nh, T, Tk).reshape(B, 1, nh * T, Tk)  # (B, 1, nh·T, Tk)
        y = self._sdpa(q.reshape(B, 1, nh * T, -1), kv, kv[..., : self.rank], bias, False)  # (B, 1, nh·T, r)
        return y.view(B, nh, T, self.rank) @ w_uv.transpose(1, 2)  # (B, nh, T, dv)


@hookimpl
def register_components(register):
    register("attention", "latent", LatentAttention)
