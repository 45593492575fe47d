"""DeepSeek Sparse Attention (DSA: DeepSeek-V3.2, GLM-5): multi-head latent attention in which each query
attends only to the ``index_topk`` keys a lightning indexer scores highest among the keys it may see.

The indexer, per token x with its query latent c_q (RMSNorm(x W_DQ); x itself where queries have no latent):

    q_j(t)  = RoPE(c_q W_IQ_j)                     (D)  for each of H index heads j
    k(s)    = RoPE(LayerNorm(x W_IK))              (D)  one key per token, cached beside the latent
    w_j(t)  = (x W_W)_j / sqrt(H)                       a weight per head and query
    I(t, s) = Σ_j w_j(t) · ReLU(q_j(t)·k(s) / sqrt(D))

RoPE turns the first head_dim features of q_j and k (the model's rotary width) in the pairs
``index_rope_layout`` names: DeepSeek-V3.2's indexer rotates halves where its attention rotates
interleaved pairs; GLM-5's rotates interleaved pairs in both. Query t attends to the ``index_topk`` keys
s ≤ t (padding aside) of largest I(t, s), to all of them while there are no more. Scores are compared at
12 significant bits and equal ones (ReLU's zeros make them common) go to the earlier key, so the keys
chosen do not depend on how long the row of scores is: a text run whole and one decoded through the
cache choose alike. (transformers' DeepSeek-V3.2
leaves ties to torch.topk, whose order among them changes with the row's length: its cached decoding
and its full forward then choose differently; tests/plugins/test_sparse_latent_attention.py shows it.)

Choosing is not differentiable, so the language-model loss does not reach the indexer. It learns from
its own loss, DeepSeek-V3.2's, reported as ``dsa_indexer`` whenever gradients are recorded: the KL
divergence from the attention's distribution over the chosen keys (summed over heads, renormalised,
held fixed) to the softmax of the indexer's scores over them, with the indexer's inputs detached so
that this loss trains the indexer alone (DeepSeek-V3.2's sparse stage; while every key is chosen it is
their dense warm-up's loss). It writes out each head's probabilities, as the eager path does.

GLM-5 may give some layers no indexer (``shared_index_layers``): such a layer attends to the keys the
latest earlier layer's indexer chose in the same forward (handed over through the context), caches no
index keys and has no indexer loss.
"""

from __future__ import annotations

import math
from typing import Literal, cast

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from gptzoo.core import AttentionContext, AuxiliaryLoss, Dims
from gptzoo.plugins.attention import attention_weights
from gptzoo.plugins.latent_attention import LatentAttention, LatentCache, LatentParams
from gptzoo.registry import hookimpl


class SparseLatentParams(LatentParams):
    index_topk: int = Field(
        2048, gt=0, description="keys each query attends to, those the indexer scores highest (DeepSeek-V3.2: 2048)"
    )
    index_heads: int = Field(64, gt=0, description="the indexer's heads (DeepSeek-V3.2: 64, GLM-5: 32)")
    index_head_dim: int = Field(
        128, gt=0, description="width of the indexer's queries and keys, at least head_dim (DeepSeek-V3.2: 128)"
    )
    index_rope_layout: Literal["halves", "interleaved"] = Field(
        "halves",
        description="rotary pairs of the indexer's first head_dim features: halves (DeepSeek-V3.2), interleaved (GLM-5)",
    )
    index_loss_weight: float = Field(
        1.0, ge=0, description="weight of the indexer's KL loss (dsa_indexer), its only training signal"
    )
    shared_index_layers: tuple[int, ...] = Field(
        (),
        description="the layers (by index) that run no indexer of their own and attend to the keys the latest "
        "earlier layer's indexer chose in the same forward (GLM-5's indexer_types \"shared\"); (): every layer "
        "runs its own",
    )


