"""Per-layer embeddings (Gemma 3n, Gemma 4's E-models): each layer gets an input of its own, read
from a second embedding table by token id and from the stream entering the first block, and adds
it to the residual stream through a small gated branch after its sublayers.

For layer i, with ids the new tokens' ids, e the stream entering the first block (B, T, C), P the
per-layer size and g the tanh GELU::

    input_i = (norm_P(e · W_proj,i / √C) + E_i[ids] · √P) / √2                     (B, T, P)
    x       = x + norm_C(g(x · W_gate) ⊙ input_i · W_up)

Gemma packs every layer's table E_i (V, P) into one (V, L·P) table and every W_proj,i (C, P) into
one (C, L·P) projection, sliced per layer as here; it shares one norm_P among the layers, which
each layer keeps a copy of here. The norms are the layer's ``norm``.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from gptzoo.core import AttentionContext, Dims, LayerSpec
from gptzoo.plugins.feed_forward import gelu_tanh


class PerLayerInput(nn.Module):
    """One layer's per-layer embedding and the gated branch that adds it to the stream."""

    def __init__(self, size: int, dims: Dims, layer: LayerSpec):
        super().__init__()
        self.size = size
        self.embedding = nn.Embedding(dims.padded_vocab_size, size)  # E_i
        self.projection = nn.Linear(dims.d_model, size, bias=False)  # W_proj,i
        self.projection_norm = layer.norm.build(replace(dims, d_model=size))
        self.gate = nn.Linear(dims.d_model, size, bias=False)
        self.up = nn.Linear(size, dims.d_model, bias=False)
        self.out_norm = layer.norm.build(dims)

    def layer_input(self, ctx: AttentionContext) -> Tensor:
        """This layer's input (B, T, P) from the tokens' ids and the stream entering the first block."""
        assert ctx.token_ids is not None and ctx.embeddings is not None, "the model gives every context the inputs"
        e = ctx.embeddings
        projected = self.projection_norm(self.projection(e) * torch.tensor(e.size(-1) ** -0.5, dtype=e.dtype))
        looked_up = self.embedding(ctx.token_ids) * torch.tensor(self.size**0.5, dtype=e.dtype)
        return (projected + looked_up) * torch.tensor(2**-0.5, dtype=e.dtype)

    def forward(self, x: Tensor, ctx: AttentionContext) -> Tensor:
        """x (B, T, C) -> x plus the gated branch of this layer's input."""
        return x + self.out_norm(self.up(gelu_tanh(self.gate(x)) * self.layer_input(ctx)))
