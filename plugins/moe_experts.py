"""The mixture of experts' experts as one operator, for torch.compile (gptzoo.plugins.moe).

Each expert's batch size comes from the routing, so the loop over experts needs the sizes on
the host. Inside an operator of its own that is invisible to torch.compile, which sees one
call with static output shapes: the model compiles to one graph (fullgraph=True) instead of
breaking at every mixture layer. Its backward is written out (the gated unit's derivatives), so
nothing is recomputed and the host reads the sizes once forward and once backward. Eager mode
runs the same loop under autograd, which measured faster than the operator's dispatch.

One form covers both gated units: with g = x·W_g + b_g and u = x·W_u + b_u,
    h = min(g, limit) · σ(alpha · min(g, limit)) · (clamp(u, -limit, limit) + shift),  y = h·W_o + b_o.
SwiGLU is alpha = 1, shift = 0, no limit and no biases; gpt-oss's is alpha = 1.702, shift = 1, limit = 7.
With gelu, g · σ(alpha · g) is GELU's tanh approximation instead (Gemma 4's GeGLU experts).
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from gptzoo.plugins.feed_forward import gelu_tanh


def glu_per_expert(
    grouped: Tensor,
    gate: Tensor,
    up: Tensor,
    out: Tensor,
    ends: Tensor,
    gate_bias: Tensor | None = None,
    up_bias: Tensor | None = None,
    out_bias: Tensor | None = None,
    alpha: float = 1.0,
    limit: float | None = None,
    shift: float = 0.0,
    gelu: bool = False,
    keep: bool = False,
) -> tuple[Tensor, ...]:
    """Rows ``ends[e-1]:ends[e]`` of grouped (n, C) through expert e's gated unit -> (y (n, C),) and,
    with ``keep``, the gate and up pre-activations g, u (n, hidden) for a backward; weights (E, ·, ·),
    biases (E, ·) or None."""
    sizes = ends.diff(prepend=ends.new_zeros(1)).tolist()  # tokens per expert (one host sync)
    E = gate.size(0)
    ys, gs, us = [], [], []
    # unbind, not [e]: its backward stacks the experts' gradients once, where indexing would
    # fill and add a whole (E, hidden, C) gradient per expert.
    per_expert = zip(
        grouped.split(sizes),
        gate.unbind(0),
        up.unbind(0),
        out.unbind(0),
        *((b.unbind(0) if b is not None else [None] * E) for b in (gate_bias, up_bias, out_bias)),
        strict=True,
    )
    for x, w_gate, w_up, w_out, b_gate, b_up, b_out in per_expert:  # x: (n_e, C)
        g, u = F.linear(x, w_gate, b_gate), F.linear(x, w_up, b_up)  # (n_e, hidden) each
        ys.append(F.linear(gated_unit(g, u, alpha, limit, shift, gelu), w_out, b_out))  # (n_e, C)
        if keep:
            gs.append(g)
            us.append(u)
    return (torch.cat(ys), torch.cat(gs), torch.cat(us)) if keep else (torch.cat(ys),)


def gated_unit(g: Tensor, u: Tensor, alpha: float, limit: float | None, shift: float, gelu: bool = False) -> Tensor:
    """min(g, limit) · σ(alpha · min(g, limit)) · (clamp(u, -limit, limit) + shift); silu(g) · u by default;
    with ``gelu``, gelu_tanh(g) in place of g · σ(alpha · g)."""
    if limit is not None:
        g, u = g.clamp(max=limit), u.clamp(min=-limit, max=limit)
    return (gelu_tanh(g) if gelu else g * torch.sigmoid(alpha * g)) * (u + shift)


def _activation_and_slope(g: Tensor, alpha: float, gelu: bool) -> tuple[Tensor, Tensor]:
    """The gate's activation at g and its derivative: g · σ(αg) and σ(αg)(1 + αg(1 - σ(αg))), or GELU's tanh
    approximation 0.5 g (1 + t) and 0.5 (1 + t) + 0.5 g (1 - t²) c (1 + 3 · 0.044715 g²), t = tanh(c (g + 0.044715 g³)),
    c = √(2/π)."""
    if gelu:
        c = math.sqrt(2 / math.pi)
        t = torch.tanh(c * (g + 0.044715 * g**3))
        return 0.5 * g * (1 + t), 0.5 * (1 + t) + 0.5 * g * (1 - t * t) * c * (1 + 3 * 0.044715 * g * g)
    sig = torch.sigmoid(alpha * g)
    return g * sig, sig * (1 + alpha * g * (1 - sig))


@torch.library.custom_op("gptzoo::moe_experts", mutates_args=())
def moe_experts(
    grouped: Tensor,
    gate: Tensor,
    up: Tensor,
    out: Tensor,
    ends: Tensor,
    gate_bias: Tensor | None = None,
    up_bias: Tensor | None = None,
    out_bias: Tensor | None = None,
    alpha: float = 1.0,
    limit: float | None = None,
    shift: float = 0.0,
    gelu: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """``glu_per_expert`` as one operator, for torch.compile: (y, g, u)."""
    return glu_per_expert(
        grouped, gate, up, out, ends, gate_bias, up_bias, out_bias, alpha, limit, shift, gelu, keep=True
    )


@moe_experts.register_fake
def _(
    grouped,
    gate,
    up,
    out,
    ends,
    gate_bias=None,
    up_bias=None,
    out_bias=None,
    alpha=1.0,
    limit=None,
    shift=0.0,
    gelu=False,
):
    n, hidden = grouped.size(0), gate.size(1)
    dtype = torch.result_type(grouped, gate)
    return (
        grouped.new_empty(n, out.size(1), dtype=dtype),
        grouped.new_empty(n, hidden, dtype=dtype),
        grouped.new_empty(n, hidden, dtype=dtype),
    )


@torch.library.custom_op("gptzoo::moe_experts_backward", mutates_args=())
def moe_experts_backward(
    dy: Tensor,
    grouped: Tensor,
    g: Tensor,
    u: Tensor,
    gate: Tensor,
    up: Tensor,
    out: Tensor,
    ends: Tensor,
    alpha: float = 1.0,
    limit: float | None = None,
    shift: float = 0.0,
    gelu: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``moe_experts``' y from dy (n, C): for grouped, the three weight stacks and the
    three bias stacks (whether or not the experts have biases)."""
    sizes = ends.diff(prepend=ends.new_zeros(1)).tolist()
    d_gate, d_up, d_out = torch.zeros_like(gate), torch.zeros_like(up), torch.zeros_like(out)
    d_gate_bias, d_up_bias, d_out_bias = (
        gate.new_zeros(gate.shape[:2]),
        up.new_zeros(up.shape[:2]),
        out.new_zeros(out.shape[:2]),
    )
    dxs = []
    parts = zip(dy.split(sizes), grouped.split(sizes), g.split(sizes), u.split(sizes), strict=True)
    for e, (dy_e, x, g_e, u_e) in enumerate(parts):
        g_c, u_c = (g_e, u_e) if limit is None else (g_e.clamp(max=limit), u_e.clamp(min=-limit, max=limit))
        act, slope = _activation_and_slope(g_c, alpha, gelu)
        dh = dy_e @ out[e]  # (n_e, hidden)
        d_out[e] = dy_e.T @ (act * (u_c + shift))  # (C, hidden)
        du = dh * act
        dg = dh * (u_c + shift) * slope
        if limit is not None:  # no gradient where a clamp held the value
            du = du * ((u_e >= -limit) & (u_e <= limit))
            dg = dg * (g_e <= limit)
        d_gate[e], d_up[e] = dg.T @ x, du.T @ x  # (hidden, C) each
        d_gate_bias[e], d_up_bias[e], d_out_bias[e] = dg.sum(0), du.sum(0), dy_e.sum(0)
        dxs.append(dg @ gate[e] + du @ up[e])  # (n_e, C)
    return torch.cat(dxs), d_gate, d_up, d_out, d_gate_bias, d_up_bias, d_out_bias


