"""The model config: shared dimensions plus one component spec per family.

A component spec is written ``{ name = "...", <that plugin's own params> }`` (or just the
name). Specs are resolved against a registry passed in the validation context
(``context={"registry": ...}``), so every field is checked by the plugin that will use it
and every message about names comes from what is registered, never from a hand-kept list.
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Any, Literal, Protocol

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
from gptzoo.core.interfaces import Dims, Params


class ComponentLookup(Protocol):
    def resolve(self, family: str, name: str) -> type:
        """The implementation registered as ``name`` in ``family``; ValueError naming the options if none."""


class ComponentSpec(BaseModel):
    """A resolved component: its registered name, validated params and implementation."""

    model_config = ConfigDict(frozen=True)

    name: str
    params: SerializeAsAny[Params]
    _impl: type = PrivateAttr()

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
            params = impl.Params.model_validate(fields)
        except ValidationError as err:
            raise ValueError(f"{family} '{name}': " + "; ".join(_describe_errors(err, impl.Params))) from None
        spec = cls(name=name, params=params)
        spec._impl = impl
        return spec

    @property
    def impl(self) -> type:
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
    "head": {"name": "lm"},
}


def _spec(family: str) -> Any:
    return Field(default_factory=lambda: dict(_DEFAULTS[family]), validate_default=True)


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab_size: int | None = Field(None, gt=0, description="None: the tokenizer's vocabulary size")
    vocab_multiple: int = Field(1, gt=0, description="pad embedding and LM head rows to a multiple of this (64 suits GPU matmuls); padded ids get -inf logits, so probabilities and loss are exact")
    context_length: int = Field(gt=0)
    d_model: int = Field(gt=0)
    n_layers: int = Field(gt=0)
    n_heads: int = Field(gt=0)
    n_kv_heads: int | None = Field(None, gt=0, description="None: n_heads (multi-head); 1: multi-query")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    qkv_bias: bool = False
    tied_head: bool = False
    norm_placement: Literal["pre", "post"] = "pre"

    tokenizer: ComponentSpec = _spec("tokenizer")
    positional: ComponentSpec = _spec("positional")
    attention: ComponentSpec = _spec("attention")
    feed_forward: ComponentSpec = _spec("feed_forward")
    norm: ComponentSpec = _spec("norm")
    head: ComponentSpec = _spec("head")

    @field_validator("tokenizer", "positional", "attention", "feed_forward", "norm", "head", mode="before")
    @classmethod
    def _resolve(cls, raw: Any, info: ValidationInfo) -> ComponentSpec:
        lookup = (info.context or {}).get("registry")
        if lookup is None and not isinstance(raw, ComponentSpec):
            raise ValueError(
                "component specs are resolved against a registry: validate with "
                "gptzoo.registry.default_registry().model_config(...) or pass context={'registry': ...}"
            )
        return ComponentSpec.resolve(info.field_name, raw, lookup)

    @model_validator(mode="after")
    def _check_dims(self) -> ModelConfig:
        n_kv = self.n_kv_heads or self.n_heads
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.n_heads % n_kv:
            raise ValueError(f"n_heads={self.n_heads} must be divisible by n_kv_heads={n_kv}")
        if self.tied_head and not self.head.impl.can_tie:
            raise ValueError(f"head '{self.head.name}' cannot share the token embedding: set tied_head = false")
        dims = self.dims()
        for family in _DEFAULTS:
            spec: ComponentSpec = getattr(self, family)
            if hasattr(spec.impl, "check"):
                try:
                    spec.impl.check(spec.params, dims)
                except ValueError as err:
                    raise ValueError(f"{family} '{spec.name}': {err}") from None
        return self

    def dims(self, layer_idx: int = 0) -> Dims:
        return Dims(
            vocab_size=self.vocab_size or 0,
            vocab_multiple=self.vocab_multiple,
            context_length=self.context_length,
            d_model=self.d_model,
            n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads or self.n_heads,
            n_layers=self.n_layers,
            dropout=self.dropout,
            qkv_bias=self.qkv_bias,
            layer_idx=layer_idx,
        )


# ---- reading configs: TOML files, dotted overrides, readable errors ---------------------


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value); the value is read as TOML, else as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: write it as key=value, for example model.attention.name=sdpa")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return key.strip().split("."), parsed


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted ``key=value`` overrides applied.

    Setting a component's ``name`` to another plugin replaces the whole spec: the old
    plugin's params would mean nothing to the new one. Give the new params with more overrides.
    """
    import copy

    data = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for key in keys[:-1]:
            child = node.get(key)
            if isinstance(child, str):  # a component written by name only
                child = {"name": child}
            if child is None:
                child = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: '{key}' is a value, not a table")
            node[key] = child
            node = child
        last = keys[-1]
        if last == "name" and node.get("name") not in (None, value):
            node.clear()
        node[last] = value
    return data


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
    for part in loc:
        field = model.model_fields.get(str(part)) if model is not None else None
        annotation = field.annotation if field is not None else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return model


def config_error(err: ValidationError, source: str, model: type[BaseModel] | None = None, prefix: str = "") -> ConfigError:
    """A ConfigError listing every problem in ``err`` with its dotted location in ``source``."""
    lines = _describe_errors(err, model, prefix)
    return ConfigError(f"{source}: invalid config\n  " + "\n  ".join(lines))
