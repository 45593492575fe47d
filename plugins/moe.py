"""Mixture of experts: a router sends each token to ``top_k`` of ``n_experts`` SwiGLU experts.

The routing conventions of the open families are params:

==================  =========  ===============  ============  ==================  =========================
model               scoring    normalize_top_k  routed_scale  n_shared_experts    besides
==================  =========  ===============  ============  ==================  =========================
Mixtral             softmax    true             1             0
Qwen1.5/2-MoE       softmax    false            1             1, gated            shared_expert_gate
Qwen3-MoE           softmax    true             1             0
Qwen3-Next, 3.5     softmax    true             1             1, gated            shared_expert_gate
DeepSeek-V3         sigmoid    true             2.5           1                   expert_bias, 4 of 8 groups
gpt-oss             softmax    true             1             0                   router_bias, expert
                                                                                  biases, clamped_swiglu
Llama 4             sigmoid    false            1             1                   weights_at = "input"
Gemma 4             softmax    true             1             0                   geglu; plugins/mlp_and_experts
==================  =========  ===============  ============  ==================  =========================

Softmax, then the top k, then renormalising the k weights is the same as a softmax over the
top k logits (Mixtral's two spellings, and gpt-oss's). DeepSeek-V3 chooses differently from how
it weighs: a per-expert bias (``e_score_correction_bias``, which its training nudges to balance
the load instead of an auxiliary loss: ``bias_update_rate``) is added to the scores for choosing
only, and a token may
only choose experts from its ``top_groups`` best of ``n_groups`` groups, a group scoring the sum
of its two best biased scores (node-limited routing: each group lives on one node). Llama 4
multiplies each chosen expert's *input* by its sigmoid score (a SwiGLU is not linear, so this is
not the same as weighing the output). gpt-oss's experts compute a clamped SwiGLU with a shifted
up projection and have biases; Qwen's shared expert is gated by a sigmoid of the token.

Dispatch is dropless: every (token, choice) pair is sorted by expert and each expert
multiplies its contiguous slice once; no token is dropped and no capacity is set. Two
auxiliary losses are reported for training: the load-balancing loss of Switch Transformer /
Mixtral and ST-MoE's router z-loss; with ``bias_update_rate`` the load's imbalance is logged too.
"""

