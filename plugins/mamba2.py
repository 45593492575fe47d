"""Mamba-2, a selective state-space token mixer (SSD, Dao & Gu, 2024), registered by gptzoo.plugins.mamba.

Mamba-2 (``mamba2``): from u (d_model) one projection gives z, x, B, C (inner width expand ·
d_model for z and x, n_groups × d_state for B and C) and dt (one per head); x, B and C pass
through a short causal convolution and SiLU. Per head h, with a scalar A_h = -exp(A_log_h) and
its state S (head_dim × d_state):

    Δ_t = clamp(softplus(dt_t + dt_bias), dt limits)
    S_t = exp(Δ_t A) S_{t-1} + Δ_t x_t B_tᵀ
    y_t = S_t C_t + D x_t
    out = out_proj(RMSNorm(y ⊙ SiLU(z)))          the norm over each group's channels (Falcon-H1: none)

B and C are shared by the heads of a group (n_groups), as key/value heads are in GQA. Unrolled,
y = M x + D x with M_ij = C_iᵀB_j · exp(Σ_{j<k≤i} Δ_k A) · Δ_j: a masked T×T matrix per head,
which is what inspection reports (``implicit_attention``, Ali et al., 2024, without the D skip).
Training runs the chunked scan (SSD's block decomposition: M within each chunk, the state
carried from chunk to chunk), decoding one token the recurrence; the chunk size changes the
speed, not the result.

It zeroes its inputs at left padding and their Δ (decay 1), so padding leaves the state as it was.
The model's dropout applies to what out_proj reads (the references have none; 0 by default).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from gptzoo.core import Attention, AttentionContext, Dims, InitScheme, Params
from gptzoo.plugins._recurrent import RecurrentCache, ShortConv, zero_padding


class GatedRMSNorm(nn.Module):
    """RMSNorm(y ⊙ SiLU(z)) over groups of ``group_size`` channels, in float32 (Mamba-2's gated
    norm, gate before the norm): y, z (..., width) -> (..., width) in z's dtype."""

    def __init__(self, width: int, group_size: int, eps: float):
        super().__init__()
        self.group_size = group_size
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, y: Tensor, z: Tensor) -> Tensor:
        y = (y.float() * F.silu(z.float())).unflatten(-1, (-1, self.group_size))  # (..., groups, group_size)
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * y.flatten(-2)).to(z.dtype)


def segment_sum(a: Tensor) -> Tensor:
    """a (..., T) -> (..., T, T) with [i, j] = a_{j+1} + ... + a_i for j <= i and -inf above the
    diagonal, so exp of it is the decay from step j to step i (masked sums, no differences of
    cumulative sums, which lose precision)."""
    T = a.size(-1)
    a = a[..., None].expand(*a.shape, T)  # [..., k, j] = a_k
    below = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(-1)
    sums = a.masked_fill(~below, 0).cumsum(-2)  # [..., i, j] = sum of a_k over j < k <= i
    return sums.masked_fill(below.T, float("-inf"))  # above the diagonal


