"""Mixture of experts: a router sends each token to ``top_k`` of ``n_experts`` SwiGLU experts.

The routing conventions of the open families are params:

==================  =========  ===============  ============  ================  =====================
model               scoring    normalize_top_k  routed_scale  n_shared_experts  choosing
==================  =========  ===============  ============  ================  =====================
Mixtral             softmax    true             1             0                 top k
Qwen1.5/2-MoE       softmax    false            1             (theirs is gated) top k
Qwen3-MoE           softmax    true             1             0                 top k
DeepSeek-V3         sigmoid    true             2.5           1                 expert_bias, 4 of 8 groups
==================  =========  ===============  ============  ================  =====================

Softmax, then the top k, then renormalising the k weights is the same as a softmax over the
top k logits (Mixtral's two spellings). DeepSeek-V3 chooses differently from how it weighs: a
per-expert bias (``e_score_correction_bias``, which its training nudges to balance the load
instead of an auxiliary loss) is added to the scores for choosing only, and a token may only
choose experts from its ``top_groups`` best of ``n_groups`` groups, a group scoring the sum of
its two best biased scores (node-limited routing: each group lives on one node).

Dispatch is dropless: every (token, choice) pair is sorted by expert and each expert
multiplies its contiguous slice once; no token is dropped and no capacity is set. Two
auxiliary losses are reported for training: the load-balancing loss of Switch Transformer /
Mixtral and ST-MoE's router z-loss.
"""

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.utils.flop_counter import register_flop_formula

from gptzoo.core import AuxiliaryLoss, Dims, FeedForward, InitScheme, Params
from gptzoo.plugins.feed_forward import GLUParams, SwiGLUFeedForward, glu_hidden
from gptzoo.registry import hookimpl


class MoEParams(Params):
    n_experts: int = Field(8, ge=1, description="routed experts per layer")
    top_k: int = Field(2, ge=1, description="experts each token is sent to")
    hidden: int | None = Field(
        None, gt=0, description="each expert's SwiGLU width; None: 8/3 × d_model rounded up to a multiple of 64"
    )
    n_shared_experts: int = Field(
        0,
        ge=0,
        description="experts every token also goes through, as one SwiGLU n_shared_experts × hidden wide (DeepSeek)",
    )
    scoring: Literal["softmax", "sigmoid"] = Field(
        "softmax",
        description="router scores: softmax over experts (Mixtral, Qwen), or each expert's sigmoid (DeepSeek-V3)",
    )
    normalize_top_k: bool = Field(
        True,
        description="rescale the chosen experts' scores to sum to 1 (Mixtral, Qwen3-MoE, DeepSeek-V3); false: the raw scores (Qwen1.5-MoE, DeepSeek-V2)",
    )
    routed_scale: float = Field(
        1.0, gt=0, description="multiplies the routed experts' weights (DeepSeek's routed_scaling_factor)"
    )
    expert_bias: bool = Field(
        False,
        description="a per-expert bias added to the scores for choosing the experts, not to their weights (DeepSeek-V3's e_score_correction_bias): a buffer, zero at initialisation, read from checkpoints; training keeps it fixed (DeepSeek's bias updates are not implemented)",
    )
    n_groups: int = Field(
        1,
        ge=1,
        description="the experts in this many equal groups, a group scoring the sum of its two best scores (DeepSeek-V3's n_group: 8)",
    )
    top_groups: int | None = Field(
        None,
        ge=1,
        description="each token chooses its experts within its best this many groups (DeepSeek-V3's topk_group: 4); None: all n_groups",
    )
    balance_loss_weight: float = Field(
        0.01,
        ge=0,
        description="coefficient of the load-balancing loss in training (Switch: 0.01; 0 logs it without training on it)",
    )
    z_loss_weight: float = Field(
        0.0,
        ge=0,
        description="coefficient of the router z-loss, mean(logsumexp(logits)²) (ST-MoE: 0.001); 0 logs it without training on it",
    )


