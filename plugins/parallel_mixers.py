"""Token mixers side by side on the same input, their outputs summed: Falcon-H1's parallel hybrid
layer (Falcon-LLM team, 2025), where attention and Mamba-2 read the same normed input.

    y = Σ_i m_i · mixer_i(n_i · x)

Each part is any registered token mixer, written as in a config (``{ name = "sdpa" }``), with its
own params, weights (``mixers.<i>.``), cache and position hooks; the block around it norms the
input once and adds y to the residual stream.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from pydantic import Field, ValidationInfo, field_validator, model_validator
from torch import Tensor, nn

from gptzoo.core import Attention, AttentionContext, ComponentSpec, Dims, LayerCache, Params
from gptzoo.core.interfaces import CacheKind, Inspection, Measurement
from gptzoo.registry import hookimpl


class ParallelMixersParams(Params):
    mixers: tuple[ComponentSpec, ...] = Field(
        default_factory=lambda: ({"name": "sdpa"}, {"name": "short_conv"}),
        validate_default=True,
        description="the token mixers that read the same input, each written as a layer's attention is "
        '({ name = "...", <params> }); their outputs are summed (Falcon-H1: attention and Mamba-2)',
    )
    in_multipliers: tuple[float, ...] | None = Field(
        None,
        description="one per mixer: its input is multiplied by this (Falcon-H1's attention_in_multiplier and "
        "ssm_in_multiplier); None: 1 each",
    )
    out_multipliers: tuple[float, ...] | None = Field(
        None,
        description="one per mixer: its output is multiplied by this before the sum (Falcon-H1's "
        "attention_out_multiplier and ssm_out_multiplier); None: 1 each",
    )

    @field_validator("mixers", mode="before")
    @classmethod
    def _resolve(cls, raw: Any, info: ValidationInfo) -> tuple[ComponentSpec, ...]:
        registry = (info.context or {}).get("registry")
        if registry is None:
            raise ValueError("mixers are resolved against a registry: validate with context={'registry': ...}")
        if not isinstance(raw, (list, tuple)) or len(raw) < 2:
            raise ValueError(f'give two or more token mixers, as [{{ name = "sdpa" }}, ...], got {raw!r}')
        specs = tuple(ComponentSpec.resolve("attention", part, registry) for part in raw)
        absent = [spec.name for spec in specs if spec.impl.absent]
        if absent:
            raise ValueError(f"'{absent[0]}' mixes no tokens: leave it out of the mixers")
        return specs

    @model_validator(mode="after")
    def _one_multiplier_per_mixer(self) -> ParallelMixersParams:
        for field in ("in_multipliers", "out_multipliers"):
            multipliers = getattr(self, field)
            if multipliers is not None and len(multipliers) != len(self.mixers):
                raise ValueError(
                    f"{field} has {len(multipliers)} entries for {len(self.mixers)} mixers: give one per mixer"
                )
        return self


class PartsCache(LayerCache):
    """Each part's own decoding cache, in the parts' order."""

    def __init__(self, parts: list[LayerCache]):
        self.parts = parts


class ParallelMixers(Attention):
    """Several token mixers on the same input, summed, with a multiplier on each one's input and output.

    Its declarations follow its parts: it calls the union of their position hooks (each part
    gets the layer's context unchanged and uses the hooks it calls); its cache holds each
    part's, and keeps keys and values if any part does, else a window if any part keeps one,
    else a state; its receptive field is the widest part's (None if any part sees every
    earlier token). Inspection shows what its first part that reports anything offers, and
    only that part records: the sum has no single matrix, so the other parts' contributions
    are not in what ``inspect`` shows for this layer. FLOPs: the model counts each part as its
    own component, so this counts only the scaling and summing.
    """

    Params = ParallelMixersParams

    def __init__(self, params: ParallelMixersParams, dims: Dims):
        super().__init__(params, dims)
        self.mixers = nn.ModuleList(spec.build(dims) for spec in params.mixers)
        self.in_multipliers = params.in_multipliers or (1.0,) * len(params.mixers)
        self.out_multipliers = params.out_multipliers or (1.0,) * len(params.mixers)
        offers = [spec.impl.declared_inspection(spec.params) for spec in params.mixers]
        self.reporter = next((i for i, o in enumerate(offers) if o != "nothing"), None)

    @classmethod
    def check(cls, params: ParallelMixersParams, dims: Dims) -> None:
        for i, spec in enumerate(params.mixers):
            try:
                spec.impl.check(spec.params, dims)
            except ValueError as err:
                raise ValueError(f"mixers[{i}] '{spec.name}': {err}") from None

    @classmethod
    def declared_inspection(cls, params: ParallelMixersParams) -> Inspection:
        offers = (spec.impl.declared_inspection(spec.params) for spec in params.mixers)
        return next((o for o in offers if o != "nothing"), "nothing")

    @classmethod
    def declared_measurements(cls, params: ParallelMixersParams) -> frozenset[Measurement]:
        """What its parts measure together: each part reports its own, the layer's value is their maximum."""
        return frozenset().union(*(spec.impl.declared_measurements(spec.params) for spec in params.mixers))

    @classmethod
    def declared_position_hooks(cls, params: ParallelMixersParams) -> frozenset[str]:
        return frozenset().union(*(spec.impl.declared_position_hooks(spec.params) for spec in params.mixers))

    @classmethod
    def declared_cache_kind(cls, params: ParallelMixersParams) -> CacheKind:
        kinds = {spec.impl.declared_cache_kind(spec.params) for spec in params.mixers}
        return "keys_values" if "keys_values" in kinds else "window" if "window" in kinds else "state"

    @classmethod
    def declared_static_cache(cls, params: ParallelMixersParams) -> bool:
        return all(spec.impl.declared_static_cache(spec.params) for spec in params.mixers)

    @classmethod
    def receptive_field(cls, params: ParallelMixersParams) -> int | None:
        fields = [spec.impl.receptive_field(spec.params) for spec in params.mixers]
        return None if any(f is None for f in fields) else max(f for f in fields if f is not None)

    @classmethod
    def kit_lengths(cls, params: ParallelMixersParams) -> tuple[int, ...]:
        lengths = [n for spec in params.mixers for n in spec.impl.kit_lengths(spec.params)]
        return (max(lengths),) if lengths else ()

    def forward(self, x: Tensor, ctx: AttentionContext, cache: PartsCache | None = None) -> Tensor:
        quiet = _without_recorder(ctx) if ctx.capturing else ctx
        y = torch.zeros_like(x)
        for i, mixer in enumerate(self.mixers):
            scaled = x if self.in_multipliers[i] == 1.0 else self.in_multipliers[i] * x
            part = mixer(scaled, ctx if i == self.reporter else quiet, cache.parts[i] if cache is not None else None)
            y = y + self.out_multipliers[i] * part
        return y

    def new_cache(self, batch_size: int, max_len: int | None, device: torch.device, dtype: torch.dtype) -> PartsCache:
        return PartsCache([m.new_cache(batch_size, max_len, device, dtype) for m in self.mixers])

    def new_static_cache(self, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype) -> PartsCache:
        return PartsCache([m.new_static_cache(batch_size, max_len, device, dtype) for m in self.mixers])

    def cache_bytes(self, n_tokens: int, dtype: torch.dtype = torch.float32) -> int:
        return sum(m.cache_bytes(n_tokens, dtype) for m in self.mixers)

    def static_cache_bytes(self, n_tokens: int, dtype: torch.dtype = torch.float32) -> int:
        return sum(m.static_cache_bytes(n_tokens, dtype) for m in self.mixers)

    def flops_per_token(self, context_length: int) -> int:
        return 2 * self.dims.d_model * len(self.mixers)  # each part's output scaled and added


def _without_recorder(ctx: AttentionContext) -> AttentionContext:
    """The same context for a part whose report inspection does not show (it shares the masks built so far)."""
    quiet = copy.copy(ctx)
    quiet.recorder = None
    return quiet


@hookimpl
def register_components(register):
    register("attention", "parallel_mixers", ParallelMixers)
