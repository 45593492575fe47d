"""LFM2's gated short convolution (Liquid AI, 2025): a token mixer that sees only its latest
``kernel_size`` tokens.

    (b, c, v) = x·W_in                          three d_model-wide parts of one projection
    y_t = c_t ⊙ Σ_{j<K} w_j ⊙ (b ⊙ v)_{t-j}     a depthwise causal convolution, gated on both sides
    out = y·W_out

Its reference is transformers' ``Lfm2ShortConv`` (models/lfm2/modeling_lfm2.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from gptzoo.core import Attention, AttentionContext, Dims, InitScheme, Params
from gptzoo.plugins._recurrent import RecurrentCache, ShortConv, zero_padding
from gptzoo.registry import hookimpl


class ShortConvParams(Params):
    kernel_size: int = Field(
        3, ge=1, description="tokens the convolution sees, the current one included (LFM2's conv_L_cache: 3)"
    )


class GatedShortConv(Attention):
    """y = C ⊙ conv(B ⊙ x), each channel on its own, through ``in_proj``, ``conv`` and ``out_proj``.

    The convolution is a banded lower-triangular T×T matrix per channel, and both gates are
    elementwise, so the output is y = A·v for v = the ``x`` part of ``in_proj`` and, per channel
    c, A[c, t, s] = C[t, c] · w[c, t - s] · B[s, c] for 0 ≤ t - s < kernel_size, else 0: the
    layer reports that matrix, one "head" per channel (B, d_model, T, T), formed only while
    inspecting. LFM2's ``conv_bias`` (false in its released models) is not offered: a bias would
    add C ⊙ bias outside A·v.

    Decoding keeps the last ``kernel_size - 1`` inputs of the convolution (``window``), so the
    cache is the same size at any length. ``conv.conv.weight`` is LFM2's ``conv.weight``.
    """

    Params = ShortConvParams
    inspection = "implicit_attention"
    position_hooks = frozenset()
    cache_kind = "state"
    static_cache = True  # a fixed-size state, updated in place

    def __init__(self, params: ShortConvParams, dims: Dims):
        super().__init__(params, dims)
        C = dims.d_model
        self.in_proj = nn.Linear(C, 3 * C, bias=False)
        self.conv = ShortConv(C, params.kernel_size)
        self.out_proj = nn.Linear(C, C, bias=False)

    @classmethod
    def receptive_field(cls, params: ShortConvParams) -> int:
        return params.kernel_size

    def forward(self, x: Tensor, ctx: AttentionContext, cache: RecurrentCache | None = None) -> Tensor:
        if cache is None and not ctx.capturing:
            return self._channels_first(x, ctx)
        b, c, v = self.in_proj(x).chunk(3, dim=-1)  # (B, T, C) each
        bv = zero_padding(b * v, ctx.valid)  # left padding leaves the convolution's window as it was
        y = c * self.conv(bv, cache.window if cache is not None else None)  # (B, T, C)
        if ctx.capturing:
            ctx.record(self.implicit_attention(zero_padding(b, ctx.valid), c))
        return self.out_proj(y)

    def _channels_first(self, x: Tensor, ctx: AttentionContext) -> Tensor:
        """The same layer over a whole text, laid out as the convolution reads it: splitting the projection
        along its outer dimension keeps the gates and their gradients contiguous (the backward's concatenation
        along the last dimension cost more than the convolution)."""
        T, K = x.size(1), self.params.kernel_size
        b, c, v = self.in_proj(x).transpose(1, 2).chunk(3, dim=1)  # (B, C, T) each
        bv = b * v if ctx.valid is None else b * v * ctx.valid[:, None, :].to(x.dtype)  # left padding zeroed
        conv = self.conv.conv
        y = c * F.conv1d(bv, conv.weight, conv.bias, padding=K - 1, groups=conv.groups)[..., :T]  # (B, C, T)
        return self.out_proj(y.transpose(1, 2))  # (B, T, C)

    def implicit_attention(self, b: Tensor, c: Tensor) -> Tensor:
        """(B, C, T, T): A[:, ch, t, s] = c[t, ch] · w[ch, t - s] · b[s, ch] within the kernel, else 0."""
        T, K = b.size(1), self.params.kernel_size
        lag = torch.arange(T, device=b.device)[:, None] - torch.arange(T, device=b.device)[None, :]  # (T, T): t - s
        inside = (lag >= 0) & (lag < K)
        taps = self.conv.conv.weight[:, 0].flip(-1)  # (C, K): taps[:, j] weighs the input j tokens back
        band = taps[:, lag.clamp(0, K - 1)] * inside  # (C, T, T)
        return c.transpose(1, 2)[..., :, None] * band * b.transpose(1, 2)[..., None, :]  # (B, C, T, T)

    def new_cache(
        self, batch_size: int, max_len: int | None, device: torch.device, dtype: torch.dtype
    ) -> RecurrentCache:
        return RecurrentCache(window=self.conv.new_window(batch_size, device, dtype))

    def cache_bytes(self, n_tokens: int, dtype: torch.dtype = torch.float32) -> int:
        return self.dims.d_model * (self.params.kernel_size - 1) * torch.empty((), dtype=dtype).element_size()

    def flops_per_token(self, context_length: int) -> int:
        # The projections, the convolution's multiply-adds and the two gates.
        C = self.dims.d_model
        return 2 * (3 * C * C + C * C) + 2 * C * self.params.kernel_size + 2 * C

    def init_weights(self, scheme: InitScheme) -> None:
        super().init_weights(scheme)
        if scheme == "gpt2":  # as LFM2 draws every linear and convolution weight
            nn.init.normal_(self.conv.conv.weight, mean=0.0, std=0.02)


@hookimpl
def register_components(register):
    register("attention", "short_conv", GatedShortConv)