@moe_experts_backward.register_fake
def _(dy, grouped, g, u, gate, up, out, ends, alpha=1.0, limit=None, shift=0.0, gelu=False):
    return (
        torch.empty_like(grouped),
        torch.empty_like(gate),
        torch.empty_like(up),
        torch.empty_like(out),
        gate.new_empty(gate.shape[:2]),
        up.new_empty(up.shape[:2]),
        out.new_empty(out.shape[:2]),
    )


@register_flop_formula(torch.ops.gptzoo.moe_experts)
def _experts_flops(grouped_shape, gate_shape, *args, **kwargs) -> int:
    (n, C), hidden = grouped_shape, gate_shape[1]
    return 2 * n * 3 * hidden * C  # three matrices per row


@register_flop_formula(torch.ops.gptzoo.moe_experts_backward)
def _experts_backward_flops(dy_shape, grouped_shape, g_shape, *args, **kwargs) -> int:
    (n, C), hidden = grouped_shape, g_shape[1]
    return 2 * 2 * n * 3 * hidden * C  # each matrix: the input's gradient and the weight's


def _save_for_backward(ctx, inputs, output):
    grouped, gate, up, out, ends, gate_bias, up_bias, out_bias, alpha, limit, shift, gelu = inputs
    ctx.save_for_backward(grouped, output[1], output[2], gate, up, out, ends)
    ctx.form = (alpha, limit, shift, gelu)
    ctx.has_bias = (gate_bias is not None, up_bias is not None, out_bias is not None)


def _backward(ctx, dy, _dg, _du):
    dx, d_gate, d_up, d_out, *d_biases = torch.ops.gptzoo.moe_experts_backward(
        dy.contiguous(), *ctx.saved_tensors, *ctx.form
    )
    d_biases = [d if has else None for d, has in zip(d_biases, ctx.has_bias, strict=True)]
    return dx, d_gate, d_up, d_out, None, *d_biases, None, None, None, None


moe_experts.register_autograd(_backward, setup_context=_save_for_backward)