import math
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from gptzoo.core import AuxiliaryLoss, Dims, FeedForward, InitScheme, Params
from gptzoo.plugins.feed_forward import GLUParams, SwiGLUFeedForward, glu_hidden
from gptzoo.plugins.moe_experts import glu_per_expert  # registers torch.ops.gptzoo.moe_experts too
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
        description="a per-expert bias added to the scores for choosing the experts, not to their weights (DeepSeek-V3's e_score_correction_bias): a buffer, zero at initialisation, read from checkpoints, saved with the weights; no gradient reaches it, only bias_update_rate moves it",
    )
    bias_update_rate: float = Field(
        0.0,
        ge=0,
        description="auxiliary-loss-free balancing (DeepSeek-V3's bias update speed γ: 0.001): after each optimizer step "
        "each expert's expert_bias moves by this much, down if the expert took more than the mean load over "
        "the step's tokens (every micro-batch and process), up if less; logs aux_moe_imbalance "
        "(max load / mean load - 1); 0: the bias stays fixed. Needs expert_bias",
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
    router_bias: bool = Field(False, description="a bias in the router's linear map, so in its logits (gpt-oss)")
    expert_biases: bool = Field(
        False,
        description="biases in each routed expert's three projections (gpt-oss's gate_up_proj_bias, down_proj_bias)",
    )
    activation: Literal["swiglu", "clamped_swiglu", "geglu"] = Field(
        "swiglu",
        description="the routed experts' gated unit: swiglu = silu(gate) · up; clamped_swiglu = gpt-oss's "
        "(up + 1) · gate · σ(swiglu_alpha · gate), with gate clamped at swiglu_limit from above and up to "
        "[-swiglu_limit, swiglu_limit]; geglu = gelu_tanh(gate) · up (Gemma 4)",
    )
    swiglu_alpha: float = Field(1.702, gt=0, description="clamped_swiglu: the sigmoid's slope (gpt-oss: 1.702)")
    swiglu_limit: float = Field(7.0, gt=0, description="clamped_swiglu: where gate and up are clamped (gpt-oss: 7)")
    weights_at: Literal["output", "input"] = Field(
        "output",
        description="where a chosen expert's weight multiplies: its output (Mixtral, Qwen, DeepSeek, gpt-oss) or its "
        "input (Llama 4: the expert computes SwiGLU(weight · x))",
    )
    shared_expert_gate: bool = Field(
        False,
        description="the shared experts' output times σ(x · w), a learned w (d_model,) per layer "
        "(Qwen1.5/2-MoE, Qwen3-Next, Qwen3.5); needs n_shared_experts",
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
    ``(silu(x @ expert_gate[e].T) * (x @ expert_up[e].T)) @ expert_out[e].T``; with
    ``expert_biases`` the biases ``expert_gate_bias``, ``expert_up_bias`` (E, hidden) and
    ``expert_out_bias`` (E, C) are added after each product.
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
        if params.bias_update_rate and not params.expert_bias:
            raise ValueError(
                f"bias_update_rate={params.bias_update_rate} updates the routing bias, but expert_bias=false: set expert_bias = true"
            )
        if params.shared_expert_gate and not params.n_shared_experts:
            raise ValueError(
                "shared_expert_gate=true gates the shared experts, but n_shared_experts=0: set it to 1 or more"
            )

    def __init__(self, params: MoEParams, dims: Dims):
        super().__init__(params, dims)
        C, E = dims.d_model, params.n_experts
        self.hidden = params.hidden or glu_hidden(C)
        self.router = nn.Linear(C, E, bias=params.router_bias)
        self.expert_gate = nn.Parameter(torch.empty(E, self.hidden, C))
        self.expert_up = nn.Parameter(torch.empty(E, self.hidden, C))
        self.expert_out = nn.Parameter(torch.empty(E, C, self.hidden))
        biases = params.expert_biases
        self.expert_gate_bias = nn.Parameter(torch.empty(E, self.hidden)) if biases else None
        self.expert_up_bias = nn.Parameter(torch.empty(E, self.hidden)) if biases else None
        self.expert_out_bias = nn.Parameter(torch.empty(E, C)) if biases else None
        self.shared = (
            SwiGLUFeedForward(GLUParams(hidden=params.n_shared_experts * self.hidden), dims)
            if params.n_shared_experts
            else None
        )
        self.shared_gate = nn.Linear(C, 1, bias=False) if params.shared_expert_gate else None
        self.register_buffer("expert_bias", torch.zeros(E) if params.expert_bias else None)
        self.init_weights("torch_default")
        self._routing: tuple[Tensor, Tensor, Tensor] | None = None
        # Tokens each expert took since the last optimizer step (training with bias_update_rate).
        # Not a buffer: DDP would overwrite each process's count with rank 0's before every forward.
        self._load: Tensor | None = None

    def init_weights(self, scheme: InitScheme) -> None:
        """gpt2: N(0, 0.02), each expert's output matrix N(0, 0.02/√(2·n_layers)) as a residual
        projection; torch_default: each expert matrix drawn as nn.Linear would draw it."""
        super().init_weights(scheme)  # the router and the shared experts' gate, nn.Linears
        for weight in (self.expert_gate, self.expert_up, self.expert_out):
            if scheme == "gpt2":
                std = 0.02 / math.sqrt(2 * self.dims.n_layers) if weight is self.expert_out else 0.02
                nn.init.normal_(weight, mean=0.0, std=std)
            else:
                for matrix in weight:
                    nn.init.kaiming_uniform_(matrix, a=math.sqrt(5))
        for bias, fan_in in (
            (self.expert_gate_bias, self.dims.d_model),
            (self.expert_up_bias, self.dims.d_model),
            (self.expert_out_bias, self.hidden),
        ):
            if bias is None:
                continue
            if scheme == "gpt2":
                nn.init.zeros_(bias)
            else:  # nn.Linear's bias bound
                nn.init.uniform_(bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def forward(self, x: Tensor, route_from: Tensor | None = None) -> Tensor:
        """x (B, T, C) -> (B, T, C); the router reads ``route_from`` (B, T, C) where given (Gemma 4's
        router reads the stream its experts' input was normalised from), else x."""
        B, T, C = x.shape
        tokens = x.reshape(-1, C)  # (N, C)
        routed = tokens if route_from is None else route_from.reshape(-1, C)
        logits = self.router(self.router_input(routed)).float()  # (N, E), routed in float32 as Mixtral does
        scores = logits.softmax(-1) if self.params.scoring == "softmax" else logits.sigmoid()
        chosen = self._choose(scores)  # (N, k)
        weights = scores.gather(1, chosen)  # (N, k)
        if self.params.normalize_top_k:
            weights = weights / weights.sum(-1, keepdim=True)
        weights = self.weigh(weights * self.params.routed_scale, chosen)
        self._routing = (logits, scores, chosen)
        if self.training and self.params.bias_update_rate:
            load = expert_load(chosen, self.params.n_experts)
            self._load = load if self._load is None else self._load + load
        out = self._dispatch(tokens, weights.to(x.dtype), chosen)  # (N, C)
        if self.shared is not None:
            shared = self.shared(tokens)  # (N, C)
            if self.shared_gate is not None:
                shared = torch.sigmoid(self.shared_gate(tokens)) * shared  # one gate per token
            out = out + shared
        return out.view(B, T, C)

    def router_input(self, tokens: Tensor) -> Tensor:
        """What the router's linear map reads, from the tokens (N, C) it routes; a variant may transform them."""
        return tokens

    def weigh(self, weights: Tensor, chosen: Tensor) -> Tensor:
        """The chosen experts' weights (N, k) as they multiply; a variant may rescale them per expert."""
        return weights

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
        pair_weights = weights.flatten()[order, None]  # (N·k, 1)
        if self.params.weights_at == "input":
            grouped = grouped * pair_weights
        experts = (self.expert_gate, self.expert_up, self.expert_out)
        biases = (self.expert_gate_bias, self.expert_up_bias, self.expert_out_bias)
        if torch.is_autocast_enabled(
            tokens.device.type
        ):  # an op of its own: autocast does not reach inside, so cast here
            dtype = torch.get_autocast_dtype(tokens.device.type)
            grouped, experts = grouped.to(dtype), tuple(w.to(dtype) for w in experts)
            biases = tuple(b if b is None else b.to(dtype) for b in biases)
        p = self.params
        clamped = p.activation == "clamped_swiglu"
        form = dict(
            alpha=p.swiglu_alpha if clamped else 1.0,
            limit=p.swiglu_limit if clamped else None,
            shift=float(clamped),
            gelu=p.activation == "geglu",
        )
        if torch.compiler.is_compiling():  # one opaque operator: no graph break
            outputs = torch.ops.gptzoo.moe_experts(grouped, *experts, ends, *biases, **form)[0]  # (N·k, C)
        else:  # autograd through the loop, the faster path in eager mode (no written-out backward to dispatch)
            outputs = glu_per_expert(grouped, *experts, ends, *biases, **form)[0]
        if self.params.weights_at == "output":
            outputs = outputs * pair_weights.to(outputs.dtype)
        return torch.zeros_like(tokens, dtype=outputs.dtype).index_add_(0, token_of_pair, outputs)  # (N, C)

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
        load = expert_load(chosen, E)  # (E,)
        fraction = load / chosen.size(0)
        probs = scores if self.params.scoring == "softmax" else scores / scores.sum(-1, keepdim=True)
        balance = E * (fraction * probs.mean(0)).sum()
        z = logits.logsumexp(-1).square().mean()
        losses = {
            "moe_balance": AuxiliaryLoss(balance, self.params.balance_loss_weight),
            "moe_z": AuxiliaryLoss(z, self.params.z_loss_weight),
        }
        if self.params.bias_update_rate:  # logged, never trained on: MaxVio (Wang et al., 2024)
            losses["moe_imbalance"] = AuxiliaryLoss(load.max() / load.mean() - 1, 0.0)
        return losses

    def after_optimizer_step(self) -> None:
        """Auxiliary-loss-free balancing (Wang et al., 2024; DeepSeek-V3): each expert's routing bias
        moves by ``bias_update_rate`` toward the mean load: b_e += γ · sign(mean load - load_e), the
        load counted over every forward in training since the last step, summed over the processes.
        Training calls it after each optimizer step."""
        if self._load is None or self.expert_bias is None:
            return
        load, self._load = self._load, None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(load)  # every process moves its copy of the bias alike
        with torch.no_grad():
            self.expert_bias += self.params.bias_update_rate * torch.sign(load.mean() - load).to(self.expert_bias.dtype)

    def active_parameters(self) -> int:
        """The router, the k chosen experts and the shared experts' gate (the shared experts count themselves)."""
        C, H = self.dims.d_model, self.hidden
        expert = 3 * H * C + (2 * H + C if self.params.expert_biases else 0)
        router = sum(p.numel() for p in self.router.parameters())
        gate = C if self.shared_gate is not None else 0
        return router + self.params.top_k * expert + gate

    def flops_per_token(self, context_length: int) -> int:
        """2 per matrix weight a token multiplies: the router's, the k experts' and the shared gate's."""
        C = self.dims.d_model
        gate = C if self.shared_gate is not None else 0
        return 2 * (self.router.weight.numel() + self.params.top_k * 3 * self.hidden * C + gate)


def expert_load(chosen: Tensor, n_experts: int) -> Tensor:
    """(N, k) chosen experts -> (E,) how many of the N tokens each expert took, as floats."""
    return torch.zeros(n_experts, device=chosen.device).index_add_(
        0, chosen.flatten(), torch.ones(chosen.numel(), device=chosen.device)
    )


@hookimpl
def register_components(register):
    register("feed_forward", "moe", MixtureOfExperts)
