"""Decoding caches: what each attention layer keeps between steps, and the model's bookkeeping.

Each token mixer makes its own layer cache (``Attention.new_cache``), so a mixer can keep all
keys and values (the default below), a window of them, compressed latents or a recurrent state.
The model-level ``KVCache`` holds those layer caches plus what every layer shares: how many
tokens were fed, and the tokens' positions and validity (False at left padding).
"""

from __future__ import annotations

import torch
from torch import Tensor


class LayerCache:
    """Base of the per-layer caches; a variant's forward is the only reader and writer of its own."""


class KVLayerCache(LayerCache):
    """Every key and value, preallocated for ``max_len`` tokens: (B, nkv, max_len, hs) each, the
    values ``value_size`` wide where that differs (None: hs).

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
        value_size: int | None = None,
    ):
        self.k = torch.zeros(batch_size, n_kv_heads, max_len, head_size, device=device, dtype=dtype)
        self.v = torch.zeros(batch_size, n_kv_heads, max_len, value_size or head_size, device=device, dtype=dtype)

    def update(self, k: Tensor, v: Tensor, start: int | Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (B, nkv, T, hs) at slots start.. -> all keys, values so far (B, nkv, start + T, hs).

        A tensor ``start`` (a ``StaticKVCache``'s length) gives every slot, (B, nkv, max_len, hs) each:
        the same shapes at every step; the slots not written yet follow the newest token, so causal
        masking hides them."""
        if isinstance(start, Tensor):
            slots = start + torch.arange(k.size(2), device=k.device)
            self.k.index_copy_(2, slots, k.to(self.k.dtype))
            self.v.index_copy_(2, slots, v.to(self.v.dtype))
            return self.k.to(k.dtype), self.v.to(v.dtype)
        end = start + k.size(2)
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end].to(k.dtype), self.v[:, :, :end].to(v.dtype)


class KVCache:
    """The whole model's cache; ``length`` tokens are filled. The model advances it after each forward.
    A layer that attends with an earlier layer's keys and values keeps none: its entry is None.

    ``max_len`` None: no limit (every layer's cache is bounded). Besides the layers' caches it
    keeps, per row, how many real tokens were fed (``seen``), and the position and validity of
    the latest ``keep`` tokens (None: of every token), which is what masks and score biases read.
    """

    def __init__(
        self,
        layers: list[LayerCache | None],
        batch_size: int,
        max_len: int | None,
        device: torch.device | str | None = None,
        keep: int | None = None,
    ):
        self.layers = layers
        self.batch_size = batch_size
        self.max_len = max_len
        self.keep = keep
        self.length = 0
        self.seen = torch.zeros(batch_size, 1, dtype=torch.long, device=device)  # (B, 1) real tokens so far
        self.positions = torch.zeros(batch_size, 0, dtype=torch.long, device=device)  # (B, kept)
        self.valid = torch.ones(batch_size, 0, dtype=torch.bool, device=device)  # (B, kept), False at padding
        self.padded = False  # whether any kept token is padding

    @property
    def origin(self) -> int:
        """The key slot of the first token whose position and validity are kept."""
        return self.length - self.positions.size(1)

    @property
    def free(self) -> int | None:
        """Tokens that still fit (None: no limit)."""
        return None if self.max_len is None else self.max_len - self.length

    def rewind(self, n_tokens: int) -> None:
        """Forget the latest ``n_tokens`` (a rejected draft): caches of every key and value, which write
        at slot ``length``, overwrite theirs next. Needs every token's bookkeeping kept (``keep`` None)."""
        assert self.keep is None and 0 < n_tokens <= self.length, "only a cache keeping every token rewinds"
        self.length -= n_tokens
        self.seen = self.seen - self.valid[:, -n_tokens:].sum(-1, keepdim=True)
        self.positions, self.valid = self.positions[:, :-n_tokens], self.valid[:, :-n_tokens]

    def advance(self, positions: Tensor, valid: Tensor, padded: bool) -> tuple[Tensor, Tensor | None]:
        """Note T new tokens' ``positions`` (B|1, T) and ``valid`` (B, T) -> the kept keys' positions (B|1, kept)
        and validity (B, kept), or None where no kept token is padding (``padded`` False)."""
        B, T = valid.shape
        all_positions = torch.cat([self.positions, positions.expand(B, T)], dim=1)  # (B, kept + T)
        all_valid = torch.cat([self.valid, valid], dim=1)  # (B, kept + T)
        self.remember(all_positions, all_valid, T)
        self.seen = self.seen + valid.sum(-1, keepdim=True)
        return (all_positions if padded else all_positions[:1]), (all_valid if padded else None)

    def remember(self, positions: Tensor, valid: Tensor, n_new: int) -> None:
        """Keep ``positions`` and ``valid`` (B, kept + n_new) of the keys so far, the latest ``keep`` of them."""
        if self.keep is not None:
            start = max(0, positions.size(1) - self.keep)
            positions, valid = positions[:, start:], valid[:, start:]
        self.positions, self.valid = positions, valid
        self.length += n_new


class StaticKVCache(KVCache):
    """A ``KVCache`` of fixed shapes, for a decoding step compiled once (``torch.compile``): the positions
    and validity of all ``max_len`` tokens preallocated, and ``length`` a tensor, so every step sees the
    same shapes and Python values. Layers then attend over every slot of their preallocated caches
    (their ``update`` reads a tensor start so); the slots not written yet follow the newest token, where
    causal masking hides them."""

    def __init__(
        self, layers: list[LayerCache | None], batch_size: int, max_len: int, device: torch.device | str | None
    ):
        super().__init__(layers, batch_size, max_len, device)
        self.length = torch.zeros((), dtype=torch.long, device=device)  # type: ignore[assignment]
        self.positions = torch.zeros(batch_size, max_len, dtype=torch.long, device=device)
        self.valid = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)

    @property
    def origin(self) -> int:
        return 0

    def advance(self, positions: Tensor, valid: Tensor, padded: bool) -> tuple[Tensor, Tensor | None]:
        """``KVCache.advance`` in place: the new tokens' bookkeeping written at slots ``length``.., the
        whole buffers returned (a slot not written yet is invalid, and after every query besides)."""
        B, T = valid.shape
        slots = self.length + torch.arange(T, device=valid.device)
        self.positions.index_copy_(1, slots, positions.expand(B, T))
        self.valid.index_copy_(1, slots, valid)
        self.seen += valid.sum(-1, keepdim=True)
        self.length += T
        return (self.positions if padded else self.positions[:1]), (self.valid if padded else None)
