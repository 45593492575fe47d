"""What every layer of one forward pass shares: positions, masking, score bias and the inputs.

The model builds one context per forward (one per distinct position scheme when layer kinds
choose their own), so token mixers stay free of position and mask logic. What a mixer may read
from it is the ``ctx.`` table of docs/extending.md ("Writing an attention variant").
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn

from gptzoo.core.errors import GptzooError
from gptzoo.core.interfaces import Attention, PositionalEncoding


class Recorder:
    """What one forward records for inspection (``GPT(idx, recorder=Recorder())``): the residual
    stream entering the first block and leaving each block, (B, T, C) each, and per layer what
    its token mixer offers (``offers[i]``, an ``Inspection``) with what it reported
    (``attentions[i]``; None where it offers nothing)."""

    def __init__(self) -> None:
        self.residuals: list[Tensor] = []
        self.attentions: list[Tensor | None] = []
        self.offers: list[str] = []
        self._reported: list[Tensor] = []

    def stream(self, x: Tensor, block: nn.Module | None = None) -> None:
        """The residual stream after ``block`` (None: the embeddings, before the first block)."""
        self.residuals.append(x)
        if block is None:
            return
        mixer = cast(Attention, block.attention)
        offers, reported, self._reported = type(mixer).declared_inspection(mixer.params), self._reported, []
        expected = 0 if offers == "nothing" else 1
        if len(reported) != expected:
            raise GptzooError(
                f"{type(mixer).__name__} in layer {len(self.residuals) - 2} declares inspection = '{offers}' and "
                f"called ctx.record {len(reported)} times: while ctx.capturing, a mixer records {expected} time(s) per forward"
            )
        self.offers.append(offers)
        self.attentions.append(reported[0] if reported else None)


class Meter:
    """Per-layer numbers one forward measures (``GPT(idx, meter=Meter())``): ``layers[i]`` maps each
    ``Measurement`` layer i's mixer declares to its value over the batch (empty where it declares none)."""

    def __init__(self) -> None:
        self.layers: list[dict[str, float]] = []
        self._reported: dict[str, list[Tensor]] = {}

    def layer_done(self, block: nn.Module) -> None:
        """Close ``block``'s layer: its mixer must have reported each declared measurement, and only those;
        several reports of one (a composite's parts each report theirs) give their maximum."""
        mixer = cast(Attention, block.attention)
        declared, reported, self._reported = type(mixer).declared_measurements(mixer.params), self._reported, {}
        if set(reported) != declared:
            raise GptzooError(
                f"{type(mixer).__name__} in layer {len(self.layers)} declares measurements {sorted(declared)} and "
                f"reported {sorted(reported)}: while ctx.measuring, a mixer reports each declared one per forward"
            )
        self.layers.append({name: max(float(v) for v in values) for name, values in reported.items()})

    def values(self, name: str) -> list[float | None]:
        """``name`` per layer, None where the layer's mixer does not report it."""
        return [layer.get(name) for layer in self.layers]


