"""What every attention layer of one forward pass shares: positions, masking and score bias.

The model builds one context per forward (one per distinct position scheme when layer kinds
choose their own), so attention variants stay free of position and mask logic. What a variant
may read:

- ``positions`` (B|1, T): absolute positions of the new tokens (per row only when padded);
- ``key_positions`` (B|1, Tk) and ``key_valid`` (B, Tk) or None: every key fed so far, cached
  ones first; ``key_valid`` is False at left padding;
- ``offset``: tokens already in the cache before this forward, so new token t sits in key
  slot ``offset + t``;
- ``is_causal``: plain causal masking suffices (no cache, no padding, no score bias): SDPA's
  ``is_causal=True`` may be used instead of a mask;
- ``rotate(q, k)``: the position scheme's rotation of new queries and keys (identity for most);
- ``bias(dtype, window=None, first_key=0)``: the additive mask, -inf where a query may not
  look, plus the scheme's score bias; ``window`` limits each query to its latest ``window``
  keys, ``first_key`` builds it for key slots ``first_key..`` only (a cache that keeps a window);
- ``capturing`` and ``record(weights)``: while a ``Recorder`` inspects the forward, each layer
  reports its attention probabilities once, (B, nh, T, Tk) after the softmax and before dropout;
  a variant that uses SDPA computes them explicitly only then, so its fast path stays as it is.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gptzoo.core.errors import GptzooError
from gptzoo.core.interfaces import PositionalEncoding


class Recorder:
    """What one forward records for inspection (``GPT(idx, recorder=Recorder())``): the residual
    stream entering the first block and leaving each block, (B, T, C) each, and every layer's
    attention probabilities (B, nh, T, Tk) as its attention variant reports them."""

    def __init__(self) -> None:
        self.residuals: list[Tensor] = []
        self.attentions: list[Tensor] = []

    def stream(self, x: Tensor, block: nn.Module | None = None) -> None:
        """The residual stream after ``block`` (None: the embeddings, before the first block)."""
        self.residuals.append(x)
        if block is not None and len(self.attentions) != len(self.residuals) - 1:
            raise GptzooError(
                f"{type(block.attention).__name__} reported its attention weights {len(self.attentions) - len(self.residuals) + 2} "
                f"times in layer {len(self.residuals) - 2}: while ctx.capturing, an attention variant calls ctx.record(weights) once per forward"
            )


class AttentionContext:
    def __init__(
        self,
        positional: PositionalEncoding,
        positions: Tensor,
        key_positions: Tensor,
        offset: int = 0,
        key_valid: Tensor | None = None,
        recorder: Recorder | None = None,
    ):
        self.positional = positional
        self.recorder = recorder
        self.positions = positions
        self.key_positions = key_positions
        self.offset = offset
        self.key_valid = key_valid
        self.score_bias = positional.score_bias(positions, key_positions)  # (B|1, nh|1, T, Tk) or None
        self.is_causal = offset == 0 and key_valid is None and self.score_bias is None
        self._bias: dict[tuple, Tensor | None] = {}

    def rotate(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        return self.positional.rotate(q, k, self.positions)

    @property
    def capturing(self) -> bool:
        return self.recorder is not None

    def record(self, weights: Tensor) -> None:
        """Report this layer's attention probabilities (B, nh, T, Tk); nothing happens unless capturing."""
        if self.recorder is not None:
            self.recorder.attentions.append(weights)

    def bias(self, dtype: torch.dtype, window: int | None = None, first_key: int = 0) -> Tensor | None:
        """Additive mask (B|1, nh|1, T, Tk - first_key), or None when every query may see every key."""
        key = (dtype, window, first_key)
        if key not in self._bias:
            self._bias[key] = self._build_bias(dtype, window, first_key)
        return self._bias[key]

    def _build_bias(self, dtype: torch.dtype, window: int | None, first_key: int) -> Tensor | None:
        T, Tk = self.positions.size(-1), self.key_positions.size(-1)
        if (
            T == 1
            and self.key_valid is None
            and self.score_bias is None
            and (window is None or Tk - first_key <= window)
        ):
            return None
        device = self.positions.device
        q_slot = torch.arange(self.offset, self.offset + T, device=device)
        k_slot = torch.arange(first_key, Tk, device=device)
        allowed = k_slot[None, :] <= q_slot[:, None]  # (T, Tk')
        if window is not None:
            allowed &= k_slot[None, :] > q_slot[:, None] - window
        if self.key_valid is not None:
            # A padding query attends to itself only, so its softmax stays finite.
            allowed = (allowed & self.key_valid[:, None, first_key:]) | (
                k_slot[None, :] == q_slot[:, None]
            )  # (B, T, Tk')
        else:
            allowed = allowed.unsqueeze(0)
        bias = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, float("-inf"))
        bias = bias.unsqueeze(1)  # (B|1, 1, T, Tk')
        if self.score_bias is not None:
            bias = bias + self.score_bias[..., first_key:].to(dtype)
        return bias
