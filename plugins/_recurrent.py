"""Pieces the recurrent token mixers share: their decoding cache and the short causal convolution.

A recurrent mixer's cache holds fixed-size tensors, allocated whole in ``new_cache`` (so its
bytes are what ``cache_bytes`` declares from the first token on) and updated in place.
Left padding must not change a row's state: the mixers zero their inputs at padding
(``ctx.valid`` False), which leaves a zero-initialised state and convolution window as they were.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gptzoo.core import LayerCache


class RecurrentCache(LayerCache):
    """Named fixed-size tensors (a convolution window, a state), each set as an attribute."""

    def __init__(self, **tensors: Tensor):
        for name, tensor in tensors.items():
            setattr(self, name, tensor)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in vars(self).values() if isinstance(t, Tensor))


def zero_padding(x: Tensor, valid: Tensor | None) -> Tensor:
    """x (B, T, ...) with the left-padding tokens (``valid`` False, (B, T)) set to 0."""
    if valid is None:
        return x
    return x * valid.view(*valid.shape, *([1] * (x.dim() - 2))).to(x.dtype)


# Decoding feeds a token or a few at a time: for so few, F.conv1d's fixed cost outweighs the
# arithmetic, and summing the kernel's taps by hand is cheaper.
TAP_SUM_MAX_TOKENS = 16


class ShortConv(nn.Module):
    """A depthwise causal convolution over the last ``kernel_size`` tokens, channel by channel:
    x (B, T, D) -> (B, T, D). While decoding, ``window`` (B, D, kernel_size - 1) holds the inputs
    before the new ones (zeros at the start) and is updated in place. The weight is
    ``conv.weight`` (D, 1, kernel_size), as transformers' recurrent models store it."""

    def __init__(self, channels: int, kernel_size: int, bias: bool = False):
        super().__init__()
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels, bias=bias)

    def forward(self, x: Tensor, window: Tensor | None = None) -> Tensor:
        xt = x.transpose(1, 2)  # (B, D, T)
        if window is None:
            xt = F.pad(xt, (self.kernel_size - 1, 0))  # (B, D, K - 1 + T)
        else:
            xt = torch.cat([window.to(xt.dtype), xt], dim=-1)  # (B, D, K - 1 + T)
            window.copy_(xt[..., xt.size(-1) - (self.kernel_size - 1) :])
            if x.size(1) <= TAP_SUM_MAX_TOKENS:
                return self._tap_sum(xt).transpose(1, 2)
        return F.conv1d(xt, self.conv.weight, self.conv.bias, groups=self.conv.groups).transpose(1, 2)  # (B, T, D)

    def _tap_sum(self, xt: Tensor) -> Tensor:
        """The convolution of xt (B, D, K - 1 + T) as K shifted products summed, tap 0 (the oldest) first."""
        T, w = xt.size(-1) - (self.kernel_size - 1), self.conv.weight[:, 0]  # w (D, K)
        y = xt[..., :T] * w[:, :1]
        for j in range(1, self.kernel_size):
            y = y + xt[..., j : j + T] * w[:, j : j + 1]
        return y if self.conv.bias is None else y + self.conv.bias[:, None]

    def new_window(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        return torch.zeros(batch_size, self.conv.in_channels, self.kernel_size - 1, device=device, dtype=dtype)