class SparseLatentCache(LatentCache):
    """The latent and rotary key (B, 1, max_len, r + dr) and the indexer's key (B, max_len, D) of each token."""

    def __init__(self, batch_size: int, max_len: int, width: int, index_width: int, device, dtype):
        super().__init__(batch_size, max_len, width, device, dtype)
        self.index_keys = torch.zeros(batch_size, max_len, index_width, device=device, dtype=dtype)

    def update_index(self, keys: Tensor, start: int | Tensor) -> Tensor:
        """Write keys (B, T, D) at slots start.. -> every token's so far (B, start + T, D); a tensor ``start``
        (a static cache's) gives every slot, as ``update`` does (the indexer then chooses among the allowed)."""
        if isinstance(start, Tensor):
            self.index_keys.index_copy_(
                1, start + torch.arange(keys.size(1), device=keys.device), keys.to(self.index_keys.dtype)
            )
            return self.index_keys.to(keys.dtype)
        end = start + keys.size(1)
        self.index_keys[:, start:end] = keys
        return self.index_keys[:, :end].to(keys.dtype)


class Indexer(nn.Module):
    """The lightning indexer's weights, named as DeepSeek-V3.2's checkpoints name them."""

    def __init__(self, query_width: int, d_model: int, heads: int, head_dim: int):
        super().__init__()
        self.wq_b = nn.Linear(query_width, heads * head_dim, bias=False)
        self.wk = nn.Linear(d_model, head_dim, bias=False)
        self.k_norm = nn.LayerNorm(head_dim, eps=1e-6)
        self.weights_proj = nn.Linear(d_model, heads, bias=False)


