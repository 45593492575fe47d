"""Mixture of experts: a router sends each token to ``top_k`` of ``n_experts`` SwiGLU experts.

The routing conventions of the open families are params:

==================  =========  ===============  ==============  ==================
model               scoring    normalize_top_k  routed_scale    n_shared_experts
==================  =========  ===============  ==============  ==================
Mixtral             softmax    true             1               0
Qwen1.5/2-MoE       softmax    false            1               (theirs is gated)
Qwen3-MoE           softmax    true             1               0
DeepSeek-V2         softmax    false            16 (Lite: 1)    2
DeepSeek-V3         sigmoid    true             2.5             1
==================  =========  ===============  ==============  ==================

Softmax, then the top k, then renormalising the k weights is the same as a softmax over the
top k logits (Mixtral's two spellings). Dispatch is dropless: every (token, choice) pair is
sorted by expert and each expert multiplies its contiguous slice once; no token is dropped and
no capacity is set. Two auxiliary losses are reported for training: the load-balancing loss of
Switch Transformer / Mixtral and ST-MoE's router z-loss.
"""

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from gptzoo.core import AuxiliaryLoss, Dims, FeedForward, InitScheme, Params
from gptzoo.plugins.feed_forward import GLUParams, SwiGLUFeedForward, glu_hidden
from gptzoo.registry import hookimpl


class MoEParams(Params):
    n_experts: int = Field(8, ge=1, description="routed experts per layer")
    top_k: int = Field(2, ge=1, description="experts each token is sent to")
    hidden: int | None = Field(None, gt=0, description="each expert's SwiGLU width; None: 8/3 × d_model rounded up to a multiple of 64")
    n_shared_experts: int = Field(0, ge=0, description="experts every token also goes through, as one SwiGLU n_shared_experts × hidden wide (DeepSeek)")
    scoring: Literal["softmax", "sigmoid"] = Field("softmax", description="router scores: softmax over experts (Mixtral, Qwen), or each expert's sigmoid (DeepSeek-V3)")
    normalize_top_k: bool = Field(True, description="rescale the chosen experts' scores to sum to 1 (Mixtral, Qwen3-MoE, DeepSeek-V3); false: the raw scores (Qwen1.5-MoE, DeepSeek-V2)")
    routed_scale: float = Field(1.0, gt=0, description="multiplies the routed experts' weights (DeepSeek's routed_scaling_factor)")
    balance_loss_weight: float = Field(0.01, ge=0, description="coefficient of the load-balancing loss in training (Switch: 0.01; 0 logs it without training on it)")
    z_loss_weight: float = Field(0.0, ge=0, description="coefficient of the router z-loss, mean(logsumexp(logits)²) (ST-MoE: 0.001); 0 logs it without training on it")


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

    def __init__(self, params: MoEParams, dims: Dims):
        super().__init__(params, dims)
        C, E = dims.d_model, params.n_experts
        self.hidden = params.hidden or glu_hidden(C)
        self.router = nn.Linear(C, E, bias=False)
        self.expert_gate = nn.Parameter(torch.empty(E, self.hidden, C))
        self.expert_up = nn.Parameter(torch.empty(E, self.hidden, C))
        self.expert_out = nn.Parameter(torch.empty(E, C, self.hidden))
        self.shared = SwiGLUFeedForward(GLUParams(hidden=params.n_shared_experts * self.hidden), dims) if params.n_shared_experts else None
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
        weights, chosen = scores.topk(self.params.top_k, dim=-1)  # (N, k) each
        if self.params.normalize_top_k:
            weights = weights / weights.sum(-1, keepdim=True)
        weights = weights * self.params.routed_scale
        self._routing = (logits, scores, chosen)
        out = self._dispatch(tokens, weights.to(x.dtype), chosen)  # (N, C)
        if self.shared is not None:
            out = out + self.shared(tokens)
        return out.view(B, T, C)

    def _dispatch(self, tokens: Tensor, weights: Tensor, chosen: Tensor) -> Tensor:
        """Sort the N·k (token, expert) pairs by expert; each expert runs once on its slice."""
        k = self.params.top_k
        expert_of_pair = chosen.flatten()  # (N·k,)
        order = expert_of_pair.argsort(stable=True)  # (N·k,) pairs grouped by expert
        token_of_pair = order // k
        sizes = torch.bincount(expert_of_pair, minlength=self.params.n_experts).tolist()  # tokens per expert (one host sync)
        grouped = tokens[token_of_pair]  # (N·k, C)
        outputs = []
        # unbind, not [e]: its backward stacks the experts' gradients once, where indexing would
        # fill and add a whole (E, hidden, C) gradient per expert.
        experts = zip(self.expert_gate.unbind(0), self.expert_up.unbind(0), self.expert_out.unbind(0))
        for batch, (gate, up, out) in zip(grouped.split(sizes), experts):  # batch: (n_e, C)
            hidden = F.silu(F.linear(batch, gate)) * F.linear(batch, up)  # (n_e, hidden)
            outputs.append(F.linear(hidden, out))  # (n_e, C)
        weighted = torch.cat(outputs) * weights.flatten()[order, None]  # (N·k, C)
        return torch.zeros_like(tokens).index_add_(0, token_of_pair, weighted)  # (N, C)

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
        fraction = torch.bincount(chosen.flatten(), minlength=E).to(scores.dtype) / chosen.size(0)  # (E,)
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


@hookimpl
def register_components(register):
    register("feed_forward", "moe", MixtureOfExperts)