class AttentionContext:
    def __init__(
        self,
        positional: PositionalEncoding,
        positions: Tensor,
        key_positions: Tensor,
        offset: int | Tensor = 0,
        key_valid: Tensor | None = None,
        recorder: Recorder | None = None,
        key_origin: int = 0,
        kv_store: dict[int, tuple[Tensor, Tensor] | None] | None = None,
        token_ids: Tensor | None = None,
        embeddings: Tensor | None = None,
        meter: Meter | None = None,
        handovers: dict[str, Any] | None = None,
    ):
        self.token_ids, self.embeddings = token_ids, embeddings
        self.handovers = {} if handovers is None else handovers  # one per forward, shared by its contexts
        self.positional = positional
        self.kv_store = kv_store  # one per forward, shared by its contexts: the layers read, None until they share
        self.recorder = recorder
        self.meter = meter
        self.positions = positions
        self.key_positions = key_positions
        self.offset = offset
        self.key_valid = key_valid
        self.key_origin = key_origin
        self.static = isinstance(offset, Tensor)  # keys span a static cache's every slot, written or not
        self.valid = self._new_valid(positions.size(-1))  # (B, T) or None
        self.score_bias = positional.score_bias(positions, key_positions)  # (B|1, nh|1, T, Tk - key_origin) or None
        self.is_causal = not self.static and offset == 0 and key_valid is None and self.score_bias is None
        self._bias: dict[tuple, Tensor | None] = {}

    def _new_valid(self, T: int) -> Tensor | None:
        """The validity of the T new tokens: the last T keys', or a static cache's slots offset.. (B, T)."""
        if self.key_valid is None:
            return None
        if self.static:
            return self.key_valid.index_select(1, torch.arange(T, device=self.key_valid.device) + self.offset)
        return self.key_valid[:, -T:]

    def rotate(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        return self.positional.rotate(q, k, self.positions)

    def share_kv(self, layer: int, k: Tensor, v: Tensor) -> None:
        """Hand over the keys and values layer ``layer`` attends with, where a later layer reads them."""
        if self.kv_store is not None and layer in self.kv_store:
            self.kv_store[layer] = (k, v)

    def shared_kv(self, layer: int) -> tuple[Tensor, Tensor]:
        """The keys and values layer ``layer`` attended with in this forward."""
        shared = self.kv_store.get(layer) if self.kv_store is not None else None
        assert shared is not None, f"layer {layer} handed over no keys and values in this forward"
        return shared

    def hand_over(self, name: str, value: Any) -> None:
        """Leave ``value`` under ``name`` for the layers after this one in this forward (replacing an earlier one's)."""
        self.handovers[name] = value

    def handed(self, name: str) -> Any:
        """What the latest earlier layer of this forward handed over under ``name``."""
        if name not in self.handovers:
            raise GptzooError(
                f"no earlier layer handed over {name!r} in this forward: a layer reading it needs one before it"
            )
        return self.handovers[name]

    @property
    def capturing(self) -> bool:
        return self.recorder is not None

    def record(self, what: Tensor) -> None:
        """Report what this layer's mixer offers to inspection; nothing happens unless capturing."""
        if self.recorder is not None:
            self.recorder._reported.append(what)

    @property
    def measuring(self) -> bool:
        return self.meter is not None

    def measure(self, name: str, value: Tensor) -> None:
        """Report a declared per-layer measurement (a scalar tensor); nothing happens unless measuring."""
        if self.meter is not None:
            self.meter._reported.setdefault(name, []).append(value.detach())

    def bias(self, dtype: torch.dtype, window: int | None = None, first_key: int | None = None) -> Tensor | None:
        """Additive mask (B|1, nh|1, T, Tk - first_key), or None when every query may see every key;
        ``first_key`` defaults to the first key kept (``key_origin``)."""
        first_key = self.key_origin if first_key is None else first_key
        key = (dtype, window, first_key)
        if key not in self._bias:
            self._bias[key] = self._build_bias(dtype, window, first_key)
        return self._bias[key]

    def _build_bias(self, dtype: torch.dtype, window: int | None, first_key: int) -> Tensor | None:
        T, Tk = self.positions.size(-1), self.key_origin + self.key_positions.size(-1)
        assert first_key >= self.key_origin, f"key slots from {self.key_origin} on are kept, not from {first_key}"
        kept = first_key - self.key_origin  # where key slot first_key lies in key_positions and key_valid
        if (
            T == 1
            and not self.static
            and self.key_valid is None
            and self.score_bias is None
            and (window is None or Tk - first_key <= window)
        ):
            return None
        device = self.positions.device
        q_slot = torch.arange(T, device=device) + self.offset
        k_slot = torch.arange(first_key, Tk, device=device)
        allowed = k_slot[None, :] <= q_slot[:, None]  # (T, Tk')
        if window is not None:
            allowed &= k_slot[None, :] > q_slot[:, None] - window
        if self.key_valid is not None:
            # A padding query attends to itself only, so its softmax stays finite.
            allowed = (allowed & self.key_valid[:, None, kept:]) | (k_slot[None, :] == q_slot[:, None])  # (B, T, Tk')
        else:
            allowed = allowed.unsqueeze(0)
        bias = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, float("-inf"))
        bias = bias.unsqueeze(1)  # (B|1, 1, T, Tk')
        if self.score_bias is not None:
            bias = bias + self.score_bias[..., kept:].to(dtype)
        return bias
