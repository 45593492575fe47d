"""One interface per component family. Plugins subclass these; core assembles them.

Every model component is built as ``Impl(params, dims)``: ``params`` is the plugin's own
validated pydantic model, ``dims`` the shared dimensions the builder injects (a block also
gets its layer's component specs). Tensor shapes use B = batch, T = new tokens, Tk = keys
(cached + new), C = d_model, nh = query heads, nkv = key/value heads, hs = head size,
V = vocabulary.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

if TYPE_CHECKING:
    from gptzoo.core.cache import LayerCache
    from gptzoo.core.config import LayerSpec
    from gptzoo.core.context import AttentionContext

InitScheme = Literal["gpt2", "torch_default"]

Inspection = Literal["probabilities", "partial_probabilities", "implicit_attention", "state_norms", "nothing"]
"""What a token mixer reports to inspection through ``ctx.record`` (docs/extending.md, "Writing a token mixer")."""

Measurement = Literal["max_logit"]
"""A per-layer number a token mixer reports through ``ctx.measure`` while ``ctx.measuring``, each a maximum
(``max_logit``: the largest attention logit q·k·scale before any position bias or soft-capping)."""

CacheKind = Literal["keys_values", "window", "state"]
"""What a token mixer keeps while decoding: every key and value (grows with the text), the latest
``cache_window`` of them (bounded), or a recurrent state whose size does not depend on the length."""

POSITION_HOOKS = ("rotate", "score_bias")


class Params(BaseModel):
    """Base of every plugin's params model: unknown keys are errors, never ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class NoParams(Params):
    pass


