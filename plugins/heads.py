"""Output heads: the language-model head (optionally tied to the token embedding) and a classifier."""

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from gptzoo.core import Dims, Head, InitScheme, Params
from gptzoo.registry import hookimpl


class LMParams(Params):
    logit_scale: float = Field(
        1.0,
        gt=0,
        description="multiplies the logits, before any softcap: Cohere's logit_scale is this value (Command R: 0.0625), "
        "Granite's logits_scaling s divides, so it is logit_scale = 1/s",
    )
    softcap: float | None = Field(
        None, gt=0, description="cap · tanh(logits / cap) bounds the logits to (-cap, cap) (Gemma 2: 30); None: no cap"
    )


class LMHead(Head):
    """Hidden states -> next-token logits over the vocabulary: (B, T, C) -> (B, T, V).

    With a padded vocabulary (``vocab_multiple``) V is the padded size and the padding ids get
    -inf: softmax, sampling and the loss are exactly those of the real vocabulary. With
    ``softcap`` the logits are soft-capped (Gemma 2's final-logit soft-capping); ``logit_scale``
    multiplies them first (Cohere's ``logit_scale``, Granite's ``1 / logits_scaling``).
    """

    Params = LMParams
    can_tie = True

    def __init__(self, params: LMParams, dims: Dims, embedding: nn.Embedding | None = None):
        super().__init__(params, dims)
        # Tied: the very Parameter of the embedding, no copy.
        self.tied = embedding is not None
        self.weight = embedding.weight if self.tied else nn.Parameter(torch.empty(dims.padded_vocab_size, dims.d_model))

    def init_weights(self, scheme: InitScheme) -> None:
        if self.tied:
            return  # the embedding's weight, initialised with the embedding
        if scheme == "gpt2":
            nn.init.normal_(self.weight, mean=0.0, std=0.02)
        else:  # what nn.Linear(d_model, vocab, bias=False) draws, as the book's out_head
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        return self.finish(F.linear(x, self.weight))  # (B, T, V)

    def finish(self, logits: Tensor) -> Tensor:
        """The projected logits (B, T, V) scaled, capped and with the padding ids masked, as the head gives them."""
        if self.params.logit_scale != 1.0:
            logits = logits * self.params.logit_scale
        if self.params.softcap is not None:
            logits = self.params.softcap * torch.tanh(logits / self.params.softcap)
        if self.dims.padded_vocab_size > self.dims.vocab_size:
            logits[..., self.dims.vocab_size :] = float("-inf")
        return logits

    def flops_per_token(self, context_length: int) -> int:
        return 2 * self.weight.numel()


class ClassifierParams(Params):
    n_classes: int = Field(2, ge=2)
    pooling: Literal["last", "mean", "last_position"] = Field(
        "last",
        description="last: the last real token (padding skipped); mean: the mean of real tokens; "
        "last_position: the sequence's final position, padding included (the book's chapter 6, logits[:, -1, :])",
    )


class ClassifierHead(Head):
    """Pools the sequence and maps it to class logits: (B, T, C) -> (B, n_classes).

    ``last`` reads the last real token, ``mean`` averages the real tokens (both use the pad
    mask), ``last_position`` reads the final position whatever it holds: with right padding
    that is a pad token, which the book's model reads as text.
    """

    Params = ClassifierParams

    def __init__(self, params: ClassifierParams, dims: Dims, embedding: nn.Embedding | None = None):
        super().__init__(params, dims)
        self.out = nn.Linear(dims.d_model, params.n_classes)

    def forward(self, x: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        if pad_mask is None or self.params.pooling == "last_position":
            pooled = x.mean(dim=1) if self.params.pooling == "mean" else x[:, -1]  # (B, C)
        elif self.params.pooling == "last":
            # Right padding: the last real token sits just before the first pad.
            last = pad_mask.long().cumsum(-1).argmax(-1)  # (B,)
            pooled = x[torch.arange(x.size(0), device=x.device), last]
        else:
            weights = pad_mask.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
            pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1)
        return self.out(pooled)  # (B, n_classes)


@hookimpl
def register_components(register):
    register("head", "lm", LMHead)
    register("head", "classifier", ClassifierHead)
