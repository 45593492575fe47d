"""Positional encodings: learned and sinusoidal tables (added to embeddings), rotary (applied to
queries and keys; scaled, partial, two pair layouts), ALiBi (added to attention scores), and none."""

import math
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from gptzoo.core import Dims, Params, PositionalEncoding
from gptzoo.registry import hookimpl


class LearnedPositions(PositionalEncoding):
    """A trained table of context_length position vectors (GPT-2)."""

    length_limit = (
        "its table holds one trained vector per position up to the trained context and none for the positions after it"
    )

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
        self.register_buffer("table", self._rows(torch.arange(dims.context_length)), persistent=False)
        self.past_table = False

    def _rows(self, positions: Tensor) -> Tensor:
        """The encodings (..., C) of ``positions`` (...): sin, cos interleaved."""
        inv_freq = _inverse_frequencies(self.dims.d_model, self.params.base).to(positions.device)
        angles = positions.to(torch.float64)[..., None] * inv_freq
        return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2).float()

    def reach(self, n_positions: int) -> None:
        # Past the table, rows are computed for the positions at hand rather than the table grown:
        # decoding far past the context keeps flat memory.
        self.past_table = n_positions > self.table.size(0)

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        rows = self._rows(positions) if self.past_table else self.table[positions]
        return x + self.params.scale * rows.to(x.dtype)  # (B, T, C) + (B|1, T, C)


class LinearScaling(Params):
    """Position interpolation (Chen et al., 2023): every frequency divided by ``factor``."""

    type: Literal["linear"]
    factor: float = Field(gt=0)


class Llama3Scaling(Params):
    """Llama 3.1's frequency-dependent scaling: wavelengths under original_context_length /
    high_freq_factor kept, those over original_context_length / low_freq_factor divided by
    ``factor``, and a smooth blend of the two in between."""

    type: Literal["llama3"]
    factor: float = Field(8.0, gt=0)
    low_freq_factor: float = Field(1.0, gt=0)
    high_freq_factor: float = Field(4.0, gt=0)
    original_context_length: int = Field(8192, gt=0)


class YaRNScaling(Params):
    """YaRN (Peng et al., 2023): frequencies that turn fewer than ``beta_slow`` times over the
    original context are interpolated (divided by ``factor``), those turning more than
    ``beta_fast`` times kept, a linear ramp between; cos and sin are multiplied by the attention
    factor (default 0.1·ln(factor) + 1), so attention scores by its square."""

    type: Literal["yarn"]
    factor: float = Field(gt=1)
    original_context_length: int = Field(gt=0)
    beta_fast: float = Field(32.0, gt=0)
    beta_slow: float = Field(1.0, gt=0)
    attention_factor: float | None = Field(None, gt=0)
    truncate: bool = Field(True, description="round the ramp's ends to whole dimensions, as the paper's code does")


RopeScaling = Annotated[LinearScaling | Llama3Scaling | YaRNScaling, Field(discriminator="type")]


class RotaryParams(BaseParams):
    scaling: RopeScaling | None = Field(
        None, description='frequency scaling for longer contexts: { type = "linear" | "llama3" | "yarn", ... }'
    )
    fraction: float = Field(
        1.0,
        gt=0,
        le=1,
        description="the fraction of each head's dimensions rotated, the first ones (GPT-NeoX 0.25, Phi); the rest pass unchanged",
    )
    proportional: bool = Field(
        False,
        description="with fraction < 1, rotate every pair of dimensions yet give all but the first fraction of "
        "them frequency 0 (they pass unchanged), the others keeping the frequencies of full rotary over the whole "
        "head: Gemma 4's proportional RoPE on its global layers (0.25)",
    )
    layout: Literal["halves", "interleaved"] = Field(
        "halves",
        description="halves: dimension j pairs with j + d/2 (Llama, GPT-NeoX); interleaved: 2j with 2j + 1 (GPT-J, the RoFormer paper)",
    )
    reverse: bool = Field(
        False,
        description="rotate the other way, by -position × frequency (sin negated): nanochat's rotate_half is Llama's negated",
    )


def rotary_dim(params: RotaryParams, head_size: int) -> int:
    return head_size if params.proportional else int(head_size * params.fraction)


