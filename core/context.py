"""What every attention layer of one forward pass shares: positions, masking and score bias.

Built once per forward by the model, so attention variants stay free of position and mask
logic: they call ``ctx.rotate`` on their new queries and keys, and add ``ctx.bias`` to their
scores (or let SDPA apply plain causal masking when ``ctx.is_causal``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gptzoo.core.interfaces import PositionalEncoding


class AttentionContext:
    def __init__(
        self,
        positional: PositionalEncoding,
        positions: Tensor,
        key_positions: Tensor,
        offset: int = 0,
        key_valid: Tensor | None = None,
    ):
        self.positional = positional
        self.positions = positions  # (B|1, T) absolute positions of the new tokens
        self.key_positions = key_positions  # (B|1, Tk) of every key, cached ones first
        self.offset = offset  # tokens already in the cache before this forward
        self.key_valid = key_valid  # (B, Tk) bool, False at padding; None when nothing is padded
        self.score_bias = positional.score_bias(positions, key_positions)
        self.is_causal = offset == 0 and key_valid is None and self.score_bias is None
        self._bias: dict[torch.dtype, Tensor | None] = {}

    def rotate(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        return self.positional.rotate(q, k, self.positions)

    def bias(self, dtype: torch.dtype) -> Tensor | None:
        """Additive mask (B|1, nh|1, T, Tk): -inf where a query may not look, plus any score bias.

        None when every query may attend to every key (one new token, no padding, no bias).
        """
        if dtype not in self._bias:
            self._bias[dtype] = self._build_bias(dtype)
        return self._bias[dtype]

    def _build_bias(self, dtype: torch.dtype) -> Tensor | None:
        T, Tk = self.positions.size(-1), self.key_positions.size(-1)
        if T == 1 and self.key_valid is None and self.score_bias is None:
            return None
        device = self.positions.device
        q_slot = torch.arange(self.offset, self.offset + T, device=device)
        k_slot = torch.arange(Tk, device=device)
        allowed = k_slot[None, :] <= q_slot[:, None]  # (T, Tk)
        if self.key_valid is not None:
            # A padding query attends to itself only, so its softmax stays finite.
            allowed = (allowed & self.key_valid[:, None, :]) | (k_slot[None, :] == q_slot[:, None])  # (B, T, Tk)
        else:
            allowed = allowed.unsqueeze(0)
        bias = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, float("-inf"))
        bias = bias.unsqueeze(1)  # (B|1, 1, T, Tk)
        if self.score_bias is not None:
            bias = bias + self.score_bias.to(dtype)
        return bias
