"""The model config: shared dimensions plus one component spec per family.

A component spec is written ``{ name = "...", <that plugin's own params> }`` (or just the
name). Specs are resolved against a registry passed in the validation context
(``context={"registry": ...}``), so every field is checked by the plugin that will use it
and every message about names comes from what is registered, never from a hand-kept list.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal, Protocol, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from gptzoo.core.errors import ConfigError
from gptzoo.core.interfaces import (
    Attention,
    Dims,
    Head,
    Implementation,
    InitScheme,
    MultiTokenPrediction,
    Params,
    PositionalEncoding,
)


class ComponentLookup(Protocol):
    def resolve(self, family: str, name: str) -> Implementation:
        """The implementation registered as ``name`` in ``family``; ValueError naming the options if none."""


class ComponentSpec(BaseModel):
    """A resolved component: its registered name, validated params and implementation."""

    model_config = ConfigDict(frozen=True)

    name: str
    params: SerializeAsAny[Params]
    _impl: Implementation = PrivateAttr()

    @classmethod
    def resolve(cls, family: str, raw: Any, lookup: ComponentLookup) -> ComponentSpec:
        if isinstance(raw, ComponentSpec):
            return raw
        if isinstance(raw, str):
            raw = {"name": raw}
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise ValueError(f'write the {family} as {{ name = "...", <params> }}, got {raw!r}')
        fields = dict(raw)
        name = fields.pop("name")
        impl = lookup.resolve(family, name)
        try:
            params = impl.Params.model_validate(fields, context={"registry": lookup})
        except ValidationError as err:
            raise ValueError(f"{family} '{name}': " + "; ".join(_describe_errors(err, impl.Params))) from None
        spec = cls(name=name, params=params)
        spec._impl = impl
        return spec

    @property
    def impl(self) -> Implementation:
        return self._impl

    def build(self, *args: Any, **kwargs: Any) -> Any:
        return self._impl(self.params, *args, **kwargs)

    @model_serializer
    def _flat(self) -> dict[str, Any]:
        return {"name": self.name, **self.params.model_dump(mode="json")}


_DEFAULTS = {
    "tokenizer": {"name": "tiktoken", "encoding": "gpt2"},
    "positional": {"name": "learned"},
    "attention": {"name": "sdpa"},
    "feed_forward": {"name": "gelu"},
    "norm": {"name": "layernorm"},
    "block": {"name": "pre_norm"},
    "residual": {"name": "plain"},
    "head": {"name": "lm"},
}
PER_LAYER = ("positional", "attention", "feed_forward", "norm", "block")


def _spec(family: str) -> Any:
    return Field(default_factory=lambda: dict(_DEFAULTS[family]), validate_default=True)


def _resolve_spec(raw: Any, info: ValidationInfo) -> ComponentSpec | None:
    lookup = (info.context or {}).get("registry")
    if raw is None or isinstance(raw, ComponentSpec):
        return raw
    if lookup is None:
        raise ValueError(
            "component specs are resolved against a registry: validate with "
            "gptzoo.registry.default_registry().model_config(...) or pass context={'registry': ...}"
        )
    assert info.field_name is not None, "a field validator's info names its field"
    return ComponentSpec.resolve(info.field_name, raw, lookup)


class LayerKind(BaseModel):
    """The components and head shapes one kind of layer uses instead of the model-level ones (unset: the model's)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    head_dim: int | None = Field(None, gt=0, description="this kind's head size (Gemma 4's wider global layers)")
    n_kv_heads: int | None = Field(None, gt=0, description="this kind's key/value heads")
    positional: ComponentSpec | None = None
    attention: ComponentSpec | None = None
    feed_forward: ComponentSpec | None = None
    norm: ComponentSpec | None = None
    block: ComponentSpec | None = None

    @field_validator(*PER_LAYER, mode="before")
    @classmethod
    def _resolve(cls, raw: Any, info: ValidationInfo) -> ComponentSpec | None:
        return _resolve_spec(raw, info)

    @field_validator("positional")
    @classmethod
    def _layer_positional(cls, spec: ComponentSpec | None) -> ComponentSpec | None:
        if spec is not None and issubclass(spec.impl, PositionalEncoding) and spec.impl.adds_to_embeddings():
            raise ValueError(
                f"'{spec.name}' is added to the input embeddings, which every layer shares: "
                "set it as model.positional; per layer choose a scheme that acts inside attention"
            )
        return spec


def _check_position_hooks(layer: LayerSpec) -> None:
    """Refuse a position scheme that acts through a hook the layer's token mixer never calls: it would have no effect."""
    scheme, mixer = layer.positional, layer.attention
    if not (issubclass(scheme.impl, PositionalEncoding) and issubclass(mixer.impl, Attention)):
        return
    hooks = mixer.impl.declared_position_hooks(mixer.params)
    unused = sorted(scheme.impl.hooks() - hooks)
    if unused:
        where = f"layer {layer.index} ({layer.kind})" if layer.kind else f"layer {layer.index}"
        uses = ", ".join(sorted(hooks)) or "no position hook"
        raise ValueError(
            f"{where}: positional '{scheme.name}' acts through {', '.join(unused)}, which attention '{mixer.name}' "
            f"does not use ({uses}), so it would have no effect there: choose another scheme for this layer "
            f'(a layer kind may set positional = "none")'
        )


@dataclass(frozen=True)
class LayerSpec:
    """The resolved components of one layer (a block builds its parts from these)."""

    index: int
    kind: str | None
    positional: ComponentSpec
    attention: ComponentSpec
    feed_forward: ComponentSpec
    norm: ComponentSpec
    block: ComponentSpec


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    vocab_size: int | None = Field(None, gt=0, description="None: the tokenizer's vocabulary size")
    vocab_multiple: int = Field(
        1,
        gt=0,
        description="pad embedding and LM head rows to a multiple of this (64 suits GPU matmuls); padded ids get -inf logits, so probabilities and loss are exact",
    )
    context_length: int = Field(gt=0)
    d_model: int = Field(gt=0)
    n_layers: int = Field(gt=0)
    n_heads: int = Field(gt=0)
    n_kv_heads: int | None = Field(None, gt=0, description="None: n_heads (multi-head); 1: multi-query")
    head_dim: int | None = Field(None, gt=0, description="size of each attention head; None: d_model / n_heads")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    qkv_bias: bool = Field(False, description="biases on the query, key and value projections")
    attn_out_bias: bool = Field(True, description="a bias on attention's output projection")
    tied_head: bool = False
    embedding_scale: Annotated[float, Field(gt=0)] | Literal["sqrt_d_model"] = Field(
        1.0,
        description="multiply the token embeddings by this before the first layer; sqrt_d_model: √d_model in the activations' dtype (Gemma)",
    )
    embedding_norm: bool = Field(
        False,
        description="normalise the token embeddings with a norm of its own (the model's norm) before the first layer (nanochat)",
    )
    init: InitScheme = Field(
        "gpt2",
        description="gpt2: N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layers); torch_default: PyTorch's defaults, as the book's model",
    )

    tokenizer: ComponentSpec = _spec("tokenizer")
    positional: ComponentSpec = _spec("positional")
    attention: ComponentSpec = _spec("attention")
    feed_forward: ComponentSpec = _spec("feed_forward")
    norm: ComponentSpec = _spec("norm")
    block: ComponentSpec = _spec("block")
    residual: ComponentSpec = Field(
        default_factory=lambda: dict(_DEFAULTS["residual"]),
        validate_default=True,
        description='the residual stream between blocks: "plain" (one stream) or e.g. { name = "hyper", n_streams = 4 }',
    )
    head: ComponentSpec = _spec("head")
    mtp: ComponentSpec | None = Field(
        None,
        description='multi-token prediction modules trained beside the head, e.g. { name = "sequential", depth = 1, '
        "loss_weight = 0.3 } (DeepSeek-V3); None: none",
    )

    layer_kinds: dict[str, LayerKind] = Field(
        default_factory=dict,
        description="named kinds of layer, each overriding some of positional, attention, feed_forward, norm, block, head_dim, n_kv_heads",
    )
    kv_shared_layers: int = Field(
        0,
        ge=0,
        description="the last this many layers attend with the keys and values of the last earlier layer of their kind "
        "and keep no cache (Gemma 3n, Gemma 4's num_kv_shared_layers); their mixers compute queries only",
    )
    layer_pattern: list[str] = Field(
        default_factory=list,
        description="kinds of the layers in order, repeated to n_layers (layer i is pattern[i % len]); empty: every layer uses the model-level components",
    )

    @field_validator(*_DEFAULTS, "mtp", mode="before")
    @classmethod
    def _resolve(cls, raw: Any, info: ValidationInfo) -> ComponentSpec | None:
        return _resolve_spec(raw, info)

    @model_validator(mode="before")
    @classmethod
    def _norm_placement(cls, data: Any) -> Any:
        """Configs from before block layouts said norm_placement = "pre" | "post"; read them as blocks."""
        if not isinstance(data, dict) or "norm_placement" not in data:
            return data
        data = dict(data)
        placement = data.pop("norm_placement")
        if placement not in ("pre", "post"):
            raise ValueError(
                f"norm_placement: '{placement}' is not 'pre' or 'post' (it is the old spelling of block = 'pre_norm' / 'post_norm')"
            )
        if "block" in data:
            raise ValueError(
                "give model.block alone: norm_placement is the old spelling of block = 'pre_norm' / 'post_norm'"
            )
        data["block"] = {"name": f"{placement}_norm"}
        return data

    @model_validator(mode="after")
    def _check_dims(self) -> ModelConfig:
        n_kv = self.n_kv_heads or self.n_heads
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads} (or set head_dim)")
        if self.n_heads % n_kv:
            raise ValueError(f"n_heads={self.n_heads} must be divisible by n_kv_heads={n_kv}")
        for kind, chosen in self.layer_kinds.items():
            if chosen.n_kv_heads is not None and self.n_heads % chosen.n_kv_heads:
                raise ValueError(
                    f"layer_kinds.{kind}.n_kv_heads={chosen.n_kv_heads}: n_heads={self.n_heads} must be divisible by it"
                )
        if self.tied_head and not (issubclass(self.head.impl, Head) and self.head.impl.can_tie):
            raise ValueError(f"head '{self.head.name}' cannot share the token embedding: set tied_head = false")
        unknown = sorted(set(self.layer_pattern) - set(self.layer_kinds))
        if unknown:
            raise ValueError(
                f"layer_pattern names {', '.join(map(repr, unknown))}, not in layer_kinds (declared: {', '.join(self.layer_kinds) or 'none'})"
            )
        if len(self.layer_pattern) > self.n_layers:
            raise ValueError(f"layer_pattern has {len(self.layer_pattern)} entries for n_layers={self.n_layers}")
        mtp_kind = self._mtp_kind()
        if mtp_kind is not None and mtp_kind not in self.layer_kinds:
            raise ValueError(
                f"mtp.layer_kind '{mtp_kind}' is not in layer_kinds (declared: {', '.join(self.layer_kinds) or 'none'})"
            )
        for layer in [*self.layers(), *([self.mtp_layer()] if self.mtp is not None else [])]:
            _check_position_hooks(layer)
        self._check_kv_sharing()
        checked = set()
        # Kinds the pattern leaves out are still checked: a sweep may bring them in.
        for kind, chosen in self.layer_kinds.items():
            for family in PER_LAYER:
                spec = getattr(chosen, family)
                if spec is not None and hasattr(spec.impl, "check"):
                    try:
                        spec.impl.check(spec.params, self.kind_dims(kind))
                    except ValueError as err:
                        raise ValueError(f"layer_kinds.{kind}.{family} '{spec.name}': {err}") from None
        for family, spec, where, dims in [
            ("tokenizer", self.tokenizer, "", self.dims()),
            ("head", self.head, "", self.dims()),
            ("residual", self.residual, "", self.dims()),
            *([("mtp", self.mtp, "", self.dims())] if self.mtp is not None else []),
        ] + [
            (
                family,
                getattr(layer, family),
                f"layer {layer.index} ({layer.kind}): " if layer.kind else "",
                self.dims(layer.index),
            )
            for layer in self.layers()
            for family in PER_LAYER
        ]:
            once = (family, id(spec), replace(dims, layer_idx=0))  # a spec is checked once per head shape
            if hasattr(spec.impl, "check") and once not in checked:
                checked.add(once)
                try:
                    spec.impl.check(spec.params, dims)
                except ValueError as err:
                    raise ValueError(f"{where}{family} '{spec.name}': {err}") from None
        return self

    def _check_kv_sharing(self) -> None:
        if self.kv_shared_layers >= self.n_layers:
            raise ValueError(
                f"kv_shared_layers={self.kv_shared_layers}: at least one of the n_layers={self.n_layers} layers must "
                "compute the keys and values the others share"
            )
        for layer in self.layers()[self.n_layers - self.kv_shared_layers :]:
            source = self.kv_source(layer.index)
            if source is None:
                raise ValueError(
                    f"kv_shared_layers={self.kv_shared_layers}: layer {layer.index} ({layer.kind}) has no earlier layer of "
                    "its kind to share the keys and values of: share fewer layers or put one of its kind before them"
                )
            mixer = layer.attention
            if not (issubclass(mixer.impl, Attention) and mixer.impl.kv_sharing):
                raise ValueError(
                    f"kv_shared_layers={self.kv_shared_layers}: layer {layer.index}'s attention '{mixer.name}' cannot "
                    "attend with another layer's keys and values: share fewer layers or choose a mixer that can "
                    "(Attention.kv_sharing)"
                )

    def kv_source(self, index: int) -> int | None:
        """The layer whose keys and values layer ``index`` attends with (``kv_shared_layers``), or None: its own."""
        first_shared = self.n_layers - self.kv_shared_layers
        if index < first_shared:
            return None
        kind = self.layer(index).kind
        return next((i for i in reversed(range(first_shared)) if self.layer(i).kind == kind), None)

    def embedding_multiplier(self) -> float:
        """The number ``embedding_scale`` stands for."""
        return self.d_model**0.5 if self.embedding_scale == "sqrt_d_model" else self.embedding_scale

    def layer(self, index: int) -> LayerSpec:
        """The components of layer ``index``: its kind's choices over the model-level ones."""
        return self.kind_layer(
            self.layer_pattern[index % len(self.layer_pattern)] if self.layer_pattern else None, index
        )

    def kind_layer(self, kind: str | None, index: int) -> LayerSpec:
        """The components of a layer of ``kind`` (None: the model-level ones) at ``index``."""
        chosen = self.layer_kinds[kind] if kind is not None else None
        specs = {f: (getattr(chosen, f) if chosen is not None else None) or getattr(self, f) for f in PER_LAYER}
        return LayerSpec(index=index, kind=kind, **specs)

    def mtp_layer(self) -> LayerSpec:
        """The layer the multi-token prediction modules' blocks are built as: the kind ``mtp`` names
        (``MultiTokenPrediction.layer_kind``), else the model's last layer."""
        kind = self._mtp_kind()
        return self.layer(self.n_layers - 1) if kind is None else self.kind_layer(kind, self.n_layers - 1)

    def _mtp_kind(self) -> str | None:
        spec = self.mtp
        if spec is None or not issubclass(spec.impl, MultiTokenPrediction):
            return None
        return spec.impl.layer_kind(spec.params)

    def layers(self) -> list[LayerSpec]:
        return [self.layer(i) for i in range(self.n_layers)]

    def dims(self, layer_idx: int | None = None) -> Dims:
        """The dimensions layer ``layer_idx`` is built with: the model's, with its kind's head shape
        (None: the model-level dimensions, which the embeddings and the head use)."""
        if layer_idx is None:
            return self.kind_dims(None)
        kind_dims = self.kind_dims(self.layer(layer_idx).kind)
        return replace(kind_dims, layer_idx=layer_idx, kv_from=self.kv_source(layer_idx))

    def kind_dims(self, kind: str | None) -> Dims:
        """The dimensions of a layer of ``kind`` (None: the model-level ones)."""
        chosen = self.layer_kinds[kind] if kind is not None else None
        return Dims(
            vocab_size=self.vocab_size or 0,
            vocab_multiple=self.vocab_multiple,
            context_length=self.context_length,
            d_model=self.d_model,
            n_heads=self.n_heads,
            n_kv_heads=(chosen and chosen.n_kv_heads) or self.n_kv_heads or self.n_heads,
            n_layers=self.n_layers,
            dropout=self.dropout,
            qkv_bias=self.qkv_bias,
            head_dim=(chosen and chosen.head_dim) or self.head_dim,
            attn_out_bias=self.attn_out_bias,
        )


# ---- readable errors ---------------------------------------------------------------


def _describe_errors(err: ValidationError, model: type[BaseModel] | None = None, prefix: str = "") -> list[str]:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        owner = _model_at(model, e["loc"][:-1])
        if e["type"] == "extra_forbidden" and owner is not None:
            known = list(owner.model_fields)
            close = difflib.get_close_matches(str(e["loc"][-1]), known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            msg = f"unknown field{hint}; known fields: {', '.join(known) or 'none'}"
        where = ".".join(p for p in (prefix, loc) if p)
        lines.append(f"{where}: {msg}" if where else msg)
    return lines


def _model_at(model: type[BaseModel] | None, loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the field at ``loc`` (for listing its known fields)."""
    parts = list(loc)
    while parts and model is not None:
        field = model.model_fields.get(str(parts.pop(0)))
        annotation = field.annotation if field is not None else None
        if get_origin(annotation) in (dict, list) and parts:  # a table of models: skip its key or index
            annotation = get_args(annotation)[-1]
            parts.pop(0)
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return model


def config_error(
    err: ValidationError, source: str, model: type[BaseModel] | None = None, prefix: str = ""
) -> ConfigError:
    """A ConfigError listing every problem in ``err`` with its dotted location in ``source``."""
    lines = _describe_errors(err, model, prefix)
    return ConfigError(f"{source}: invalid config\n  " + "\n  ".join(lines))
