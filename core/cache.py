"""Decoding caches: what each attention layer keeps between steps, and the model's bookkeeping.

Each attention variant makes its own layer cache (``Attention.new_cache``), so a variant can
keep all keys and values (the default below), a window of them, or compressed latents. The
model-level ``KVCache`` holds those layer caches plus what every layer shares: how many tokens
were fed, and each token's position and validity (False at left padding).
"""

from __future__ import annotations

import torch
from torch import Tensor


class LayerCache:
    """Base of the per-layer caches; a variant's forward is the only reader and writer of its own."""


class KVLayerCache(LayerCache):
    """Every key and value, preallocated for ``max_len`` tokens: (B, nkv, max_len, hs) each.

    A step writes in place and attention reads a view of the filled part, so a step costs the
    same Python work however long the sequence already is.
    """

    def __init__(
        self,
        batch_size: int,
        n_kv_heads: int,
        max_len: int,
        head_size: int,
        device: torch.device | str | None,
        dtype: torch.dtype,
    ):
        shape = (batch_size, n_kv_heads, max_len, head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    def update(self, k: Tensor, v: Tensor, start: int) -> tuple[Tensor, Tensor]:
        """Write k, v (B, nkv, T, hs) at slots start.. -> all keys, values so far (B, nkv, start + T, hs)."""
        end = start + k.size(2)
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end].to(k.dtype), self.v[:, :, :end].to(v.dtype)


class KVCache:
    """The whole model's cache; ``length`` tokens are filled. The model advances it after each forward."""

    def __init__(
        self, layers: list[LayerCache], batch_size: int, max_len: int, device: torch.device | str | None = None
    ):
        self.layers = layers
        self.batch_size = batch_size
        self.max_len = max_len
        self.length = 0
        # Absolute position and validity (False at padding) of every token fed so far.
        self.positions = torch.zeros(batch_size, max_len, dtype=torch.long, device=device)
        self.valid = torch.ones(batch_size, max_len, dtype=torch.bool, device=device)
        self.padded = False  # whether any cached token is padding

    @property
    def free(self) -> int:
        return self.max_len - self.length