class MixtureOfExperts(FeedForward):
    """x (B, T, C) -> Σ over the token's top-k experts of weight · SwiGLU_e(x) (+ shared experts).

    Expert weights are stacked Parameters: ``expert_gate`` and ``expert_up`` (E, hidden, C),
    ``expert_out`` (E, C, hidden), so expert e computes
    ``(silu(x @ expert_gate[e].T) * (x @ expert_up[e].T)) @ expert_out[e].T``.
    """

    Params = MoEParams

    @classmethod
    def check(cls, params: MoEParams, dims: Dims) -> None:
        if params.top_k > params.n_experts:
            raise ValueError(f"top_k={params.top_k} is more than n_experts={params.n_experts}")
        if params.n_experts % params.n_groups:
            raise ValueError(f"n_experts={params.n_experts} is not divisible into n_groups={params.n_groups}")
        per_group = params.n_experts // params.n_groups
        if params.n_groups > 1 and per_group < 2:
            raise ValueError(
                f"n_groups={params.n_groups} leaves {per_group} expert per group; a group scores its two best experts, so give each at least 2"
            )
        top_groups = params.top_groups or params.n_groups
        if top_groups > params.n_groups:
            raise ValueError(f"top_groups={top_groups} is more than n_groups={params.n_groups}")
        if params.top_k > top_groups * per_group:
            raise ValueError(
                f"top_k={params.top_k} is more than the {top_groups * per_group} experts in top_groups={top_groups} groups of {per_group}"
            )

    def __init__(self, params: MoEParams, dims: Dims):
        super().__init__(params, dims)
        C, E = dims.d_model, params.n_experts
        self.hidden = params.hidden or glu_hidden(C)
        self.router = nn.Linear(C, E, bias=False)
        self.expert_gate = nn.Parameter(torch.empty(E, self.hidden, C))
        self.expert_up = nn.Parameter(torch.empty(E, self.hidden, C))
        self.expert_out = nn.Parameter(torch.empty(E, C, self.hidden))
        self.shared = (
            SwiGLUFeedForward(GLUParams(hidden=params.n_shared_experts * self.hidden), dims)
            if params.n_shared_experts
            else None
        )
        self.register_buffer("expert_bias", torch.zeros(E) if params.expert_bias else None)
        self.init_weights("torch_default")
        self._routing: tuple[Tensor, Tensor, Tensor] | None = None

    def init_weights(self, scheme: InitScheme) -> None:
        """gpt2: N(0, 0.02), each expert's output matrix N(0, 0.02/√(2·n_layers)) as a residual
        projection; torch_default: each expert matrix drawn as nn.Linear would draw it."""
        super().init_weights(scheme)  # the router, an nn.Linear
        for weight in (self.expert_gate, self.expert_up, self.expert_out):
            if scheme == "gpt2":
                std = 0.02 / math.sqrt(2 * self.dims.n_layers) if weight is self.expert_out else 0.02
                nn.init.normal_(weight, mean=0.0, std=std)
            else:
                for matrix in weight:
                    nn.init.kaiming_uniform_(matrix, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        tokens = x.reshape(-1, C)  # (N, C)
        logits = self.router(tokens).float()  # (N, E), routed in float32 as Mixtral does
        scores = logits.softmax(-1) if self.params.scoring == "softmax" else logits.sigmoid()
        chosen = self._choose(scores)  # (N, k)
        weights = scores.gather(1, chosen)  # (N, k)
        if self.params.normalize_top_k:
            weights = weights / weights.sum(-1, keepdim=True)
        weights = weights * self.params.routed_scale
        self._routing = (logits, scores, chosen)
        out = self._dispatch(tokens, weights.to(x.dtype), chosen)  # (N, C)
        if self.shared is not None:
            out = out + self.shared(tokens)
        return out.view(B, T, C)

    def _choose(self, scores: Tensor) -> Tensor:
        """The top k experts of each token (N, E) -> (N, k), after the bias and within the best groups."""
        p = self.params
        choice = scores if self.expert_bias is None else scores + self.expert_bias.float()  # (N, E)
        top_groups = p.top_groups or p.n_groups
        if top_groups < p.n_groups:
            N = scores.size(0)
            groups = choice.view(N, p.n_groups, -1)  # (N, G, E/G)
            group_scores = groups.topk(2, dim=-1).values.sum(-1)  # (N, G)
            best = group_scores.topk(top_groups, dim=-1).indices  # (N, top_groups)
            left_out = torch.ones_like(group_scores, dtype=torch.bool).scatter_(1, best, False)  # (N, G)
            choice = groups.masked_fill(left_out.unsqueeze(-1), float("-inf")).view(N, -1)  # (N, E)
        return choice.topk(p.top_k, dim=-1).indices

    def _dispatch(self, tokens: Tensor, weights: Tensor, chosen: Tensor) -> Tensor:
        """Sort the N·k (token, expert) pairs by expert; each expert runs once on its slice."""
        k = self.params.top_k
        sorted_experts, order = chosen.flatten().sort(stable=True)  # (N·k,) each: pairs grouped by expert
        token_of_pair = order // k
        # Where each expert's slice ends, by a search of static shape (bincount's depends on the data).
        ends = torch.searchsorted(
            sorted_experts, torch.arange(self.params.n_experts, device=chosen.device), right=True
        )  # (E,)
        grouped = tokens[token_of_pair]  # (N·k, C)
        experts = (self.expert_gate, self.expert_up, self.expert_out)
        if torch.is_autocast_enabled(
            tokens.device.type
        ):  # an op of its own: autocast does not reach inside, so cast here
            dtype = torch.get_autocast_dtype(tokens.device.type)
            grouped, experts = grouped.to(dtype), tuple(w.to(dtype) for w in experts)
        if torch.compiler.is_compiling():  # one opaque operator: no graph break
            outputs = torch.ops.gptzoo.moe_experts(grouped, *experts, ends)[0]  # (N·k, C)
        else:  # autograd through the loop, the faster path in eager mode (no written-out backward to dispatch)
            outputs = swiglu_per_expert(grouped, *experts, ends)[0]
        weighted = outputs * weights.flatten()[order, None].to(outputs.dtype)  # (N·k, C)
        return torch.zeros_like(tokens, dtype=weighted.dtype).index_add_(0, token_of_pair, weighted)  # (N, C)

    def auxiliary_losses(self) -> dict[str, AuxiliaryLoss]:
        """From the last forward: ``moe_balance`` = E · Σ_e f_e · P_e, with f_e the fraction of
        tokens whose top k include expert e and P_e the mean router probability of e (Switch
        Transformer's loss, in Mixtral's top-k form: k when perfectly balanced, up to E·k when
        one expert takes every token); sigmoid scores are normalised to sum to 1 for P. And
        ``moe_z`` = mean over tokens of logsumexp(router logits)² (ST-MoE)."""
        if self._routing is None:
            return {}
        logits, scores, chosen = self._routing
        E = self.params.n_experts
        fraction = torch.zeros(E, device=scores.device).index_add_(
            0, chosen.flatten(), torch.ones(chosen.numel(), device=scores.device)
        ) / chosen.size(0)  # (E,)
        probs = scores if self.params.scoring == "softmax" else scores / scores.sum(-1, keepdim=True)
        balance = E * (fraction * probs.mean(0)).sum()
        z = logits.logsumexp(-1).square().mean()
        return {
            "moe_balance": AuxiliaryLoss(balance, self.params.balance_loss_weight),
            "moe_z": AuxiliaryLoss(z, self.params.z_loss_weight),
        }

    def active_parameters(self) -> int:
        """The router and the k chosen experts (the shared ones count themselves)."""
        return self.router.weight.numel() + self.params.top_k * 3 * self.hidden * self.dims.d_model

    def flops_per_token(self, context_length: int) -> int:
        return 2 * self.active_parameters()


# ---- the experts as one operator, for torch.compile -----------------------------------------------
# Each expert's batch size comes from the routing, so the loop over experts needs the sizes on
# the host. Inside an operator of its own that is invisible to torch.compile, which sees one
# call with static output shapes: the model compiles to one graph (fullgraph=True) instead of
# breaking at every mixture layer. Its backward is written out (SwiGLU's derivatives), so
# nothing is recomputed and the host reads the sizes once forward and once backward. Eager mode
# runs the same loop under autograd, which measured faster than the operator's dispatch.


def swiglu_per_expert(
    grouped: Tensor, gate: Tensor, up: Tensor, out: Tensor, ends: Tensor, keep: bool = False
) -> tuple[Tensor, ...]:
    """Rows ``ends[e-1]:ends[e]`` of grouped (n, C) through expert e's SwiGLU -> (y (n, C),) and,
    with ``keep``, the gate and up activations g, u (n, hidden) for a backward; weights (E, ·, ·)."""
    sizes = ends.diff(prepend=ends.new_zeros(1)).tolist()  # tokens per expert (one host sync)
    ys, gs, us = [], [], []
    # unbind, not [e]: its backward stacks the experts' gradients once, where indexing would
    # fill and add a whole (E, hidden, C) gradient per expert.
    for x, w_gate, w_up, w_out in zip(
        grouped.split(sizes), gate.unbind(0), up.unbind(0), out.unbind(0), strict=True
    ):  # x: (n_e, C)
        g, u = F.linear(x, w_gate), F.linear(x, w_up)  # (n_e, hidden) each
        ys.append(F.linear(F.silu(g) * u, w_out))  # (n_e, C)
        if keep:
            gs.append(g)
            us.append(u)
    return (torch.cat(ys), torch.cat(gs), torch.cat(us)) if keep else (torch.cat(ys),)


@torch.library.custom_op("gptzoo::moe_experts", mutates_args=())
def moe_experts(grouped: Tensor, gate: Tensor, up: Tensor, out: Tensor, ends: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``swiglu_per_expert`` as one operator, for torch.compile: (y, g, u)."""
    return swiglu_per_expert(grouped, gate, up, out, ends, keep=True)


@moe_experts.register_fake
def _(grouped, gate, up, out, ends):
    n, hidden = grouped.size(0), gate.size(1)
    dtype = torch.result_type(grouped, gate)
    return (
        grouped.new_empty(n, out.size(1), dtype=dtype),
        grouped.new_empty(n, hidden, dtype=dtype),
        grouped.new_empty(n, hidden, dtype=dtype),
    )


@torch.library.custom_op("gptzoo::moe_experts_backward", mutates_args=())
def moe_experts_backward(
    dy: Tensor, grouped: Tensor, g: Tensor, u: Tensor, gate: Tensor, up: Tensor, out: Tensor, ends: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``moe_experts``' y for grouped and the three weight stacks, from dy (n, C)."""
    sizes = ends.diff(prepend=ends.new_zeros(1)).tolist()
    d_gate, d_up, d_out = torch.zeros_like(gate), torch.zeros_like(up), torch.zeros_like(out)
    dxs = []
    parts = zip(dy.split(sizes), grouped.split(sizes), g.split(sizes), u.split(sizes), strict=True)
    for e, (dy_e, x, g_e, u_e) in enumerate(parts):
        sig = torch.sigmoid(g_e)
        silu = g_e * sig
        dh = dy_e @ out[e]  # (n_e, hidden)
        d_out[e] = dy_e.T @ (silu * u_e)  # (C, hidden)
        du = dh * silu
        dg = dh * u_e * sig * (1 + g_e * (1 - sig))  # silu'(g) = σ(g)(1 + g(1 - σ(g)))
        d_gate[e], d_up[e] = dg.T @ x, du.T @ x  # (hidden, C) each
        dxs.append(dg @ gate[e] + du @ up[e])  # (n_e, C)
    return torch.cat(dxs), d_gate, d_up, d_out


@moe_experts_backward.register_fake
def _(dy, grouped, g, u, gate, up, out, ends):
    return torch.empty_like(grouped), torch.empty_like(gate), torch.empty_like(up), torch.empty_like(out)


@register_flop_formula(torch.ops.gptzoo.moe_experts)
def _experts_flops(grouped_shape, gate_shape, *args, **kwargs) -> int:
    (n, C), hidden = grouped_shape, gate_shape[1]
    return 2 * n * 3 * hidden * C  # three matrices per row


@register_flop_formula(torch.ops.gptzoo.moe_experts_backward)
def _experts_backward_flops(dy_shape, grouped_shape, g_shape, *args, **kwargs) -> int:
    (n, C), hidden = grouped_shape, g_shape[1]
    return 2 * 2 * n * 3 * hidden * C  # each matrix: the input's gradient and the weight's


def _save_for_backward(ctx, inputs, output):
    grouped, gate, up, out, ends = inputs
    ctx.save_for_backward(grouped, output[1], output[2], gate, up, out, ends)


def _backward(ctx, dy, _dg, _du):
    return (*torch.ops.gptzoo.moe_experts_backward(dy.contiguous(), *ctx.saved_tensors), None)


moe_experts.register_autograd(_backward, setup_context=_save_for_backward)


@hookimpl
def register_components(register):
    register("feed_forward", "moe", MixtureOfExperts)
