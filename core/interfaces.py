"""One interface per component family. Plugins subclass these; core assembles them.

Every model component is built as ``Impl(params, dims)``: ``params`` is the plugin's own
validated pydantic model, ``dims`` the shared dimensions the builder injects. Tensor shapes
use B = batch, T = new tokens, Tk = keys (cached + new), C = d_model, nh = query heads,
nkv = key/value heads, hs = head size, V = vocabulary.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

if TYPE_CHECKING:
    from gptzoo.core.context import AttentionContext
    from gptzoo.core.cache import LayerCache


class Params(BaseModel):
    """Base of every plugin's params model: unknown keys are errors, never ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoParams(Params):
    pass


@dataclass(frozen=True)
class Dims:
    """Shared dimensions injected by the builder, so a plugin's params hold only what varies."""

    vocab_size: int
    context_length: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    n_layers: int
    dropout: float = 0.0
    qkv_bias: bool = False
    layer_idx: int = 0
    vocab_multiple: int = 1

    @property
    def head_size(self) -> int:
        return self.d_model // self.n_heads

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the token embedding and LM head: vocab_size rounded up to vocab_multiple."""
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple


class Component(nn.Module):
    """Common base of the model families (everything but the tokenizer)."""

    Params: ClassVar[type[Params]] = NoParams

    def __init__(self, params: Params, dims: Dims):
        super().__init__()
        self.params = params
        self.dims = dims

    @classmethod
    def check(cls, params: Params, dims: Dims) -> None:
        """Raise ValueError naming the conflicting values if these dims cannot work."""

    def flops_per_token(self, context_length: int) -> int:
        """Forward FLOPs per token; training costs three times this. Default: 2 per matrix weight."""
        return sum(2 * m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))


class PositionalEncoding(Component):
    """Where positions enter the model. A scheme overrides the hook(s) for its site:

    - added to the input embeddings (learned, sinusoidal): ``embed``
    - applied to queries and keys (rotary): ``rotate``
    - added to the attention scores (ALiBi): ``score_bias``

    The model calls ``embed``; attention calls the other two through ``AttentionContext``,
    so any attention variant works with any position scheme. Positions are absolute token
    positions of shape (B|1, T); they differ per row only for left-padded batches.
    """

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        """x: (B, T, C) token embeddings -> (B, T, C)."""
        return x

    def rotate(self, q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """q: (B, nh, T, hs), k: (B, nkv, T, hs) of the new tokens -> same shapes."""
        return q, k

    def score_bias(self, q_positions: Tensor, k_positions: Tensor) -> Tensor | None:
        """(B|1, T), (B|1, Tk) -> additive bias broadcastable to (B, nh, T, Tk), or None."""
        return None


class Attention(Component):
    """Causal self-attention: x (B, T, C) -> (B, T, C).

    Must support: causal masking and padding through ``ctx`` (``ctx.bias`` / ``ctx.is_causal``),
    positions through ``ctx.rotate`` and ``ctx.bias``, dropout on the attention weights
    (``dims.dropout``, training only), ``dims.n_kv_heads`` key/value heads shared by groups
    of query heads (GQA/MQA), ``dims.qkv_bias``, and an optional ``LayerCache``: when given,
    the new keys and values are appended with ``cache.update`` and attention runs over all
    cached keys.

    State-dict layout is shared by all variants so checkpoints move between them:
    ``qkv.weight`` ((nh + 2·nkv)·hs, C) with rows [query heads | key heads | value heads],
    ``qkv.bias`` when ``qkv_bias``, and ``out_proj.weight`` / ``out_proj.bias``. A variant
    that stores its weights otherwise converts in state-dict hooks. ``out_proj`` is the
    projection into the residual stream (scaled down at initialisation).
    """

    out_proj: nn.Linear

    @abstractmethod
    def forward(self, x: Tensor, ctx: AttentionContext, cache: LayerCache | None = None) -> Tensor: ...

    def flops_per_token(self, context_length: int) -> int:
        # Projections plus QK^T and AV against `context_length` keys (the PaLM convention).
        return super().flops_per_token(context_length) + 4 * self.dims.d_model * context_length

    def kv_cache_elements_per_token(self) -> int:
        return 2 * self.dims.n_kv_heads * self.dims.head_size


class FeedForward(Component):
    """Position-wise MLP: x (B, T, C) -> (B, T, C). ``out_proj`` writes to the residual stream."""

    out_proj: nn.Linear

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor: ...


class Norm(Component):
    """Normalisation over the last dimension: x (B, T, C) -> (B, T, C)."""

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor: ...


class Head(Component):
    """Maps final hidden states to outputs.

    x (B, T, C), pad_mask (B, T) bool or None (True at real tokens) -> logits; an LM head
    gives (B, T, V), a classifier (B, n_classes). ``can_tie`` heads receive the token
    embedding and share its weight when the config asks for a tied head.
    """

    can_tie: ClassVar[bool] = False

    def __init__(self, params: Params, dims: Dims, embedding: nn.Embedding | None = None):
        super().__init__(params, dims)

    @abstractmethod
    def forward(self, x: Tensor, pad_mask: Tensor | None = None) -> Tensor: ...


class Tokenizer(ABC):
    """Text <-> token ids. The text ``<|endoftext|>`` always encodes to ``eot_id``.

    ``lossless`` tokenizers guarantee ``decode(encode(text)) == text`` for any Unicode text.
    Tokenizers whose vocabulary is learned from a corpus set ``needs_fit`` and implement
    ``fit``; their state is saved with the run through ``state`` / ``load_state``.
    """

    Params: ClassVar[type[Params]] = NoParams
    lossless: ClassVar[bool] = True
    needs_fit: ClassVar[bool] = False
    EOT: ClassVar[str] = "<|endoftext|>"

    def __init__(self, params: Params):
        self.params = params

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @property
    @abstractmethod
    def eot_id(self) -> int: ...

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: list[int]) -> str: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    @property
    def is_fitted(self) -> bool:
        return True

    def fit(self, text: str) -> None:
        raise TypeError(f"{type(self).__name__} has a fixed vocabulary and cannot be fitted")

    def state(self) -> dict | None:
        """JSON-serialisable state to save with a run, or None when the params say it all."""
        return None

    def load_state(self, state: dict) -> None:
        raise TypeError(f"{type(self).__name__} has no state to load")


FAMILIES: dict[str, type] = {
    "tokenizer": Tokenizer,
    "positional": PositionalEncoding,
    "attention": Attention,
    "feed_forward": FeedForward,
    "norm": Norm,
    "head": Head,
}

