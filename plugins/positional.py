"""Positional encodings: learned and sinusoidal tables (added to embeddings), rotary (applied to
queries and keys), ALiBi (added to attention scores), and none."""

import math

import torch
from torch import Tensor, nn

from gptzoo.core import Dims, Params, PositionalEncoding
from gptzoo.registry import hookimpl


class LearnedPositions(PositionalEncoding):
    """A trained table of context_length position vectors (GPT-2)."""

    length_limit = "its table holds one trained vector per position up to the trained context and none for the positions after it"

    def __init__(self, params: Params, dims: Dims):
        super().__init__(params, dims)
        self.table = nn.Embedding(dims.context_length, dims.d_model)

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        return x + self.table(positions)  # (B, T, C) + (B|1, T, C)


class BaseParams(Params):
    base: float = 10000.0


def _inverse_frequencies(dim: int, base: float) -> Tensor:
    return base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (dim/2,)


class SinusoidalParams(BaseParams):
    # GPT init draws token embeddings from N(0, 0.02): a table of size-1 entries would drown
    # them (val loss 5.3 vs 4.0 on configs/tiny.toml), so it is scaled to match. Vaswani et
    # al. strike the same balance the other way, scaling N(0, 1/√C) embeddings by √C.
    scale: float = 0.02


class SinusoidalPositions(PositionalEncoding):
    """The fixed sin/cos table of "Attention Is All You Need", times ``scale``:
    PE[p, 2i] = sin(p / base^(2i/C)), PE[p, 2i+1] = cos(p / base^(2i/C))."""

    Params = SinusoidalParams

    @classmethod
    def check(cls, params: SinusoidalParams, dims: Dims) -> None:
        if dims.d_model % 2:
            raise ValueError(f"needs an even d_model, got d_model={dims.d_model}")

    def __init__(self, params: SinusoidalParams, dims: Dims):
        super().__init__(params, dims)
        angles = torch.arange(dims.context_length, dtype=torch.float64)[:, None] * _inverse_frequencies(dims.d_model, params.base)
        table = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)  # (context, C): sin, cos interleaved
        self.register_buffer("table", table.float(), persistent=False)

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        return x + self.params.scale * self.table[positions].to(x.dtype)  # (B, T, C) + (B|1, T, C)


class RotaryPositions(PositionalEncoding):
    """RoPE: rotate each (first half, second half) pair of q and k by position × frequency (GPT-NeoX / Llama layout)."""

    Params = BaseParams

    @classmethod
    def check(cls, params: BaseParams, dims: Dims) -> None:
        if dims.head_size % 2:
            raise ValueError(
                f"rotary needs an even head size, but d_model={dims.d_model} / n_heads={dims.n_heads} gives {dims.head_size}"
            )

    def __init__(self, params: BaseParams, dims: Dims):
        super().__init__(params, dims)
        angles = torch.arange(dims.context_length, dtype=torch.float64)[:, None] * _inverse_frequencies(dims.head_size, params.base)
        self.register_buffer("cos", angles.cos().float(), persistent=False)  # (context, hs/2)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def rotate(self, q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        cos = self.cos[positions].unsqueeze(1)  # (B|1, 1, T, hs/2)
        sin = self.sin[positions].unsqueeze(1)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, h, T, hs/2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


class ALiBiPositions(PositionalEncoding):
    """ALiBi: add -slope_h × (query position - key position) to head h's scores; no embedding at all."""

    def __init__(self, params: Params, dims: Dims):
        super().__init__(params, dims)
        self.register_buffer("slopes", alibi_slopes(dims.n_heads)[:, None, None], persistent=False)  # (nh, 1, 1)

    def score_bias(self, q_positions: Tensor, k_positions: Tensor) -> Tensor:
        distance = (q_positions[:, :, None] - k_positions[:, None, :]).float()  # (B|1, T, Tk)
        return -self.slopes * distance.unsqueeze(1)  # (B|1, nh, T, Tk)


def alibi_slopes(n_heads: int) -> Tensor:
    """Geometric slopes 2^(-8i/n) for the nearest power of two n, interleaved for the rest (Press et al., 2022)."""
    n = 2 ** math.floor(math.log2(n_heads))
    slopes = [2 ** (-8 * (i + 1) / n) for i in range(n)]
    if n < n_heads:
        slopes += [2 ** (-4 * (2 * i + 1) / n) for i in range(n_heads - n)]
    return torch.tensor(slopes)


class NoPositions(PositionalEncoding):
    """No positional signal beyond causal masking (NoPE)."""


@hookimpl
def register_components(register):
    register("positional", "learned", LearnedPositions)
    register("positional", "sinusoidal", SinusoidalPositions)
    register("positional", "rope", RotaryPositions)
    register("positional", "alibi", ALiBiPositions)
    register("positional", "none", NoPositions)
