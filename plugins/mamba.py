"""Selective state-space token mixers: Mamba-2 (SSD, Dao & Gu, 2024; gptzoo.plugins.mamba2) and Mamba (Gu & Dao, 2023).

Mamba (``mamba``): per channel d of the inner width, a state of d_state numbers with its own
decays A_d = -exp(A_log_d) (a d_state-vector, no heads):

    Δ_t = softplus(dt_proj(x_t W_dt) + dt_bias)    (per channel, through a rank dt_rank bottleneck)
    S_t = exp(Δ_t A) ⊙ S_{t-1} + Δ_t x_t B_tᵀ     B_t, C_t = x_t W_B, x_t W_C (d_state each)
    y_t = S_t C_t + D x_t,    out = out_proj(y ⊙ SiLU(z))

Its decay differs per channel and per state entry, so there is no per-head matrix to show without
inventing heads: inspection reports the norm of the layer's whole state (every channel together)
after each token, as one "head" (``state_norms``). Training runs the scan on segments of 256
tokens, each in about 2·16 sequential steps (``selective_scan``), holding every state as the
reference's PyTorch path does. Jamba and
Falcon Mamba add an RMSNorm on Δ's input, B and C (``bcdt_norm``).

Both zero their inputs at left padding and its Δ (decay 1), so padding leaves the state as it was.
The model's dropout applies to what out_proj reads (the references have none; 0 by default).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from gptzoo.core import Attention, AttentionContext, Dims, InitScheme, Params
from gptzoo.plugins._recurrent import RecurrentCache, ShortConv, zero_padding
from gptzoo.plugins.mamba2 import Mamba2, _draw_dt_bias
from gptzoo.registry import hookimpl

SEGMENT_TOKENS = 256  # Mamba's scan runs this many tokens at a time (see Mamba.forward)


def selective_scan(log_decays: Tensor, inputs: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """S_t = exp(log_decays_t) ⊙ S_{t-1} + inputs_t for every t: (b, T, d, n) each, state (b, d, n)
    before the first token or None (zeros) -> every S_t (b, T, d, n) and the last, float32.

    In two sequential passes of about √T steps instead of one of T: the recurrence runs within
    chunks of Q tokens, all chunks at once from a zero state, then from chunk to chunk, and each
    token adds its chunk's entering state decayed to it (exp of the decays' sum, at most 1)."""
    b, T, d, n = inputs.shape
    Q = math.ceil(math.sqrt(T))  # ⌈√T⌉ (math.sqrt, not math.isqrt, which torch.compile cannot trace)
    pad = -T % Q
    # Padding steps at the end: decay 1, no input.
    log_decays, inputs = (F.pad(t, (0, 0, 0, 0, 0, pad)).view(b, -1, Q, d, n) for t in (log_decays, inputs))
    decays = torch.exp(log_decays)
    local = [torch.zeros_like(inputs[:, :, 0])]  # (b, c, d, n) per step within the chunks
    for decay_i, input_i in zip(decays.unbind(2), inputs.unbind(2), strict=True):  # unbound once, as above
        local.append(decay_i * local[-1] + input_i)
    within = torch.stack(local[1:], dim=2)  # (b, c, Q, d, n): each chunk's recurrence from zero
    decayed = torch.exp(log_decays.cumsum(2))  # (b, c, Q, d, n): from the chunk's start to each token
    entering = [torch.zeros_like(inputs[:, 0, 0]) if state is None else state.float()]
    for decay_j, within_j in zip(decayed[:, :, -1].unbind(1), within[:, :, -1].unbind(1), strict=True):
        entering.append(decay_j * entering[-1] + within_j)
    every = within + decayed * torch.stack(entering[:-1], dim=1)[:, :, None]
    return every.view(b, -1, d, n)[:, :T], entering[-1]


class MambaParams(Params):
    d_state: int = Field(16, gt=0, description="state entries n per channel (reference: 16)")
    d_conv: int = Field(4, gt=0, description="width of the short causal convolution over x (reference: 4)")
    expand: int = Field(2, gt=0, description="inner width = expand · d_model (reference: 2)")
    dt_rank: int | None = Field(
        None, gt=0, description="width of Δ's low-rank projection; None: ceil(d_model / 16) (reference: 'auto')"
    )
    conv_bias: bool = Field(True, description="a bias in the convolution (reference: true)")
    bias: bool = Field(False, description="biases in in_proj and out_proj (reference: false)")
    dt_min: float = Field(
        0.001, gt=0, description="Δ is initialised log-uniform in [dt_min, dt_max] (reference: 0.001)"
    )
    dt_max: float = Field(0.1, gt=0, description="see dt_min (reference: 0.1)")
    dt_init_floor: float = Field(1e-4, ge=0, description="initial Δ is at least this (reference: 1e-4)")
    dt_init: Literal["random", "constant"] = Field(
        "random", description="dt_proj's weight uniform in ±dt_scale/√dt_rank, or that constant (reference: random)"
    )
    dt_scale: float = Field(1.0, gt=0, description="see dt_init (reference: 1)")
    bcdt_norm: Literal["none", "learned", "plain"] = Field(
        "none",
        description="an RMSNorm on Δ's low-rank input, on B and on C: with a learned scale (Jamba), without (Falcon Mamba), or none (Mamba)",
    )
    norm_eps: float = Field(1e-6, gt=0, description="epsilon of those norms (Jamba, Falcon Mamba: 1e-6)")


class Mamba(Attention):
    Params = MambaParams
    inspection = "state_norms"
    position_hooks = frozenset()
    cache_kind = "state"
    static_cache = True  # a fixed-size state, updated in place

    @classmethod
    def check(cls, params: MambaParams, dims: Dims) -> None:
        if params.dt_min > params.dt_max:
            raise ValueError(f"dt_min ({params.dt_min}) must not exceed dt_max ({params.dt_max})")

    def __init__(self, params: MambaParams, dims: Dims):
        super().__init__(params, dims)
        C, n = dims.d_model, params.d_state
        self.inner = params.expand * C
        self.dt_rank = params.dt_rank or math.ceil(C / 16)
        # in_proj's rows: [x | z], as the reference's checkpoints.
        self.in_proj = nn.Linear(C, 2 * self.inner, bias=params.bias)
        self.conv1d = ShortConv(self.inner, params.d_conv, bias=params.conv_bias)
        self.x_proj = nn.Linear(self.inner, self.dt_rank + 2 * n, bias=False)  # [Δ's input | B | C]
        self.dt_proj = nn.Linear(self.dt_rank, self.inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(self.inner, n))
        self.D = nn.Parameter(torch.empty(self.inner))
        if params.bcdt_norm != "none":
            learned = params.bcdt_norm == "learned"
            self.dt_layernorm = nn.RMSNorm(self.dt_rank, eps=params.norm_eps, elementwise_affine=learned)
            self.b_layernorm = nn.RMSNorm(n, eps=params.norm_eps, elementwise_affine=learned)
            self.c_layernorm = nn.RMSNorm(n, eps=params.norm_eps, elementwise_affine=learned)
        self.out_proj = nn.Linear(self.inner, C, bias=params.bias)
        self.init_state_space()

    @torch.no_grad()
    def init_state_space(self) -> None:
        """A = 1..d_state in every channel (S4D-real), D = 1, dt_proj from the Δ range (Mamba's reference)."""
        p = self.params
        self.A_log.copy_(
            torch.log(torch.arange(1, p.d_state + 1, device=self.A_log.device).float()).expand_as(self.A_log)
        )
        self.D.fill_(1.0)
        std = p.dt_scale * self.dt_rank**-0.5
        if p.dt_init == "constant":
            self.dt_proj.weight.fill_(std)
        else:
            self.dt_proj.weight.uniform_(-std, std)
        _draw_dt_bias(self.dt_proj.bias, p.dt_min, p.dt_max, p.dt_init_floor)

    def init_weights(self, scheme: InitScheme) -> None:
        super().init_weights(scheme)
        self.init_state_space()

    def new_cache(
        self, batch_size: int, max_len: int | None, device: torch.device, dtype: torch.dtype
    ) -> RecurrentCache:
        state = torch.zeros(batch_size, self.inner, self.params.d_state, device=device)
        return RecurrentCache(window=self.conv1d.new_window(batch_size, device, dtype), state=state)

    def cache_bytes(self, n_tokens: int, dtype: torch.dtype = torch.float32) -> int:
        window = self.inner * (self.params.d_conv - 1) * torch.empty((), dtype=dtype).element_size()
        return window + self.inner * self.params.d_state * 4  # the state in float32

    def flops_per_token(self, context_length: int) -> int:
        # Projections, the convolution, then per channel and state entry: the input Δ·x·B (2),
        # the decay and the sum (2), the read against C (2).
        projections = sum(2 * m.weight.numel() for m in (self.in_proj, self.x_proj, self.dt_proj, self.out_proj))
        return projections + 2 * self.inner * self.params.d_conv + 6 * self.inner * self.params.d_state

    def forward(self, x: Tensor, ctx: AttentionContext, cache: RecurrentCache | None = None) -> Tensor:
        b, T, _ = x.shape
        n = self.params.d_state
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        xs = zero_padding(xs, ctx.valid)  # padding feeds zeros to the convolution window
        xs = zero_padding(F.silu(self.conv1d(xs, None if cache is None else cache.window)), ctx.valid)
        dt, B, C = self.x_proj(xs).split([self.dt_rank, n, n], dim=-1)
        if self.params.bcdt_norm != "none":
            dt, B, C = self.dt_layernorm(dt), self.b_layernorm(B), self.c_layernorm(C)
        dt = zero_padding(F.softplus(self.dt_proj(dt).float()), ctx.valid)  # (b, T, d); Δ = 0 at padding: decay 1
        A = -torch.exp(self.A_log.float())  # (d, n)
        # A state per token, (b, T, d, n), is d·n numbers a token: formed for the whole text at once
        # it outgrows the processor's caches and the time per token grows with the length, so the
        # scan runs SEGMENT_TOKENS at a time (split once: slicing in the loop zero-fills in backward).
        state, outputs, norms = None if cache is None else cache.state, [], []
        for dt_s, x_s, B_s, C_s in zip(
            *(t.split(SEGMENT_TOKENS, dim=1) for t in (dt, xs.float(), B.float(), C)), strict=True
        ):
            inputs = (dt_s * x_s)[..., None] * B_s[:, :, None, :]  # (b, segment, d, n)
            every, state = selective_scan(dt_s[..., None] * A, inputs, state)
            outputs.append(torch.einsum("btdn,btn->btd", every, C_s.float()))
            if ctx.capturing:
                norms.append(every.flatten(2).norm(dim=-1))
        if cache is not None:
            cache.state.copy_(state)
        if ctx.capturing:
            ctx.record(torch.cat(norms, 1)[:, None])  # (b, 1, T): the whole state's norm
        y = torch.cat(outputs, 1) + self.D.float() * xs.float()
        return self.out_proj(F.dropout((y * F.silu(z.float())).to(x.dtype), self.dims.dropout, self.training))


@hookimpl
def register_components(register):
    register("attention", "mamba2", Mamba2)
    register("attention", "mamba", Mamba)
