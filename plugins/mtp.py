"""Multi-token prediction as DeepSeek-V3 trains it (DeepSeek-AI, 2024, arXiv 2412.19437 §2.2).

D sequential modules after the main model. Module k, at position i, combines the previous depth's
hidden state with the embedding of the token k ahead and runs one transformer block:

    h'_i^k = M_k [RMSNorm(Emb(t_{i+k})); RMSNorm(h_i^{k-1})]        M_k: (C, 2C), eh_proj
    h_i^k  = TRM_k(h'_i^k)                                          one block, as the last layer's
    P_{i+k+1}^k = OutHead(RMSNorm_k(h_i^k))                          the model's own head

h^0 is the main model's final hidden state (after its final norm, as vLLM and SGLang feed
DeepSeek-V3's MTP layer); the embedding and the output head are the model's, shared. Options:
``layer_kind``, the blocks built as a layer kind of the model's instead of its last layer
(MiMo-V2-Flash's: windowed attention and a dense feed-forward after a last layer with neither);
``chain_normed``, depth k + 1 reading depth k's normalised output RMSNorm_k(h_i^k) instead of h_i^k
(as transformers' MtpModel, vLLM and SGLang chain MiMo-V2-Flash's three modules); ``own_embedding``,
an embedding table of its own for the tokens ahead (Qwen3-Next's ``mtp_use_dedicated_embeddings``,
``mtp.embed_tokens``), the head still the model's. The paper
writes the concatenation [h; Emb]; its checkpoints' eh_proj reads [Emb; h] (``enorm`` first), the
same map with M_k's column blocks swapped, and this follows the checkpoints. Training adds
λ/D · Σ_k L_k, L_k the cross-entropy of depth k's predictions (``aux_mtp_k`` in metrics.jsonl);
the modules change nothing the main model computes, so inference may drop them or use them to
draft tokens (gptzoo.recipes.generation.speculative).
"""

from collections.abc import Callable
from dataclasses import replace
from typing import cast

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from gptzoo.core import (
    AttentionContext,
    AuxiliaryLoss,
    Block,
    Dims,
    LayerCache,
    LayerSpec,
    MultiTokenPrediction,
    Params,
)
from gptzoo.registry import hookimpl


class SequentialParams(Params):
    depth: int = Field(
        1, ge=1, description="D: modules in sequence, module k predicting the token k + 1 ahead (DeepSeek-V3: 1)"
    )
    loss_weight: float = Field(
        0.3,
        ge=0,
        description="λ: training adds λ/D times the sum of the depths' losses (DeepSeek-V3: 0.3, then 0.1 for its last 4.8T tokens)",
    )
    layer_kind: str | None = Field(
        None,
        description="the layer kind (a key of layer_kinds) its blocks are built as; None: the model's last layer "
        "(MiMo-V2-Flash's: windowed attention with a dense feed-forward)",
    )
    chain_normed: bool = Field(
        False,
        description="depth k + 1 reads depth k's normalised output (transformers' MtpModel, MiMo-V2-Flash) instead of "
        "its block's output (DeepSeek-V3's equations)",
    )
    own_embedding: bool = Field(
        False,
        description="embed the tokens ahead with a table of its own (Qwen3-Next's mtp_use_dedicated_embeddings) "
        "instead of the model's",
    )


class MTPModule(nn.Module):
    """One depth: the two input norms, the projection M_k, a block and the norm before the shared head."""

    block: Block

    def __init__(self, dims: Dims, layer: LayerSpec):
        super().__init__()
        self.enorm = layer.norm.build(dims)
        self.hnorm = layer.norm.build(dims)
        self.eh_proj = nn.Linear(2 * dims.d_model, dims.d_model, bias=False)
        self.block = layer.block.build(dims, layer)
        self.norm = layer.norm.build(dims)


class SequentialMTP(MultiTokenPrediction):
    Params = SequentialParams

    def __init__(self, params: SequentialParams, dims: Dims, layer: LayerSpec):
        super().__init__(params, dims, layer)
        self.depth, self.loss_weight, self.chain_normed = params.depth, params.loss_weight, params.chain_normed
        if params.own_embedding:
            self.token_embedding = nn.Embedding(dims.padded_vocab_size, dims.d_model)
        # Module k's block is layer n_layers + k - 1 (DeepSeek's index), with keys and values of its own.
        self.layers = nn.ModuleList(
            MTPModule(replace(dims, layer_idx=dims.n_layers + k, kv_from=None), replace(layer, index=dims.n_layers + k))
            for k in range(params.depth)
        )

    def flops_per_token(self, context_length: int) -> int:
        # Each depth's logits come from the model's head: its weight counts once, under head, but its
        # matmul runs once more per depth while training.
        return (
            super().flops_per_token(context_length) + self.depth * 2 * self.dims.d_model * self.dims.padded_vocab_size
        )

    @classmethod
    def layer_kind(cls, params: Params) -> str | None:
        return cast(SequentialParams, params).layer_kind

    @property
    def blocks(self) -> list[Block]:
        return [cast(MTPModule, module).block for module in self.layers]

    def losses(
        self, hidden: list[Tensor], head: Callable[[Tensor], Tensor], targets: Tensor
    ) -> dict[str, AuxiliaryLoss]:
        """λ/D times each depth's cross-entropy, as ``mtp_k``; the last k positions have no target in the batch."""
        T, losses = targets.size(1), {}
        for k, h in enumerate(hidden[: T - 1], start=1):
            logits = head(h[:, : T - k])  # (B, T - k, V): position i predicts the target k after its own
            value = F.cross_entropy(logits.flatten(0, 1).float(), targets[:, k:].flatten())
            losses[f"mtp_{k}"] = AuxiliaryLoss(value, self.loss_weight / self.depth)
        return losses

    def forward(
        self, hidden: Tensor, ahead: list[Tensor], ctx: AttentionContext, caches: list[LayerCache] | None = None
    ) -> list[Tensor]:
        out, h = [], hidden
        for k, (module, embedded) in enumerate(zip(cast(list[MTPModule], self.layers), ahead, strict=False)):
            x = module.eh_proj(torch.cat([module.enorm(embedded), module.hnorm(h)], dim=-1))  # (B, T, C)
            h = module.block(x, ctx, caches[k] if caches is not None else None)
            out.append(module.norm(h))
            if self.chain_normed:
                h = out[-1]
        return out


@hookimpl
def register_components(register):
    register("mtp", "sequential", SequentialMTP)
