"""The transformer block and the GPT, assembled from whatever components the config names."""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor, nn

from gptzoo.core.cache import KVCache
from gptzoo.core.config import ModelConfig
from gptzoo.core.context import AttentionContext
from gptzoo.core.errors import ConfigError
from gptzoo.core.interfaces import Dims


class Block(nn.Module):
    def __init__(self, config: ModelConfig, dims: Dims):
        super().__init__()
        self.pre_norm = config.norm_placement == "pre"
        self.attn_norm = config.norm.build(dims)
        self.attention = config.attention.build(dims)
        self.ffn_norm = config.norm.build(dims)
        self.feed_forward = config.feed_forward.build(dims)
        self.dropout = nn.Dropout(dims.dropout)

    def forward(self, x: Tensor, ctx: AttentionContext, cache=None) -> Tensor:  # x: (B, T, C)
        if self.pre_norm:
            x = x + self.dropout(self.attention(self.attn_norm(x), ctx, cache))
            return x + self.dropout(self.feed_forward(self.ffn_norm(x)))
        x = self.attn_norm(x + self.dropout(self.attention(x, ctx, cache)))
        return self.ffn_norm(x + self.dropout(self.feed_forward(x)))


class GPT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size is None:
            raise ConfigError("model.vocab_size is not set: resolve it from the tokenizer first (config.model_copy(update={'vocab_size': tokenizer.vocab_size}))")
        self.config = config
        dims = config.dims()
        self.token_embedding = nn.Embedding(dims.padded_vocab_size, dims.d_model)
        self.positional = config.positional.build(dims)
        self.dropout = nn.Dropout(dims.dropout)
        self.blocks = nn.ModuleList(Block(config, replace(dims, layer_idx=i)) for i in range(dims.n_layers))
        # Post-norm blocks end in a norm already.
        self.final_norm = config.norm.build(dims) if config.norm_placement == "pre" else nn.Identity()
        self.head = config.head.build(dims, self.token_embedding if config.tied_head else None)
        self.apply(self._init_weights)
        # GPT-2's scaled init: each residual branch adds variance, so shrink what writes into it.
        for block in self.blocks:
            for branch in (block.attention, block.feed_forward):
                nn.init.normal_(branch.out_proj.weight, std=0.02 / math.sqrt(2 * dims.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    # ---- forward -------------------------------------------------------------------------

    def hidden_states(self, idx: Tensor, cache: KVCache | None = None, pad_mask: Tensor | None = None) -> Tensor:
        """idx (B, T) token ids -> final hidden states (B, T, C).

        With ``cache``, idx holds only the new tokens and the cache advances by T. ``pad_mask``
        (B, T) is True at real tokens; padded batches (left padding for generation) get
        per-row positions that count real tokens only.
        """
        B, T = idx.shape
        offset = cache.length if cache is not None else 0
        if cache is not None and offset + T > cache.max_len:
            raise ValueError(f"KV cache holds {cache.max_len} tokens; {offset} cached + {T} new do not fit")
        padded = pad_mask is not None or (cache is not None and cache.padded)
        if not padded:
            positions = torch.arange(offset, offset + T, device=idx.device).unsqueeze(0)  # (1, T)
        else:
            valid = pad_mask if pad_mask is not None else torch.ones(B, T, dtype=torch.bool, device=idx.device)
            before = cache.valid[:, :offset].sum(-1, keepdim=True) if offset else 0  # (B, 1)
            positions = (before + valid.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
        if cache is None:
            key_positions, key_valid = positions, (pad_mask if padded else None)
        else:
            cache.positions[:, offset : offset + T] = positions
            if pad_mask is not None:
                cache.valid[:, offset : offset + T] = pad_mask
                cache.padded = True
            key_positions = cache.positions[:, : offset + T]
            key_valid = cache.valid[:, : offset + T] if padded else None
        ctx = AttentionContext(self.positional, positions, key_positions, offset, key_valid)

        x = self.token_embedding(idx)  # (B, T, C)
        x = self.dropout(self.positional.embed(x, positions))
        for i, block in enumerate(self.blocks):
            x = block(x, ctx, cache.layers[i] if cache is not None else None)
        if cache is not None:
            cache.length += T
        return self.final_norm(x)

    def forward(self, idx: Tensor, cache: KVCache | None = None, pad_mask: Tensor | None = None) -> Tensor:
        """idx (B, T) -> logits: (B, T, V) from an LM head, (B, n_classes) from a classifier."""
        return self.head(self.hidden_states(idx, cache, pad_mask), pad_mask)

    def new_cache(self, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> KVCache:
        dims = self.config.dims()
        weight = self.token_embedding.weight
        return KVCache(
            n_layers=dims.n_layers,
            batch_size=batch_size,
            n_kv_heads=dims.n_kv_heads,
            head_size=dims.head_size,
            max_len=max_len or dims.context_length,
            device=weight.device,
            dtype=dtype or weight.dtype,
        )

    # ---- accounting ----------------------------------------------------------------------

    def param_counts(self) -> dict[str, int]:
        """Parameters by family; a tied head's shared weight counts once, under embeddings."""
        groups = {"embeddings": [self.token_embedding, self.positional], "attention": [], "feed_forward": [], "norm": [self.final_norm], "head": [self.head]}
        for block in self.blocks:
            groups["attention"].append(block.attention)
            groups["feed_forward"].append(block.feed_forward)
            groups["norm"] += [block.attn_norm, block.ffn_norm]
        seen: set[int] = set()
        counts = {}
        for family, modules in groups.items():
            counts[family] = 0
            for module in modules:
                for p in module.parameters():
                    if id(p) not in seen:
                        seen.add(id(p))
                        counts[family] += p.numel()
        counts["total"] = sum(counts.values())
        return counts

    def flops_per_token(self, context_length: int | None = None) -> dict[str, int]:
        """Forward FLOPs per token at ``context_length`` by family, from each component's own estimate."""
        T = context_length or self.config.context_length
        parts = {
            "positional": self.positional.flops_per_token(T),
            "attention": sum(b.attention.flops_per_token(T) for b in self.blocks),
            "feed_forward": sum(b.feed_forward.flops_per_token(T) for b in self.blocks),
            "norm": sum(b.attn_norm.flops_per_token(T) + b.ffn_norm.flops_per_token(T) for b in self.blocks),
            "head": self.head.flops_per_token(T),
        }
        parts["forward"] = sum(parts.values())
        parts["training"] = 3 * parts["forward"]
        return parts

    def kv_cache_bytes_per_token(self, dtype: torch.dtype = torch.float32) -> int:
        element = torch.empty((), dtype=dtype).element_size()
        return sum(b.attention.kv_cache_elements_per_token() for b in self.blocks) * element
