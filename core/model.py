"""The GPT, assembled from whatever components the config names, layer by layer."""

from __future__ import annotations

from dataclasses import replace
from typing import cast

import torch
from torch import Tensor, nn

from gptzoo.core.cache import KVCache, StaticKVCache
from gptzoo.core.config import ModelConfig
from gptzoo.core.context import AttentionContext, Meter, Recorder
from gptzoo.core.errors import ConfigError
from gptzoo.core.interfaces import (
    Attention,
    AuxiliaryLoss,
    Block,
    Component,
    MultiTokenPrediction,
    PositionalEncoding,
    Residual,
)


class GPT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size is None:
            raise ConfigError(
                "model.vocab_size is not set: resolve it from the tokenizer first (config.model_copy(update={'vocab_size': tokenizer.vocab_size}))"
            )
        self.config = config
        dims = config.dims()
        self.token_embedding = nn.Embedding(dims.padded_vocab_size, dims.d_model)
        self.embedding_multiplier = config.embedding_multiplier()
        self.embedding_norm = config.norm.build(dims) if config.embedding_norm else None
        self.positional = config.positional.build(dims)
        # Layer kinds with a position scheme or a head size of their own share one module per kind.
        layers = config.layers()
        mtp_layer = config.mtp_layer() if config.mtp is not None else None
        own = {
            layer.kind: layer.positional
            for layer in [*layers, *([mtp_layer] if mtp_layer is not None else [])]
            if layer.kind is not None
            and (
                layer.positional is not config.positional
                or (
                    config.kind_dims(layer.kind).head_size != dims.head_size
                    and not cast(PositionalEncoding, self.positional).adds_to_embeddings()
                )
            )
        }
        self.kind_positionals = nn.ModuleDict({kind: spec.build(config.kind_dims(kind)) for kind, spec in own.items()})
        self.layer_positional = [layer.kind if layer.kind in own else None for layer in layers]
        self.dropout = nn.Dropout(dims.dropout)
        self.blocks = nn.ModuleList(layer.block.build(config.dims(layer.index), layer) for layer in layers)
        # The layers whose keys and values later layers attend with (kv_shared_layers), and those later layers.
        self.kv_readers = [config.kv_source(layer.index) is not None for layer in layers]
        self.kv_sources = sorted({i for i in map(config.kv_source, range(config.n_layers)) if i is not None})
        self.residuals = nn.ModuleList(config.residual.build(config.dims(layer.index), layer) for layer in layers)
        last, residual = layers[-1].block.impl, cast(type[Residual], config.residual.impl)
        self.final_norm = (
            nn.Identity()
            if issubclass(last, Block) and last.output_normalized and not residual.several_streams
            else config.norm.build(dims)
        )
        self.head = config.head.build(dims, self.token_embedding if config.tied_head else None)
        self.mtp = (
            config.mtp.build(replace(config.kind_dims(mtp_layer.kind), layer_idx=config.n_layers - 1), mtp_layer)
            if config.mtp is not None and mtp_layer is not None
            else None
        )
        self.mtp_positional = mtp_layer.kind if mtp_layer is not None and mtp_layer.kind in own else None
        self._mtp_hidden: list[Tensor] = []  # the MTP modules' outputs from the last training forward
        # Only components that report auxiliary losses are asked each step: none in a dense model.
        self._aux_sources = [
            m
            for m in self.modules()
            if isinstance(m, Component) and type(m).auxiliary_losses is not Component.auxiliary_losses
        ]
        self.init_weights()

    def init_weights(self) -> None:
        """Initialise every parameter under ``config.init``; each component owns its own part."""
        scheme = self.config.init
        if scheme == "gpt2":
            nn.init.normal_(self.token_embedding.weight, mean=0.0, std=0.02)
        for module in self.modules():
            if isinstance(module, Component):
                module.init_weights(scheme)

    # ---- forward -------------------------------------------------------------------------

    def attention_contexts(
        self,
        idx: Tensor,
        cache: KVCache | None = None,
        pad_mask: Tensor | None = None,
        recorder: Recorder | None = None,
        meter: Meter | None = None,
    ) -> dict[str | None, AttentionContext]:
        """The contexts of one forward over idx (B, T) through blocks whose caches ``cache`` holds
        (advancing its bookkeeping by T): the model-level one under None, one per layer kind with a
        position scheme of its own under its kind. They carry idx and its embeddings, the first block's input."""
        B, T = idx.shape
        if recorder is not None and cache is not None:
            raise ValueError("a recorder inspects one whole forward: run it without a cache")
        if meter is not None and cache is not None:
            raise ValueError("a meter measures one whole forward: run it without a cache")
        # A static cache's length is a tensor (a compiled step sees the same Python values at every token),
        # advanced in place below: the offset is a copy.
        offset: int | Tensor = cache.length if cache is not None else 0
        if isinstance(offset, Tensor):
            offset = offset.clone()
        elif cache is not None and cache.max_len is not None and offset + T > cache.max_len:
            raise ValueError(f"KV cache holds {cache.max_len} tokens; {offset} cached + {T} new do not fit")
        padded = pad_mask is not None or (cache is not None and cache.padded)
        valid = pad_mask if pad_mask is not None else torch.ones(B, T, dtype=torch.bool, device=idx.device)
        if not padded:
            positions = (torch.arange(T, device=idx.device) + offset).unsqueeze(0)  # (1, T)
        else:
            before = cache.seen if cache is not None else 0  # (B, 1) real tokens already cached
            positions = (before + valid.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
        origin = 0
        if cache is None:
            key_positions, key_valid = positions, (pad_mask if padded else None)
        else:
            origin = cache.origin
            cache.padded |= pad_mask is not None
            key_positions, key_valid = cache.advance(positions, valid, padded)
        extent = (
            offset + T if isinstance(offset, int) else cast(int, cast(KVCache, cache).max_len)
        )  # static: every slot
        for scheme in (self.positional, *self.kind_positionals.values()):
            cast(PositionalEncoding, scheme).reach(extent)
        kv_store = dict.fromkeys(self.kv_sources) if self.kv_sources else None
        x = self.dropout(self.positional.embed(self.embed(idx), positions))  # (B, T, C): the first block's input
        handovers: dict[str, object] = {}  # what a layer leaves for the later ones (AttentionContext.hand_over)
        shared = (positions, key_positions, offset, key_valid, recorder, origin, kv_store, idx, x, meter, handovers)
        schemes: dict[str | None, nn.Module] = {None: self.positional, **dict(self.kind_positionals.items())}
        return {kind: AttentionContext(cast(PositionalEncoding, p), *shared) for kind, p in schemes.items()}

    def embed(self, idx: Tensor) -> Tensor:
        """Token ids (B, T) -> their embeddings (B, T, C), times ``embedding_scale``, then normalised with ``embedding_norm``."""
        x = self.token_embedding(idx)
        if self.embedding_multiplier != 1.0:
            # A tensor in the activations' dtype, as Gemma's normaliser: √3072 rounds in bf16.
            x = x * torch.tensor(self.embedding_multiplier, dtype=x.dtype)
        return self.embedding_norm(x) if self.embedding_norm is not None else x

    def hidden_states(
        self,
        idx: Tensor,
        cache: KVCache | None = None,
        pad_mask: Tensor | None = None,
        recorder: Recorder | None = None,
        meter: Meter | None = None,
    ) -> Tensor:
        """idx (B, T) token ids -> final hidden states (B, T, C).

        With ``cache``, idx holds only the new tokens and the cache advances by T. ``pad_mask``
        (B, T) is True at real tokens; padded batches (left padding for generation) get
        per-row positions that count real tokens only. A ``recorder`` receives the residual
        stream and every layer's attention weights (a whole sequence at once: no cache); a
        ``meter`` every layer's declared measurements (``Attention.measurements``).
        """
        contexts = self.attention_contexts(idx, cache, pad_mask, recorder, meter)
        x = cast(Tensor, contexts[None].embeddings)  # (B, T, C)
        if recorder is not None:
            recorder.stream(x)
        x = cast(Residual, self.residuals[0]).widen(x)
        for i, (block, residual, kind) in enumerate(
            zip(self.blocks, self.residuals, self.layer_positional, strict=True)
        ):
            x = residual(x, block, contexts[kind], cache.layers[i] if cache is not None else None)
            if recorder is not None:
                recorder.stream(cast(Residual, residual).narrow(x), block)
            if meter is not None:
                meter.layer_done(block)
        return self.final_norm(cast(Residual, self.residuals[-1]).narrow(x))

    def forward(
        self,
        idx: Tensor,
        cache: KVCache | None = None,
        pad_mask: Tensor | None = None,
        recorder: Recorder | None = None,
        meter: Meter | None = None,
    ) -> Tensor:
        """idx (B, T) -> logits: (B, T, V) from an LM head, (B, n_classes) from a classifier.

        While training, the multi-token prediction modules (``config.mtp``) run too, on the tokens
        after each position within idx; ``auxiliary_losses(targets)`` turns them into their losses."""
        hidden = self.hidden_states(idx, cache, pad_mask, recorder, meter)
        if self.mtp is not None and self.training and cache is None:
            # Depth k reads the token k ahead; the last k positions read tokens from the start, and their losses are not counted.
            ahead = torch.stack([idx.roll(-k, dims=1) for k in range(1, self.mtp.depth + 1)], dim=-1)
            self._mtp_hidden = self.predict_ahead(hidden, ahead, pad_mask=pad_mask)
        return self.head(hidden, pad_mask)

    def predict_ahead(
        self, hidden: Tensor, ahead: Tensor, cache: KVCache | None = None, pad_mask: Tensor | None = None
    ) -> list[Tensor]:
        """The multi-token prediction modules' normalised hidden states (B, T, C) per depth, from the main
        model's ``hidden`` (B, T, C) and ``ahead`` (B, T, D) the ids k tokens after each position for
        depths k = 1..D; their blocks' caches in ``cache`` (made by ``new_cache(..., mtp=True)``)."""
        mtp = cast(MultiTokenPrediction, self.mtp)
        contexts = self.attention_contexts(ahead[..., 0], cache, pad_mask)
        embed = self.embed if mtp.token_embedding is None else mtp.token_embedding
        embedded = [embed(ahead[..., k]) for k in range(ahead.size(-1))]
        return mtp(hidden, embedded, contexts[self.mtp_positional], cache.layers if cache is not None else None)

    def auxiliary_losses(self, targets: Tensor | None = None) -> dict[str, AuxiliaryLoss]:
        """The components' auxiliary losses from the last forward, each averaged over the layers reporting it;
        with the forward's ``targets`` (B, T), also each multi-token prediction depth's (``mtp_k``)."""
        reported: dict[str, list[AuxiliaryLoss]] = {}
        for module in self._aux_sources:
            for name, loss in module.auxiliary_losses().items():
                reported.setdefault(name, []).append(loss)
        losses = {
            name: AuxiliaryLoss(torch.stack([loss.value for loss in losses]).mean(), losses[0].weight)
            for name, losses in reported.items()
        }
        hidden, self._mtp_hidden = self._mtp_hidden, []
        if targets is not None and self.mtp is not None:
            losses |= cast(MultiTokenPrediction, self.mtp).losses(hidden, self.head, targets)
        return losses

    def new_cache(
        self,
        batch_size: int,
        max_len: int | None = None,
        dtype: torch.dtype | None = None,
        mtp: bool = False,
        static: bool = False,
    ) -> KVCache:
        """A decoding cache for ``max_len`` tokens; each layer's mixer makes its own part (``mtp``:
        those of the multi-token prediction modules' blocks, for ``predict_ahead``; ``static``: a
        ``StaticKVCache`` of fixed shapes for ``max_len`` tokens, for mixers that declare ``static_cache``).

        Default: no limit where every layer's cache is bounded (``bounded_cache``) and every
        position scheme extends, else the context. Bounded models keep only the latest tokens'
        bookkeeping, so memory stays flat however long the text grows.
        """
        weight = self.token_embedding.weight
        if max_len is None and not (self.bounded_cache() and self.extension_refusal() is None):
            max_len = self.config.context_length
        keep = None
        if self.bounded_cache():
            # Every windowed mixer, those inside a composite mixer too, reads its window's bookkeeping.
            windows = [m for m in self.modules() if isinstance(m, Attention) and _cache_kind(m) == "window"]
            keep = max([type(m).cache_window(m.params) or 0 for m in windows] or [0])
        mixers = [b.attention for b in cast(MultiTokenPrediction, self.mtp).blocks] if mtp else self.mixers()
        readers = [False] * len(mixers) if mtp else self.kv_readers
        device, dtype = weight.device, dtype or weight.dtype
        if static:
            assert max_len is not None, "a static cache is made for a given number of tokens"
            parts = [
                None if r else m.new_static_cache(batch_size, max_len, device, dtype)
                for m, r in zip(mixers, readers, strict=True)
            ]
            return StaticKVCache(parts, batch_size, max_len, device)
        layers = [
            None if r else m.new_cache(batch_size, max_len, device, dtype) for m, r in zip(mixers, readers, strict=True)
        ]
        return KVCache(layers, batch_size, max_len, device, keep)

    def mixers(self) -> list[Attention]:
        """Each layer's token mixer, in order."""
        return [cast(Block, block).attention for block in self.blocks]

    def bounded_cache(self) -> bool:
        """Whether every layer's cache is bounded (a window or a recurrent state), so decoding memory stays flat."""
        return all(_cache_kind(m) != "keys_values" for m in self.mixers())

    def extension_refusal(self) -> str | None:
        """Why generation crops to the context instead of decoding past it (naming the layer or
        scheme), or None: every position scheme extends and some layer keeps a bounded cache (a
        recurrent state or a window, which cropping would throw away); layers that keep every key
        and value then grow their caches past the context."""
        for scheme in [self.positional, *self.kind_positionals.values()]:
            limit = type(scheme).length_limit
            if limit is not None:
                return f"its position scheme {type(scheme).__name__} cannot run past the context: {limit}"
        # Mixers nested in a composite count: Falcon-H1's Mamba-2 beside attention keeps a state.
        bounded = [
            m for m in self.modules() if isinstance(m, Attention) and not m.absent and _cache_kind(m) != "keys_values"
        ]
        if not bounded:
            return "every layer's token mixer keeps every key and value and no state, so it crops to the context as the book does"
        return None


def _cache_kind(mixer: Attention) -> str:
    return type(mixer).declared_cache_kind(mixer.params)