def ssd_scan(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Mamba-2's chunked scan without the D skip: x (b, T, h, p), dt (b, T, h), A (h,), B and C
    (b, T, g, n), state (b, h, p, n) before the first token or None (zeros) -> y (b, T, h, p) and
    the state after the last token, both float32. Heads h = g · r: each group's r heads share B, C."""
    b, T, h, p = x.shape
    g, n = B.shape[2:]
    r, Q = h // g, chunk_size
    pad = -T % Q
    # Padding steps at the end have Δ = 0: decay 1 and no input, so the final state is kept.
    xdt = F.pad(x.float() * dt[..., None], (0, 0, 0, 0, 0, pad))
    a = F.pad(dt * A, (0, 0, 0, pad))  # (b, T', h) log-decays Δ·A
    B, C = (F.pad(t.float(), (0, 0, 0, 0, 0, pad)) for t in (B, C))
    c = (T + pad) // Q
    xdt = xdt.view(b, c, Q, g, r, p)
    B, C = B.view(b, c, Q, g, n), C.view(b, c, Q, g, n)
    a = a.view(b, c, Q, g, r).permute(0, 3, 4, 1, 2)  # (b, g, r, c, Q)
    a_cum = a.cumsum(-1)
    # Within each chunk: the masked matrix M = (C Bᵀ) ⊙ decays, applied to Δ·x.
    scores = torch.einsum("bclgn,bcsgn->bgcls", C, B)  # (b, g, c, Q, Q)
    M = scores[:, :, None] * torch.exp(segment_sum(a))  # (b, g, r, c, Q, Q)
    y = torch.einsum("bgrcls,bcsgrp->bclgrp", M, xdt)
    # Each chunk's contribution to the state at its end, then the states chunk to chunk.
    to_end = torch.exp(a_cum[..., -1:] - a_cum)  # (b, g, r, c, Q)
    chunk_states = torch.einsum("bclgn,bgrcl,bclgrp->bcgrpn", B, to_end, xdt)  # (b, c, g, r, p, n)
    # The state entering each chunk, chunk after chunk (a loop over T / Q chunks keeps the cost
    # linear in T, where the reference's matrix over chunk pairs grows with its square).
    chunk_decay = torch.exp(a_cum[..., -1]).permute(0, 3, 1, 2)[..., None, None]  # (b, c, g, r, 1, 1)
    entering = [torch.zeros_like(chunk_states[:, 0]) if state is None else state.float().view(b, g, r, p, n)]
    # Each chunk's slices unbound once: indexing in the loop would make backward zero-fill whole tensors.
    for decay_i, states_i in zip(chunk_decay.unbind(1), chunk_states.unbind(1), strict=True):
        entering.append(entering[-1] * decay_i + states_i)
    states = torch.stack(entering[:-1], dim=1)  # (b, c, g, r, p, n)
    # What the state entering each chunk gives its tokens.
    y = y + torch.einsum("bclgn,bcgrpn,bgrcl->bclgrp", C, states, torch.exp(a_cum))
    return y.reshape(b, c * Q, h, p)[:, :T], entering[-1].reshape(b, h, p, n)


class Mamba2Params(Params):
    d_state: int = Field(128, gt=0, description="state size n per head (reference: 128)")
    d_conv: int = Field(4, gt=0, description="width of the short causal convolution over x, B and C (reference: 4)")
    expand: int = Field(2, gt=0, description="inner width = expand · d_model (reference: 2)")
    d_inner: int | None = Field(
        None, gt=0, description="the inner width itself, instead of expand · d_model (Falcon-H1's mamba_d_ssm)"
    )
    head_dim: int | None = Field(
        None,
        gt=0,
        description="channels p per head; None: the inner width split into the model's n_heads (reference: 64)",
    )
    n_groups: int = Field(
        1, gt=0, description="groups of heads sharing B and C, as key/value heads are shared in GQA (reference: 1)"
    )
    chunk_size: int = Field(
        32,
        gt=0,
        description="tokens per chunk of the training scan: the speed changes, not the result (reference: 256, sized for its GPU kernel)",
    )
    conv_bias: bool = Field(True, description="a bias in the convolution (reference: true)")
    bias: bool = Field(False, description="biases in in_proj and out_proj (reference: false)")
    in_proj_multipliers: tuple[float, float, float, float, float] | None = Field(
        None,
        description="factors on in_proj's z, x, B, C and dt outputs (Falcon-H1's µP ssm_multipliers); None: 1 each",
    )
    gated_norm: bool = Field(
        True,
        description="out_proj reads RMSNorm(y ⊙ SiLU(z)); false: y ⊙ SiLU(z) without the norm (Falcon-H1's mamba_rms_norm = false)",
    )
    norm_eps: float = Field(1e-5, gt=0, description="epsilon of the gated RMSNorm (reference: 1e-5)")
    dt_min: float = Field(
        0.001, gt=0, description="Δ is initialised log-uniform in [dt_min, dt_max] (reference: 0.001)"
    )
    dt_max: float = Field(0.1, gt=0, description="see dt_min (reference: 0.1)")
    dt_init_floor: float = Field(1e-4, ge=0, description="initial Δ is at least this (reference: 1e-4)")
    dt_limit_min: float = Field(0.0, ge=0, description="Δ is clamped to at least this (reference: 0)")
    dt_limit_max: float | None = Field(
        None, gt=0, description="Δ is clamped to at most this; None: no limit (reference)"
    )
    a_init_min: float = Field(
        1.0, gt=0, description="A = -exp(A_log) starts uniform in [a_init_min, a_init_max] per head (reference: 1)"
    )
    a_init_max: float = Field(16.0, gt=0, description="see a_init_min (reference: 16)")


def _draw_dt_bias(bias: Tensor, dt_min: float, dt_max: float, floor: float) -> None:
    """The published Δ initialisation: Δ log-uniform in [dt_min, dt_max] (at least ``floor``),
    stored as its inverse softplus so that softplus(bias) = Δ at a zero input."""
    dt = torch.exp(torch.rand_like(bias) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
    bias.copy_(dt + torch.log(-torch.expm1(-dt)))


class Mamba2(Attention):
    Params = Mamba2Params
    inspection = "implicit_attention"
    position_hooks = frozenset()
    cache_kind = "state"
    static_cache = True  # a fixed-size state, updated in place

    @classmethod
    def shape(cls, params: Mamba2Params, dims: Dims) -> tuple[int, int, int]:
        """(inner width, heads, channels per head)."""
        inner = params.d_inner or params.expand * dims.d_model
        head_dim = params.head_dim or inner // dims.n_heads
        return inner, inner // max(head_dim, 1), head_dim

    @classmethod
    def check(cls, params: Mamba2Params, dims: Dims) -> None:
        inner, heads, head_dim = cls.shape(params, dims)
        if head_dim == 0 or inner % head_dim:
            raise ValueError(
                f"the inner width {inner} must split into heads of head_dim = "
                f"{params.head_dim or 'inner / n_heads'} channels: set head_dim to a divisor of {inner}"
            )
        if heads % params.n_groups:
            raise ValueError(
                f"{heads} heads cannot form n_groups = {params.n_groups} equal groups: use a divisor of {heads}"
            )
        if params.dt_min > params.dt_max or params.a_init_min > params.a_init_max:
            raise ValueError(
                f"dt_min ({params.dt_min}) <= dt_max ({params.dt_max}) and a_init_min ({params.a_init_min}) "
                f"<= a_init_max ({params.a_init_max}) are needed"
            )

    @classmethod
    def kit_lengths(cls, params: Mamba2Params) -> tuple[int, ...]:
        return (3 * params.chunk_size + 5,)

    def __init__(self, params: Mamba2Params, dims: Dims):
        super().__init__(params, dims)
        self.inner, self.n_heads, self.head_dim = self.shape(params, dims)
        n, g = params.d_state, params.n_groups
        self.conv_dim = self.inner + 2 * g * n  # x, B, C
        # in_proj's rows: [z | x | B | C | dt], as the reference's checkpoints.
        self.in_proj = nn.Linear(dims.d_model, self.inner + self.conv_dim + self.n_heads, bias=params.bias)
        if params.in_proj_multipliers is not None:
            widths = (self.inner, self.inner, g * n, g * n, self.n_heads)
            scale = torch.cat([torch.full((w,), m) for w, m in zip(widths, params.in_proj_multipliers, strict=True)])
            self.register_buffer("in_proj_scale", scale, persistent=False)
        self.conv1d = ShortConv(self.conv_dim, params.d_conv, bias=params.conv_bias)
        self.dt_bias = nn.Parameter(torch.empty(self.n_heads))
        self.A_log = nn.Parameter(torch.empty(self.n_heads))
        self.D = nn.Parameter(torch.empty(self.n_heads))
        self.norm = GatedRMSNorm(self.inner, self.inner // g, params.norm_eps) if params.gated_norm else None
        self.out_proj = nn.Linear(self.inner, dims.d_model, bias=params.bias)
        self.init_state_space()

    @torch.no_grad()
    def init_state_space(self) -> None:
        """A uniform in [a_init_min, a_init_max] per head, D = 1, dt_bias from the Δ range (Mamba-2's reference)."""
        p = self.params
        self.A_log.copy_(torch.log(torch.empty_like(self.A_log).uniform_(p.a_init_min, p.a_init_max)))
        self.D.fill_(1.0)
        _draw_dt_bias(self.dt_bias, p.dt_min, p.dt_max, p.dt_init_floor)

    def init_weights(self, scheme: InitScheme) -> None:
        super().init_weights(scheme)
        self.init_state_space()

    def new_cache(
        self, batch_size: int, max_len: int | None, device: torch.device, dtype: torch.dtype
    ) -> RecurrentCache:
        state = torch.zeros(batch_size, self.n_heads, self.head_dim, self.params.d_state, device=device)
        return RecurrentCache(window=self.conv1d.new_window(batch_size, device, dtype), state=state)

    def cache_bytes(self, n_tokens: int, dtype: torch.dtype = torch.float32) -> int:
        window = self.conv_dim * (self.params.d_conv - 1) * torch.empty((), dtype=dtype).element_size()
        return window + self.n_heads * self.head_dim * self.params.d_state * 4  # the state in float32

    def flops_per_token(self, context_length: int) -> int:
        # Projections, the convolution, then the chunked scan per token: C·B against the chunk's
        # tokens (per group), that matrix applied (per head), the chunk state written and read.
        p, n, g, h = self.head_dim, self.params.d_state, self.params.n_groups, self.n_heads
        Q = min(self.params.chunk_size, context_length)
        projections = 2 * (self.in_proj.weight.numel() + self.out_proj.weight.numel())
        return projections + 2 * self.conv_dim * self.params.d_conv + 2 * Q * (g * n + h * p) + 4 * h * p * n

    def time_steps(self, dt: Tensor) -> Tensor:
        """dt (b, T, h) from in_proj -> Δ in float32."""
        dt = F.softplus(dt.float() + self.dt_bias.float())
        p = self.params
        if p.dt_limit_min > 0 or p.dt_limit_max is not None:
            dt = dt.clamp(min=p.dt_limit_min, max=p.dt_limit_max)
        return dt

    def forward(self, x: Tensor, ctx: AttentionContext, cache: RecurrentCache | None = None) -> Tensor:
        b, T, _ = x.shape
        h, p, n, g = self.n_heads, self.head_dim, self.params.d_state, self.params.n_groups
        projected = self.in_proj(x)
        if self.params.in_proj_multipliers is not None:
            projected = projected * self.in_proj_scale
        z, xBC, dt = projected.split([self.inner, self.conv_dim, h], dim=-1)
        xBC = zero_padding(xBC, ctx.valid)  # padding feeds zeros to the convolution window
        xBC = zero_padding(F.silu(self.conv1d(xBC, None if cache is None else cache.window)), ctx.valid)
        xs, B, C = xBC.split([self.inner, g * n, g * n], dim=-1)
        xs, B, C = xs.view(b, T, h, p), B.view(b, T, g, n), C.view(b, T, g, n)
        dt = zero_padding(self.time_steps(dt), ctx.valid)  # (b, T, h); Δ = 0 at padding: decay 1
        A = -torch.exp(self.A_log.float())  # (h,)
        if ctx.capturing:
            ctx.record(self.implicit_attention(dt, A, B, C))
        if cache is not None and T == 1:
            y = self.step(xs[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], cache.state)[:, None]  # (b, 1, h, p)
        else:
            y, final = ssd_scan(xs, dt, A, B, C, self.params.chunk_size, None if cache is None else cache.state)
            if cache is not None:
                cache.state.copy_(final)
        y = (y + self.D.float()[:, None] * xs.float()).reshape(b, T, self.inner)  # with the D skip
        y = self.norm(y, z) if self.norm is not None else (y * F.silu(z.float())).to(z.dtype)
        return self.out_proj(F.dropout(y, self.dims.dropout, self.training))

    def step(self, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, state: Tensor) -> Tensor:
        """One token: x (b, h, p), dt (b, h), B and C (b, g, n); state (b, h, p, n) updated in place -> y (b, h, p)."""
        r = self.n_heads // self.params.n_groups
        B, C = B.float().repeat_interleave(r, dim=1), C.float().repeat_interleave(r, dim=1)  # (b, h, n)
        decay = torch.exp(dt * A)[..., None, None]  # (b, h, 1, 1)
        state.copy_(state * decay + (dt[..., None] * x.float())[..., None] * B[:, :, None, :])
        return torch.einsum("bhpn,bhn->bhp", state, C)

    def implicit_attention(self, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
        """M (b, h, T, T) with y = M x + D x over this forward's tokens: M_ij = C_iᵀB_j · exp(Σ_{j<k≤i} Δ_k A) · Δ_j."""
        r = self.n_heads // self.params.n_groups
        scores = torch.einsum("btgn,bsgn->bgts", C.float(), B.float()).repeat_interleave(r, dim=1)  # (b, h, T, T)
        decays = torch.exp(segment_sum((dt * A).transpose(1, 2)))  # (b, h, T, T), 0 above the diagonal
        return scores * decays * dt.transpose(1, 2)[:, :, None, :]