def pair_order(width: int, layout: str, device: torch.device) -> Tensor:
    """The feature order that makes the other layout's rotation turn pairs of ``layout``: halves pairs
    (i, i + width/2) placed at (2i, 2i + 1), or interleaved pairs (2i, 2i + 1) placed at (i, i + width/2)."""
    half = torch.arange(width // 2, device=device)
    if layout == "halves":
        return torch.stack([half, half + width // 2], dim=-1).flatten()
    return torch.cat([2 * half, 2 * half + 1])


CHOSEN_KEYS = "sparse_latent.chosen_keys"  # what an indexer hands over: (B, T, Tk) bool, None where it chose every key


class SparseLatentAttention(LatentAttention):
    Params = SparseLatentParams
    static_cache = True  # its index keys too are written at a tensor offset under a static cache

    @classmethod
    def check(cls, params: SparseLatentParams, dims: Dims) -> None:
        super().check(params, dims)
        outside = [i for i in params.shared_index_layers if not 0 < i < dims.n_layers]
        if outside:
            raise ValueError(
                f"shared_index_layers names {outside}: a layer reusing an earlier layer's chosen keys is one of "
                f"layers 1 to {dims.n_layers - 1} (layer 0 has no earlier layer)"
            )
        if params.index_head_dim < dims.head_size:
            raise ValueError(
                f"the indexer rotates its first head_dim = {dims.head_size} features: index_head_dim must be at "
                f"least that (got {params.index_head_dim})"
            )

    def __init__(self, params: SparseLatentParams, dims: Dims):
        super().__init__(params, dims)
        self.indexer = (
            None
            if dims.layer_idx in params.shared_index_layers
            else Indexer(params.q_lora_rank or dims.d_model, dims.d_model, params.index_heads, params.index_head_dim)
        )
        self._index_loss: Tensor | None = None

    def new_cache(self, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype) -> LatentCache:
        width = self.rank + self.dims.head_size
        if self.indexer is None:
            return LatentCache(batch_size, max_len, width, device, dtype)
        return SparseLatentCache(batch_size, max_len, width, self.params.index_head_dim, device, dtype)

    def cache_bytes(self, n_tokens: int, dtype: torch.dtype = torch.float32) -> int:
        width = self.rank + self.dims.head_size + (self.params.index_head_dim if self.indexer is not None else 0)
        return width * n_tokens * torch.empty((), dtype=dtype).element_size()

    def flops_per_token(self, context_length: int) -> int:
        # Every projection (the indexer's too); the indexer scores every key (q·k per head, then the
        # weighted sum); attention itself reaches index_topk keys at most.
        p = self.params
        projections = sum(2 * m.weight.numel() for m in self.owned_modules() if isinstance(m, nn.Linear))
        scoring = 2 * p.index_heads * (p.index_head_dim + 1) * context_length if self.indexer is not None else 0
        attended = min(context_length, p.index_topk)
        return projections + scoring + 2 * self.dims.n_heads * (self.nope + self.dims.head_size + self.value) * attended

    def auxiliary_losses(self) -> dict[str, AuxiliaryLoss]:
        if self._index_loss is None:
            return {}
        return {"dsa_indexer": AuxiliaryLoss(self._index_loss, self.params.index_loss_weight)}

    def forward(self, x: Tensor, ctx: AttentionContext, cache: LatentCache | None = None) -> Tensor:
        B, T, _ = x.shape
        nh, dr = self.dims.n_heads, self.dims.head_size
        if self.params.q_lora_rank is None:
            q_input, q = x, self.q_proj(x)
        else:
            q_input = self.q_a_layernorm(self.q_a_proj(x))
            q = self.q_b_proj(q_input)
        q_nope, q_rot = (
            q.view(B, T, nh, self.nope + dr).transpose(1, 2).split([self.nope, dr], dim=-1)
        )  # (B, nh, T, dn), (B, nh, T, dr)
        latent, k_rot = self.kv_a_proj_with_mqa(x).split([self.rank, dr], dim=-1)  # (B, T, r), (B, T, dr)
        q_rot, k_rot = ctx.rotate(q_rot, k_rot.unsqueeze(1))  # (B, nh, T, dr), (B, 1, T, dr)
        kv = torch.cat([self.kv_a_layernorm(latent).unsqueeze(1), k_rot], dim=-1)  # (B, 1, T, r + dr)
        if self.indexer is not None:  # its keys cached whether or not this forward's queries choose among them
            index_q, index_k = self.index_queries_and_keys(x.detach(), q_input.detach(), ctx)  # (B, T, H, D), (B, T, D)
        if cache is not None:
            kv = cache.update(kv, ctx.offset)  # (B, 1, Tk, r + dr)
            if self.indexer is not None:
                index_k = cast(SparseLatentCache, cache).update_index(index_k, ctx.offset)  # (B, Tk, D)
        Tk = kv.size(2)
        recording = self.indexer is not None and torch.is_grad_enabled() and self.params.index_loss_weight > 0
        scores = None
        if self.indexer is None:  # the latest earlier layer's choice
            chosen = ctx.handed(CHOSEN_KEYS)
        elif Tk <= self.params.index_topk and not recording:  # every key chosen: latent attention as it is
            chosen = None
        else:
            bias = ctx.bias(q.dtype)  # (B|1, 1|nh, T, Tk) or None where every key is allowed
            allowed = None if bias is None else torch.isfinite(bias[:, 0])  # (B|1, T, Tk)
            scores = self.index_scores(x.detach(), index_q, index_k)  # (B, T, Tk)
            chosen = self.choose(scores.detach(), allowed)  # (B, T, Tk)
        if self.indexer is not None:
            ctx.hand_over(CHOSEN_KEYS, chosen)
        if chosen is None:
            bias, is_causal = (None if ctx.is_causal else ctx.bias(q.dtype)), ctx.is_causal
        else:
            bias = ctx.bias(q.dtype)
            bias = torch.zeros(B, 1, T, Tk, dtype=q.dtype, device=x.device) if bias is None else bias
            bias, is_causal = bias.masked_fill(~chosen.unsqueeze(1), float("-inf")), False
        self._index_loss = self.index_loss(q_nope, q_rot, kv, bias, cast(Tensor, scores), chosen) if recording else None
        attend = self.absorbed if self.absorbing_is_cheaper(T, Tk) else self.explicit
        y = attend(q_nope, q_rot, kv, bias, is_causal, ctx if ctx.capturing else None)  # (B, nh, T, dv)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, nh * self.value))  # (B, T, C)

    def index_queries_and_keys(self, x: Tensor, q_input: Tensor, ctx: AttentionContext) -> tuple[Tensor, Tensor]:
        """The indexer's queries (B, T, H, D) and keys (B, T, D), their first head_dim features rotated."""
        B, T, _ = x.shape
        H, D, dr = self.params.index_heads, self.params.index_head_dim, self.dims.head_size
        indexer = cast(Indexer, self.indexer)  # a layer without one never asks
        q = indexer.wq_b(q_input).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = indexer.k_norm(indexer.wk(x)).unsqueeze(1)  # (B, 1, T, D)
        # The model's rotary turns its own pairs; reordering the features first makes them the indexer's pairs.
        # Scores are dot products, the same under any one order of q's and k's features, so none is undone.
        # The scheme's params hold its fields in __dict__ (getattr's miss would run pydantic's __getattr__,
        # which torch.compile cannot trace).
        layout = vars(ctx.positional.params).get("layout", self.params.index_rope_layout)
        if layout != self.params.index_rope_layout:
            order = pair_order(dr, self.params.index_rope_layout, x.device)
            q = torch.cat([q[..., :dr][..., order], q[..., dr:]], dim=-1)
            k = torch.cat([k[..., :dr][..., order], k[..., dr:]], dim=-1)
        q_rot, k_rot = ctx.rotate(q[..., :dr], k[..., :dr])
        q, k = torch.cat([q_rot, q[..., dr:]], dim=-1), torch.cat([k_rot, k[..., dr:]], dim=-1)
        return q.transpose(1, 2), k.squeeze(1)

    def index_scores(self, x: Tensor, q: Tensor, k: Tensor) -> Tensor:
        """I(t, s) = Σ_j w_j(t) · ReLU(q_j(t)·k(s) / sqrt(D)): q (B, T, H, D), k (B, Tk, D) -> (B, T, Tk), float32."""
        H, D = self.params.index_heads, self.params.index_head_dim
        scores = F.relu(q.float() @ k.float().transpose(-1, -2).unsqueeze(1) / math.sqrt(D))  # (B, T, H, Tk)
        weights = cast(Indexer, self.indexer).weights_proj(x).float() / math.sqrt(H)  # (B, T, H)
        return (weights.unsqueeze(-2) @ scores).squeeze(-2)  # (B, T, Tk)

    def choose(self, scores: Tensor, allowed: Tensor | None) -> Tensor:
        """Each query's index_topk allowed keys of highest score, the earlier key first among equal scores:
        scores (B, T, Tk), allowed (B|1, T, Tk) or None (all) -> chosen (B, T, Tk), bool.

        Scores are compared at 12 significant bits. Two keys of equal score in exact arithmetic (the same
        token where positions do not reach the indexer) differ in float32's last bits between a whole text
        and its decoding; at 12 bits they tie, and the tie goes to the earlier key both times. (DeepSeek's
        own indexer computes its scores in FP8, of 4 significant bits.)"""
        bits = scores.float().view(torch.int32)
        scores = ((bits + (1 << 10)) & -(1 << 11)).view(torch.float32)  # the low 11 of 23 stored bits rounded off
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        k = min(self.params.index_topk, scores.size(-1))
        best = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]  # (B, T, k)
        chosen = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, best, True)
        return chosen if allowed is None else chosen & allowed

    def index_loss(
        self, q_nope: Tensor, q_rot: Tensor, kv: Tensor, bias: Tensor, scores: Tensor, chosen: Tensor
    ) -> Tensor:
        """KL(p ‖ softmax(I)) over each query's chosen keys, p the heads' summed attention renormalised
        (held fixed), averaged over queries."""
        with torch.no_grad():
            w_uk = self.kv_b_proj.weight.view(self.dims.n_heads, self.nope + self.value, self.rank)[:, : self.nope]
            q = torch.cat([q_nope @ w_uk, q_rot], dim=-1)  # (B, nh, T, r + dr): the keys' latents absorbed
            p = attention_weights(q, kv, bias, self.scale, softcap=None).float().sum(1)  # (B, T, Tk)
            p = p / p.sum(-1, keepdim=True)
        log_q = torch.log_softmax(scores.masked_fill(~chosen, float("-inf")), dim=-1).masked_fill(~chosen, 0.0)
        return (torch.xlogy(p, p) - p * log_q).sum(-1).mean()


@hookimpl
def register_components(register):
    register("attention", "sparse_latent", SparseLatentAttention)
