"""Preallocated key/value cache for incremental decoding.

Buffers are allocated once for ``max_len`` tokens; each step writes the new keys and values
in place and attention reads a view of the filled part, so a step costs the same Python work
however long the sequence already is.
"""

from __future__ import annotations

import torch
from torch import Tensor


class LayerCache:
    """Keys and values of one layer: (B, nkv, max_len, hs) each."""

    def __init__(self, owner: KVCache, k: Tensor, v: Tensor):
        self.owner = owner
        self.k = k
        self.v = v

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append k, v (B, nkv, T, hs) after the cached tokens -> all keys, values (B, nkv, Tk, hs)."""
        start = self.owner.length
        end = start + k.size(2)
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end].to(k.dtype), self.v[:, :, :end].to(v.dtype)


class KVCache:
    """The whole model's cache; ``length`` tokens are filled. The model advances it after each forward."""

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_kv_heads: int,
        head_size: int,
        max_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        shape = (batch_size, n_kv_heads, max_len, head_size)
        self.layers = [
            LayerCache(self, torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))
            for _ in range(n_layers)
        ]
        self.batch_size = batch_size
        self.max_len = max_len
        self.length = 0
        # Absolute position and validity (False at padding) of every cached token.
        self.positions = torch.zeros(batch_size, max_len, dtype=torch.long, device=device)
        self.valid = torch.ones(batch_size, max_len, dtype=torch.bool, device=device)
        self.padded = False  # whether any cached token is padding

    @property
    def free(self) -> int:
        return self.max_len - self.length