def rope_frequencies(params: RotaryParams, head_size: int) -> tuple[Tensor, float]:
    """The rotary dimension pairs' angular frequencies (rotary_dim/2,) in float64, and the factor
    on cos and sin (1 but for YaRN); ``proportional``: 0 past the first fraction of the pairs."""
    inv_freq, attention_factor = _scaled_frequencies(params, rotary_dim(params, head_size))
    if params.proportional:
        inv_freq[int(params.fraction * head_size // 2) :] = 0.0  # as transformers' proportional RoPE rounds
    return inv_freq, attention_factor


def _scaled_frequencies(params: RotaryParams, dim: int) -> tuple[Tensor, float]:
    """The frequencies of ``dim`` rotated dimensions under ``params.scaling``, and the factor on cos and sin."""
    inv_freq = _inverse_frequencies(dim, params.base)
    scaling = params.scaling
    if scaling is None:
        return inv_freq, 1.0
    if scaling.type == "linear":
        return inv_freq / scaling.factor, 1.0
    if scaling.type == "llama3":
        wavelength = 2 * math.pi / inv_freq
        low_freq_wavelength = scaling.original_context_length / scaling.low_freq_factor  # longer: interpolated
        high_freq_wavelength = scaling.original_context_length / scaling.high_freq_factor  # shorter: kept
        smooth = (scaling.original_context_length / wavelength - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor
        )
        blended = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
        scaled = torch.where(wavelength > low_freq_wavelength, inv_freq / scaling.factor, inv_freq)
        between = (wavelength >= high_freq_wavelength) & (wavelength <= low_freq_wavelength)
        return torch.where(between, blended, scaled), 1.0

    # YaRN: dimension d of `dim` turns original_context_length / (2π base^(d/dim)) times over
    # the original context; solve for the dimensions turning beta_fast and beta_slow times.
    def dimension_turning(turns: float) -> float:
        return dim * math.log(scaling.original_context_length / (turns * 2 * math.pi)) / (2 * math.log(params.base))

    low, high = dimension_turning(scaling.beta_fast), dimension_turning(scaling.beta_slow)
    if scaling.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / max(high - low, 0.001)).clamp(
        0, 1
    )  # 0: kept, 1: interpolated
    inv_freq = inv_freq * (1 - ramp) + inv_freq / scaling.factor * ramp
    attention_factor = (
        scaling.attention_factor if scaling.attention_factor is not None else 0.1 * math.log(scaling.factor) + 1.0
    )
    return inv_freq, attention_factor


class RotaryPositions(PositionalEncoding):
    """RoPE (Su et al., 2021): rotate pairs of dimensions of q and k by position × frequency.

    ``layout`` chooses the pairs (halves: Llama/GPT-NeoX; interleaved: GPT-J and the paper),
    ``fraction`` how many dimensions are rotated (the first ones), ``scaling`` the frequencies
    for a context longer than the one trained (linear, Llama 3, YaRN), ``reverse`` the direction.
    """

    Params = RotaryParams

    @classmethod
    def check(cls, params: RotaryParams, dims: Dims) -> None:
        dim = rotary_dim(params, dims.head_size)
        if dim < 2 or dim % 2:
            size = f"head_dim={dims.head_dim}" if dims.head_dim else f"d_model={dims.d_model} / n_heads={dims.n_heads}"
            raise ValueError(
                f"rotary needs an even number of rotated dimensions, but head size {dims.head_size} ({size}) × fraction {params.fraction} gives {dim}"
            )

    def __init__(self, params: RotaryParams, dims: Dims):
        super().__init__(params, dims)
        self.rotary_dim = rotary_dim(params, dims.head_size)
        cos, sin = self._rows(torch.arange(dims.context_length))
        self.register_buffer("cos", cos, persistent=False)  # (context, rotary_dim/2)
        self.register_buffer("sin", sin, persistent=False)
        self.past_table = False

    def _rows(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos and sin (..., rotary_dim/2) of ``positions`` (...) times each frequency."""
        inv_freq, attention_factor = rope_frequencies(self.params, self.dims.head_size)
        angles = positions.to(torch.float64)[..., None] * inv_freq.to(positions.device)
        if self.params.reverse:
            angles = -angles
        return (angles.cos() * attention_factor).float(), (angles.sin() * attention_factor).float()

    def reach(self, n_positions: int) -> None:
        # Past the tables, rows are computed for the positions at hand rather than the tables grown:
        # decoding far past the context keeps flat memory.
        self.past_table = n_positions > self.cos.size(0)

    def rotate(self, q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        cos, sin = self._rows(positions) if self.past_table else (self.cos[positions], self.sin[positions])
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B|1, 1, T, rotary_dim/2)
        return self._rotate(q, cos, sin), self._rotate(k, cos, sin)

    def _rotate(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        turned, kept = (
            x[..., : self.rotary_dim].float(),
            x[..., self.rotary_dim :],
        )  # (B, h, T, rotary_dim), (B, h, T, hs - rotary_dim)
        if self.params.layout == "halves":
            x1, x2 = turned.chunk(2, dim=-1)  # (B, h, T, rotary_dim/2) each
            turned = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
        else:
            x1, x2 = turned[..., 0::2], turned[..., 1::2]
            turned = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
        return torch.cat([turned.to(x.dtype), kept], dim=-1)


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