# Inside a family's class body the class attribute ``Params`` hides the base above; the
# methods there annotate their ``params`` argument with this second name for it.
_Params = Params


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
    head_dim: int | None = None  # None: d_model // n_heads
    attn_out_bias: bool = True
    kv_from: int | None = None  # the earlier layer whose keys and values this one attends with (None: its own)

    @property
    def head_size(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the token embedding and LM head: vocab_size rounded up to vocab_multiple."""
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple


class Component(nn.Module):
    """Common base of the model families (everything but the tokenizer)."""

    Params: ClassVar[type[Params]] = NoParams
    absent: ClassVar[bool] = False
    """True for a family's ``none`` (no token mixer, no feed-forward): blocks build no sublayer for it."""

    def __init__(self, params: _Params, dims: Dims):
        super().__init__()
        self.params = params
        self.dims = dims

    @classmethod
    def check(cls, params: _Params, dims: Dims) -> None:
        """Raise ValueError naming the conflicting values if these dims cannot work."""

    def flops_per_token(self, context_length: int) -> int:
        """Forward FLOPs per token; training costs three times this. Default: 2 per matrix weight."""
        return sum(2 * m.weight.numel() for m in self.owned_modules() if isinstance(m, nn.Linear))

    def active_parameters(self) -> int:
        """Parameters of this component (not its nested ones) that one token's forward pass uses.

        Default: all it owns. A mixture of experts counts the router, the experts a token is
        sent to and the shared ones; ``describe`` reports the model's sum beside the total.
        """
        return sum(p.numel() for m in self.owned_modules() for p in m.parameters(recurse=False))

    def owned_modules(self) -> Iterator[nn.Module]:
        """This component and its submodules, stopping at nested components (they account for themselves)."""
        yield self
        stack = list(self.children())
        while stack:
            module = stack.pop(0)
            if not isinstance(module, Component):
                yield module
                stack[:0] = list(module.children())

    def init_weights(self, scheme: InitScheme) -> None:
        """Initialise the parameters this component owns; override it to own your initialisation.

        The model calls it once per component after building, with ``model.init``:

        - ``gpt2``: nn.Linear and nn.Embedding weights from N(0, 0.02), biases zero, and
          ``out_proj`` (the projection that writes into the residual stream) from
          N(0, 0.02 / √(2 · n_layers)), since every residual branch adds variance.
        - ``torch_default``: what PyTorch's constructors drew (Kaiming-uniform linears,
          N(0, 1) embeddings), as the book's model has; nothing is redrawn.
        """
        if scheme != "gpt2":
            return
        residual = getattr(self, "out_proj", None)
        for module in self.owned_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                std = 0.02 / math.sqrt(2 * self.dims.n_layers) if module is residual else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def after_optimizer_step(self) -> None:
        """Adjust what is not trained by gradients once the optimizer has stepped (a mixture of
        experts' balancing bias); training calls it on every component. Default: nothing."""

    def auxiliary_losses(self) -> dict[str, AuxiliaryLoss]:
        """Extra training losses from this component's last forward (mixture-of-experts balance, ...).

        Training adds ``weight · value`` for each to the language-model loss and logs each value
        by name; evaluation reports the language-model loss alone. Default: none.
        """
        return {}


@dataclass(frozen=True)
class AuxiliaryLoss:
    """One auxiliary loss: its value from the last forward (a scalar tensor) and its coefficient."""

    value: Tensor
    weight: float


class PositionalEncoding(Component):
    """Where positions enter the model. A scheme overrides the hook(s) for its site:

    - added to the input embeddings (learned, sinusoidal): ``embed``
    - applied to queries and keys (rotary): ``rotate``
    - added to the attention scores (ALiBi): ``score_bias``

    The model calls ``embed``; attention calls the other two through ``AttentionContext``,
    so any attention variant works with any position scheme. Positions are absolute token
    positions of shape (B|1, T); they differ per row only for left-padded batches.

    ``length_limit`` says why a scheme cannot run past the context it trained at (None: it can).
    """

    length_limit: ClassVar[str | None] = None

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        """x: (B, T, C) token embeddings -> (B, T, C)."""
        return x

    @classmethod
    def adds_to_embeddings(cls) -> bool:
        """Whether this scheme enters at the input embeddings, which all layers share (so it
        cannot be chosen per layer)."""
        return cls.embed is not PositionalEncoding.embed

    @classmethod
    def hooks(cls) -> frozenset[str]:
        """The hooks inside the token mixer this scheme acts through (``rotate``, ``score_bias``): a
        config pairing it with a mixer that does not call them is refused."""
        return frozenset(h for h in POSITION_HOOKS if getattr(cls, h) is not getattr(PositionalEncoding, h))

    def reach(self, n_positions: int) -> None:
        """Get ready for positions below ``n_positions`` (past the context, a precomputed table cannot
        serve them); the model calls it before every forward. Default: nothing to do."""

    def rotate(self, q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """q: (B, nh, T, hs), k: (B, nkv, T, hs) of the new tokens -> same shapes."""
        return q, k

    def score_bias(self, q_positions: Tensor, k_positions: Tensor) -> Tensor | None:
        """(B|1, T), (B|1, Tk) -> additive bias broadcastable to (B, nh, T, Tk), or None."""
        return None


class Attention(Component):
    """A token mixer (softmax attention or any other): x (B, T, C) -> (B, T, C), causal.

    ``forward(x, ctx, cache)`` receives the forward's ``AttentionContext`` and, while decoding, this
    layer's cache as made by ``new_cache``. A mixer supports causal masking, left padding, dropout
    (training only) and decoding in pieces of any size with the same outputs as one forward. It
    declares what it is (``inspection``, ``position_hooks``, ``cache_kind``, ``measurements``,
    ``kv_sharing``, ``kit_lengths``, ``static_cache``), and the config, the model, ``inspect``, ``describe`` and the
    conformance kit follow the declarations; readers ask through the ``declared_*`` classmethods,
    which a mixer whose declarations follow its params overrides. The contract in full, with the
    softmax variants' shared state-dict layout: docs/extending.md ("Writing an attention variant",
    "Writing a token mixer").
    """

    inspection: ClassVar[Inspection] = "probabilities"
    position_hooks: ClassVar[frozenset[str]] = frozenset(POSITION_HOOKS)
    cache_kind: ClassVar[CacheKind] = "keys_values"
    measurements: ClassVar[frozenset[Measurement]] = frozenset()
    out_proj: nn.Module
    equivalent_to: ClassVar[str | None] = None
    kv_sharing: ClassVar[bool] = False
    static_cache: ClassVar[bool] = False

    @abstractmethod
    def forward(self, x: Tensor, ctx: AttentionContext, cache: LayerCache | None = None) -> Tensor: ...

    @classmethod
    def declared_inspection(cls, params: Params) -> Inspection:
        """What this mixer, built with ``params``, reports to inspection; default: ``inspection``."""
        return cls.inspection

    @classmethod
    def declared_position_hooks(cls, params: Params) -> frozenset[str]:
        """The position hooks this mixer, built with ``params``, calls; default: ``position_hooks``."""
        return cls.position_hooks

    @classmethod
    def declared_cache_kind(cls, params: Params) -> CacheKind:
        """What this mixer, built with ``params``, keeps while decoding; default: ``cache_kind``."""
        return cls.cache_kind

    @classmethod
    def declared_static_cache(cls, params: Params) -> bool:
        """Whether this mixer, built with ``params``, decodes through a static cache; default: ``static_cache``."""
        return cls.static_cache

    @classmethod
    def declared_measurements(cls, params: Params) -> frozenset[Measurement]:
        """The per-layer numbers this mixer, built with ``params``, reports while measuring; default: ``measurements``."""
        return cls.measurements

    @classmethod
    def receptive_field(cls, params: Params) -> int | None:
        """How many of the latest keys (itself included) a query may see; None: every earlier key.

        A sliding window of W returns W; the conformance kit then tests past it and checks that
        tokens further back have no influence.
        """
        return None

    @classmethod
    def cache_window(cls, params: Params) -> int | None:
        """For a ``window`` cache: how many of the latest keys it keeps, which the model then keeps
        the positions and validity of for the masks; default: ``receptive_field``. A mixer whose
        queries see fewer keys than it keeps (a chunk, which is no sliding window) says so here."""
        return cls.receptive_field(params)

    @classmethod
    def kit_lengths(cls, params: Params) -> tuple[int, ...]:
        """Sequence lengths the conformance kit tests besides its default (a chunked mixer gives
        lengths spanning several chunk boundaries); default: none."""
        return ()

    def new_cache(self, batch_size: int, max_len: int | None, device: torch.device, dtype: torch.dtype) -> LayerCache:
        """This layer's decoding cache for up to ``max_len`` tokens (None: no limit, asked only of
        mixers whose ``cache_kind`` is bounded); default: every key and value."""
        from gptzoo.core.cache import KVLayerCache

        assert max_len is not None, "a cache of every key and value needs a length"
        return KVLayerCache(batch_size, self.dims.n_kv_heads, max_len, self.dims.head_size, device, dtype)

    def new_static_cache(self, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype) -> LayerCache:
        """This layer's part of a ``StaticKVCache`` of ``max_len`` tokens (``static_cache``); default: ``new_cache``'s.
        A mixer whose own cache writes at Python offsets (a window's ring) gives one of every slot here."""
        return self.new_cache(batch_size, max_len, device, dtype)

    def static_cache_bytes(self, n_tokens: int, dtype: torch.dtype = torch.float32) -> int:
        """Bytes ``new_static_cache`` holds for one sequence of ``n_tokens``; default: ``cache_bytes``'s."""
        return self.cache_bytes(n_tokens, dtype)

    def cache_bytes(self, n_tokens: int, dtype: torch.dtype = torch.float32) -> int:
        """Bytes ``new_cache`` holds for one sequence of ``n_tokens`` (keys and values by default;
        a recurrent state's bytes do not depend on ``n_tokens``)."""
        return 2 * self.dims.n_kv_heads * self.dims.head_size * n_tokens * torch.empty((), dtype=dtype).element_size()

    def flops_per_token(self, context_length: int) -> int:
        # Projections plus QK^T and AV against `context_length` keys (the PaLM convention).
        return super().flops_per_token(context_length) + 4 * self.dims.n_heads * self.dims.head_size * context_length


class FeedForward(Component):
    """Position-wise MLP: x (B, T, C) -> (B, T, C). ``out_proj`` writes to the residual stream.

    ``reads_stream``: it norms its own input (a branch may need the stream itself: Gemma 4's router), so a
    block that would norm its input hands it the residual stream instead and builds no norm for it.
    """

    out_proj: nn.Module
    reads_stream: ClassVar[bool] = False

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor: ...


class Norm(Component):
    """Normalisation over the last dimension: x (B, T, C) -> (B, T, C)."""

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor: ...


class Block(Component):
    """One layer: how norms, the token mixer and the feed-forward are wired around the residual stream.

    Built as ``Impl(params, dims, layer)``: ``layer`` holds this layer's component specs
    (``layer.norm``, ``layer.attention``, ``layer.feed_forward``), each built with
    ``spec.build(dims)``. x (B, T, C) -> (B, T, C). A block keeps its token mixer as
    ``self.attention`` (the model asks it for the layer's decoding cache, inspection for its
    declaration) and passes ``ctx`` and ``cache`` to it unchanged. Either sublayer may be a
    family's ``none`` (``spec.impl.absent``): the block then builds neither it nor its norms,
    so a layer holds only a mixer (Mamba-2) or only a feed-forward. ``output_normalized``
    blocks end in a norm, so the model adds no final norm after them.
    """

    attention: Attention

    output_normalized: ClassVar[bool] = False

    def __init__(self, params: Params, dims: Dims, layer: LayerSpec):
        super().__init__(params, dims)

    @abstractmethod
    def forward(self, x: Tensor, ctx: AttentionContext, cache: LayerCache | None = None) -> Tensor: ...


class Residual(Component):
    """The residual stream between blocks: its shape and how each block reads from it and writes to it.

    Built per layer as ``Impl(params, dims, layer)`` (``layer``: that layer's component specs).
    The model widens the first block's input (B, T, C) with the first layer's ``widen``, passes
    the stream through each layer's ``forward(x, block, ctx, cache)``, which runs ``block``
    ((B, T, C) -> (B, T, C), adding its own input back) on what it reads from the stream, and
    narrows the stream to (B, T, C) with the last layer's ``narrow`` before the final norm
    (inspection sees each layer's stream narrowed). The plain residual is one stream the block
    adds to itself: all three pass it through.
    """

    several_streams: ClassVar[bool] = False
    """True when ``widen`` makes several streams: narrowed, they are no longer the last block's output, so a
    block whose output is already normalised still gets the final norm."""

    def __init__(self, params: Params, dims: Dims, layer: LayerSpec):
        super().__init__(params, dims)

    def widen(self, x: Tensor) -> Tensor:
        return x

    def narrow(self, x: Tensor) -> Tensor:
        return x

    def forward(self, x: Tensor, block: Block, ctx: AttentionContext, cache: LayerCache | None = None) -> Tensor:
        return block(x, ctx, cache)


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


class MultiTokenPrediction(Component):
    """Predictions of the tokens after the next one, trained beside it (DeepSeek-V3's MTP modules).

    Built as ``Impl(params, dims, layer)``, ``layer`` holding the specs of the layer its ``blocks``
    (one per depth) copy: the kind ``layer_kind(params)`` names, else the model's last layer.
    ``forward(hidden, ahead, ctx, caches)``: ``hidden`` (B, T, C) the main model's final hidden
    states, ``ahead[k - 1]`` (B, T, C) the embeddings of the tokens k after each position (by
    ``token_embedding`` where it has one, else the model's own embedding) for depths
    k = 1..len(ahead) -> each depth's normalised hidden states (B, T, C), from which the model's
    head predicts the token k + 1 after each position. ``ctx`` and ``caches`` (one per block) are
    those of the blocks' positions. Training adds what ``losses`` returns.
    """

    depth: int
    loss_weight: float
    token_embedding: nn.Embedding | None  # its own table for the tokens ahead; None: the model's

    def __init__(self, params: Params, dims: Dims, layer: LayerSpec):
        super().__init__(params, dims)
        self.token_embedding = None

    @classmethod
    def layer_kind(cls, params: Params) -> str | None:
        """The layer kind (a key of the model's layer_kinds) its blocks are built as; None: the model's last layer."""
        return None

    @property
    @abstractmethod
    def blocks(self) -> list[Block]:
        """Its transformer blocks, one per depth (whose mixers make its decoding cache)."""

    @abstractmethod
    def forward(
        self, hidden: Tensor, ahead: list[Tensor], ctx: AttentionContext, caches: list[LayerCache] | None = None
    ) -> list[Tensor]: ...

    @abstractmethod
    def losses(
        self, hidden: list[Tensor], head: Callable[[Tensor], Tensor], targets: Tensor
    ) -> dict[str, AuxiliaryLoss]:
        """The training losses from each depth's ``hidden`` states (B, T, C) of the last forward, the model's
        ``head`` and the forward's ``targets`` (B, T), where ``targets[:, i + k]`` is depth k's at position i."""


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

    def __init__(self, params: _Params):
        self.params = params

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @property
    @abstractmethod
    def eot_id(self) -> int: ...

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """The ids generation ends at: ``eot_id``, and any other end-of-turn ids the tokenizer's checkpoint names."""
        return (self.eot_id,)

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


Implementation = type[Component] | type[Tokenizer]
"""A registered component class: a subclass of its family's interface."""

FAMILIES: dict[str, Implementation] = {
    "tokenizer": Tokenizer,
    "positional": PositionalEncoding,
    "attention": Attention,
    "feed_forward": FeedForward,
    "norm": Norm,
    "block": Block,
    "residual": Residual,
    "head": Head,
    "mtp": MultiTokenPrediction,
}
