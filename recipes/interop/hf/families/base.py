"""The types a family table is written in, and what every family shares: expanding a weight table
for one model, moving tensors between layouts, the attention rows, and Hugging Face's rope scaling.
Dotted config.json keys are read and set with gptzoo.recipes.config.keys, as the run config's are.

See the package's docstring (gptzoo.recipes.interop.hf.families) for what the four tables mean.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from gptzoo.core import CheckpointError, Dims, ModelConfig
from gptzoo.recipes.config import keys
from gptzoo.recipes.config.keys import MISSING

REQUIRED = object()  # a key every config.json of the family carries


@dataclass(frozen=True)
class Field:
    """One config.json key (dotted into nested objects) and the gptzoo paths it sets."""

    hf: str
    ours: tuple[str, ...]
    default: Any = REQUIRED  # the value when config.json leaves the key out; a callable reads the config

    def value(self, hf: dict) -> Any:
        found = keys.get(hf, self.hf)
        if found is not MISSING and found is not None:
            return found
        if self.default is REQUIRED:
            return MISSING
        return self.default(hf) if callable(self.default) else self.default


@dataclass(frozen=True)
class Require:
    """A config.json option gptzoo implements at ``allowed`` values only (``default`` when absent)."""

    hf: str
    allowed: tuple
    default: Any
    why: str


@dataclass(frozen=True)
class Weight:
    """gptzoo tensor ``ours`` <-> Hugging Face tensor(s) ``theirs`` (``{i}``: the layer; ``{m}`` in theirs:
    n_layers + i, where checkpoints keep multi-token prediction module i).

    ``layout``: ``same`` (one tensor, same shape), ``transposed`` (GPT-2's Conv1D stores
    (in, out)), ``per_head`` (GPT-NeoX's fused projection holds each head's query, key and value
    rows together, where gptzoo's holds all queries, then all keys, then all values), ``rows`` (the Hugging Face tensors stacked row-wise, sizes from ``rows(dims, shape)``),
    ``chunk`` (ours is part ``chunk = (k, n)`` of the Hugging Face tensor's rows cut into n equal
    parts: Phi-3's ``gate_up_proj`` holds the gate's rows, then the up projection's; in a stack of
    experts' matrices, each matrix's rows: Granite's ``input_linear`` (E, 2 × hidden, C)),
    ``experts`` (ours (E, ...) stacks one Hugging Face tensor per expert, ``{e}`` in its name),
    ``reshaped`` (the same numbers in the shape ``rows(dims, shape)``: Kimi Linear's A_log (1, 1, h, 1)),
    ``interleaved`` (ours is part ``chunk = (k, n)`` of the Hugging Face tensor's last axis, whose entries take the
    n parts in turn: gpt-oss's gate_up_proj_bias (E, 2 × hidden), the gate's [..., ::2], the up projection's
    [..., 1::2]), ``interleaved_transposed`` (the same for matrices stored (in, out), transposed: gpt-oss's
    gate_up_proj (E, C, 2 × hidden)),
    ``layer_rows`` / ``layer_columns`` (ours is layer i's part of the Hugging Face tensor's rows / columns cut
    into n_layers equal parts: Gemma 4 packs every layer's per-layer embedding table into one),
    ``shared`` (one Hugging Face tensor every layer keeps a copy of: Gemma 4's per_layer_projection_norm;
    export refuses copies that training has made differ),
    ``stack_transposed`` (ours (E, a, b) is part ``chunk = (k, n)`` of the Hugging Face stack (E, b, n × a) cut
    along its last axis, each expert's matrix transposed: Llama 4's ``gate_up_proj`` (E, C, 2 × hidden)).
    ``transposed`` swaps a stack's last two axes too (gpt-oss's and Llama 4's down_proj).
    ``rows`` sees the layer's own dimensions (its kind's head shape, ``kv_from``) and may give 0 rows for a
    tensor that layer lacks (Gemma 4's layers sharing another's keys and values have no k_proj).
    ``when``: the row holds only for the layers that also have this gptzoo tensor (``{i}``: the
    layer), where two kinds of layer name a tensor alike (LFM2's attention and convolution layers
    both have ``attention.out_proj``).
    ``row_sizes_of``: for ``rows``, the gptzoo tensors ({i}: the layer) whose row counts are the stacked parts'
    (OLMo Hybrid's convolution over [q | k | v]: the layer's q_proj, k_proj and v_proj), in place of ``rows``.
    """

    ours: str
    theirs: tuple[str, ...]
    layout: Literal[
        "same",
        "transposed",
        "per_head",
        "rows",
        "chunk",
        "experts",
        "reshaped",
        "interleaved",
        "interleaved_transposed",
        "layer_rows",
        "layer_columns",
        "shared",
        "stack_transposed",
    ] = "same"
    rows: Callable[[Dims, tuple[int, ...]], tuple[int, ...]] | None = None
    chunk: tuple[int, int] = (0, 1)
    when: str | None = None
    row_sizes_of: tuple[str, ...] = ()


@dataclass(frozen=True)
class Fused:
    """A Hugging Face tensor ``name`` (``{i}``: the layer) holding the rows of several, group by group:
    each of its ``groups(model, i)`` groups holds some rows of ``parts[0]``, then of ``parts[1]``, ...
    (Qwen3-Next's ``in_proj_qkvz``: per key head, its query, its key, its values, its gates). The
    weight table names the parts as if they were stored (``in_proj_qkvz.weight[q]``); import cuts
    the stored tensor into them and export interleaves them back."""

    name: str
    parts: tuple[str, ...]
    groups: Callable[[ModelConfig, int], int]


@dataclass(frozen=True)
class Fusion:
    """One fused tensor of one model: its parts' Hugging Face names, rows per group of each, groups."""

    parts: tuple[str, ...]
    sizes: tuple[int, ...]
    groups: int

    def split(self, tensor: torch.Tensor, part: int) -> torch.Tensor:
        """The fused tensor -> the rows of part ``part``."""
        return tensor.unflatten(0, (self.groups, -1)).split(self.sizes, dim=1)[part].flatten(0, 1)

    def join(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """The parts, in order -> the fused tensor."""
        return torch.cat([t.unflatten(0, (self.groups, -1)) for t in tensors], dim=1).flatten(0, 1)


@dataclass(frozen=True)
class Conversion:
    """A part of the config that is more than one key for one field (a rope scaling, a window):
    ``read(config.json)`` -> {gptzoo path: value}, raising ValueError for what gptzoo lacks;
    ``write(gptzoo [model] table)`` -> {config.json key: value}."""

    read: Callable[[dict], dict[str, Any]]
    write: Callable[[dict], dict[str, Any]]


@dataclass(frozen=True)
class Constant:
    """A Hugging Face tensor holding one number that gptzoo keeps as a setting, not a weight (xIELU's beta):
    ``theirs`` ({i}: the layer) in each layer that has the gptzoo tensor ``when``, its value ``value([model] table)``.
    Import refuses a stored value other than the setting's; export writes it."""

    theirs: str
    when: str
    value: Callable[[dict], float]


def constant_values(family: Family, shapes: dict[str, tuple[int, ...]], model: dict) -> dict[str, float]:
    """Each constant Hugging Face tensor of this model -> its value."""
    found = {}
    for constant in family.constants:
        pattern = re.compile(re.escape(constant.when).replace(r"\{i\}", r"(?P<i>\d+)") + "$")
        for name in shapes:
            if m := pattern.match(name):
                found[constant.theirs.format(**m.groupdict())] = constant.value(model)
    return found


@dataclass(frozen=True)
class MtpLayout:
    """Where a family's checkpoints keep their multi-token-prediction layers (families/mtp.py)."""

    depth_key: str  # config.json's count of them
    held: str  # a regex matching the first one's tensors; {n}: num_hidden_layers, {prefix}: the family's prefix
    shared_copies: bool  # each stores copies of the embedding and the head, which gptzoo shares with the model
    max_depth: int | None = None  # the most gptzoo's sequential modules express, where the layers share parts
    # config.json -> why gptzoo's MTP block, built as the model's last layer, cannot be the checkpoint's (None: it can)
    block_mismatch: Callable[[dict], str | None] | None = None
    # (config.json, the [model] table being read) -> the MTP table's settings beyond its depth (it may add to the
    # table the layer kind its blocks are built as); ValueError for a value gptzoo does not implement
    read: Callable[[dict, dict], dict[str, Any]] | None = None
    # the [model] table -> the config.json keys of those settings
    write: Callable[[dict], dict[str, Any]] | None = None
    settings: str = ""  # those settings in words, for the families' reference page


@dataclass(frozen=True)
class Family:
    model_type: str
    architecture: str
    fields: tuple[Field, ...]
    assembly: dict[str, Any]
    requires: tuple[Require, ...]
    weights: tuple[Weight, ...]
    conversions: tuple[Conversion, ...] = ()
    prefix: str = "model."  # the base model's prefix, which checkpoints of the bare base model omit
    legacy: Callable[[dict], dict] | None = None  # config.json as older transformers wrote it -> as transformers 5 does
    ignored: str = r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"  # buffers some checkpoints keep
    fused: tuple[Fused, ...] = ()  # tensors holding several of the weight table's, interleaved by groups
    constants: tuple[Constant, ...] = ()  # one-number tensors gptzoo keeps as settings (see Constant)
    mtp: MtpLayout | None = None  # its multi-token-prediction layers, imported into model.mtp when held


# ---- expanding a family's weight table for one model ---------------------------------------------


def weight_plan(family: Family, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[Weight, list[str]]]:
    """gptzoo tensor name -> (its family entry, the Hugging Face names it is made of)."""
    patterns = [(re.compile(re.escape(w.ours).replace(r"\{i\}", r"(?P<i>\d+)") + "$"), w) for w in family.weights]
    n_layers = len({name.split(".")[1] for name in shapes if name.startswith("blocks.")})
    plan = {}
    for name in shapes:
        for pattern, weight in patterns:
            if m := pattern.match(name):
                # {m}: the checkpoint's layer index n_layers + i (a multi-token prediction layer after the model's)
                index = m.groupdict() | ({"m": int(m["i"]) + n_layers} if "i" in m.groupdict() else {})
                if weight.when is not None and weight.when.format(**index) not in shapes:
                    continue
                if weight.layout == "experts":
                    plan[name] = (
                        weight,
                        [weight.theirs[0].format(**index, e=e) for e in range(shapes[name][0])],
                    )
                else:
                    plan[name] = (weight, [t.format(**index) for t in weight.theirs])
                break
        else:
            raise CheckpointError(f"weight '{name}' has no {family.model_type} counterpart")
    return plan


def layer_of(name: str) -> int | None:
    """The layer a gptzoo tensor belongs to (``blocks.{i}.``), None for the others."""
    parts = name.split(".")
    return int(parts[1]) if parts[0] == "blocks" else None


def hf_shapes(
    plan: dict,
    shapes: dict[str, tuple[int, ...]],
    dims: Dims,
    layer_dims: Callable[[int], Dims] | None = None,
    mtp_dims: Dims | None = None,
) -> dict[str, tuple[list[tuple[str, slice | None]], str, tuple[int, ...]]]:
    """Hugging Face name -> (the gptzoo tensors it is made of, each with the rows it takes or
    None for all, stacked row-wise, or row-/column-wise by layer; the layout it is stored in; its shape).
    ``layer_dims(i)``: layer i's dimensions, which a ``rows`` entry sees (None: the model's); ``mtp_dims``:
    the multi-token prediction blocks' (their layer kind's head shape; None: the model's)."""
    out: dict = {}
    for name, (weight, theirs) in plan.items():
        shape = shapes[name]
        layer = layer_of(name)
        own = layer_dims(layer) if layer_dims is not None and layer is not None else dims
        if mtp_dims is not None and name.startswith("mtp.layers."):
            own = mtp_dims
        if weight.layout == "rows":
            start = 0
            sizes = (
                tuple(shapes[part.format(i=layer)][0] for part in weight.row_sizes_of)
                if weight.row_sizes_of
                else weight.rows(own, shape)
            )
            for hf, rows in zip(theirs, sizes, strict=True):
                if rows:  # a tensor this layer lacks
                    out[hf] = ([(name, slice(start, start + rows))], "same", (rows, *shape[1:]))
                start += rows
        elif weight.layout in ("layer_rows", "layer_columns"):
            assert layer is not None, f"{name}: a {weight.layout} weight belongs to a layer"
            axis = 0 if weight.layout == "layer_rows" else 1
            whole = (*shape[:axis], shape[axis] * dims.n_layers, *shape[axis + 1 :])
            layout = "same" if axis == 0 else "columns"
            parts = out.setdefault(theirs[0], ([None] * dims.n_layers, layout, whole))[0]
            parts[layer] = (name, None)
        elif weight.layout == "stack_transposed":
            k, n = weight.chunk
            parts = out.setdefault(theirs[0], ([None] * n, "stack_transposed", (shape[0], shape[2], shape[1] * n)))[0]
            parts[k] = (name, None)
        elif weight.layout == "shared":
            out.setdefault(theirs[0], ([], "shared", shape))[0].append((name, None))
        elif weight.layout == "reshaped":
            out[theirs[0]] = ([(name, None)], "same", weight.rows(own, shape))
        elif weight.layout == "experts":
            for e, hf in enumerate(theirs):
                out[hf] = ([(name, slice(e, e + 1))], "same", shape[1:])
        elif weight.layout == "chunk":
            k, n = weight.chunk
            axis = row_axis(shape)
            whole = (*shape[:axis], shape[axis] * n, *shape[axis + 1 :])
            parts = out.setdefault(theirs[0], ([None] * n, "same", whole))[0]
            parts[k] = (name, None)
        elif weight.layout in ("interleaved", "interleaved_transposed"):
            k, n = weight.chunk
            stored = transposed(shape) if weight.layout == "interleaved_transposed" else shape
            whole = (*stored[:-1], stored[-1] * n)
            parts = out.setdefault(theirs[0], ([None] * n, weight.layout, whole))[0]
            parts[k] = (name, None)
        else:
            stored = transposed(shape) if weight.layout == "transposed" else shape
            out[theirs[0]] = ([(name, None)], weight.layout, stored)
    return out


def fusions(family: Family, specs: dict, model: ModelConfig) -> dict[str, Fusion]:
    """Each fused Hugging Face tensor of this model -> how its parts (in ``specs``, as ``hf_shapes`` gives
    them) are laid out in it."""
    found = {}
    for fused in family.fused:
        first = re.compile(re.escape(fused.parts[0]).replace(r"\{i\}", r"(?P<i>\d+)") + "$")
        for name in specs:
            if m := first.match(name):
                i = m.group("i")
                parts = tuple(p.format(i=i) for p in fused.parts)
                groups = fused.groups(model, int(i))
                sizes = tuple(specs[p][2][0] // groups for p in parts)
                found[fused.name.format(i=i)] = Fusion(parts, sizes, groups)
    return found


def fuse_shapes(specs: dict, fused: dict[str, Fusion]) -> dict:
    """``hf_shapes``' answer with each fused tensor in place of its parts (layout ``fused``)."""
    parts = {p: name for name, fusion in fused.items() for p in fusion.parts}
    out: dict = {}
    for name, spec in specs.items():
        if name not in parts:
            out[name] = spec
        elif (whole := parts[name]) not in out:
            fusion = fused[whole]
            rest = spec[2][1:]
            out[whole] = ([], "fused", (fusion.groups * sum(fusion.sizes), *rest))
    return out


def row_axis(shape: tuple[int, ...] | torch.Size) -> int:
    """The axis of a tensor's rows, which ``chunk`` cuts: 0 for a matrix or a vector, 1 for a stack of
    experts' matrices (E, rows, columns)."""
    return max(len(shape) - 2, 0)


def transposed(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape with its last two axes swapped (a matrix's, or each matrix's in a stack)."""
    return (*shape[:-2], shape[-1], shape[-2])


def deinterleave(layout: str, tensor: torch.Tensor, chunk: tuple[int, int]) -> torch.Tensor:
    """Part ``chunk = (k, n)`` of a tensor whose last axis takes n parts in turn, as gptzoo holds it."""
    k, n = chunk
    part = tensor[..., k::n]
    return (part.transpose(-1, -2) if layout == "interleaved_transposed" else part).contiguous()


def interleave(layout: str, parts: list[torch.Tensor]) -> torch.Tensor:
    """gptzoo's parts -> the Hugging Face tensor whose last axis takes them in turn."""
    if layout == "interleaved_transposed":
        parts = [p.transpose(-1, -2) for p in parts]
    return torch.stack(parts, dim=-1).flatten(-2)


def to_ours(layout: str, tensor: torch.Tensor, dims: Dims) -> torch.Tensor:
    """A Hugging Face tensor stored in ``layout`` -> gptzoo's."""
    if layout == "transposed":
        return tensor.transpose(-1, -2)
    if layout == "per_head":
        return (
            tensor.unflatten(0, (dims.n_heads, 3, -1)).transpose(0, 1).flatten(0, 2)
        )  # (nh, 3, hs, ...) -> (3, nh, hs, ...)
    return tensor


def to_theirs(layout: str, tensor: torch.Tensor, dims: Dims) -> torch.Tensor:
    """A gptzoo tensor -> the Hugging Face one stored in ``layout``."""
    if layout == "transposed":
        return tensor.transpose(-1, -2)
    if layout == "per_head":
        return (
            tensor.unflatten(0, (3, dims.n_heads, -1)).transpose(0, 1).flatten(0, 2)
        )  # (3, nh, hs, ...) -> (nh, 3, hs, ...)
    return tensor


def period(types: list[str]) -> list[str]:
    """The shortest prefix that, repeated, gives a config.json's ``layer_types`` (gptzoo's layer_pattern)."""
    return next(types[:p] for p in range(1, len(types) + 1) if all(t == types[i % p] for i, t in enumerate(types)))


def qkv_rows(dims: Dims, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shared attention layout: query heads, then key heads, then value heads."""
    return (dims.n_heads * dims.head_size, dims.n_kv_heads * dims.head_size, dims.n_kv_heads * dims.head_size)


# ---- Hugging Face's rope scaling, which several families share ------------------------------------

SCALINGS = ("linear", "llama3", "yarn")  # the rope plugin's scaling types, spelt as Hugging Face's rope_type


def read_rope_scaling(rope: dict, hf: dict, where: str = "rope_parameters") -> dict | None:
    """Hugging Face's rope parameters -> the rope plugin's ``scaling`` (None: unscaled)."""
    kind = rope.get("rope_type", "default")
    if kind == "default":
        return None
    if kind not in SCALINGS:
        raise ValueError(
            f"{where}.rope_type = {json.dumps(kind)} is not supported for {hf.get('model_type')} (gptzoo's rope scales {', '.join(SCALINGS)})"
        )
    original = rope.get("original_max_position_embeddings")
    if kind == "linear":
        return {"type": "linear", "factor": rope["factor"]}
    if kind == "llama3":
        return {
            "type": "llama3",
            "factor": rope["factor"],
            "low_freq_factor": rope["low_freq_factor"],
            "high_freq_factor": rope["high_freq_factor"],
            "original_context_length": original,
        }
    factor = rope.get("factor") or hf["max_position_embeddings"] / original
    attention_factor = rope.get("attention_factor")
    if attention_factor is None and rope.get("mscale") and rope.get("mscale_all_dim"):  # as transformers derives it
        mscale = lambda m: 0.1 * m * math.log(factor) + 1.0 if factor > 1 else 1.0  # noqa: E731
        attention_factor = mscale(rope["mscale"]) / mscale(rope["mscale_all_dim"])
    return {
        "type": "yarn",
        "factor": factor,
        "original_context_length": original,
        "beta_fast": rope.get("beta_fast") or 32.0,
        "beta_slow": rope.get("beta_slow") or 1.0,
        "attention_factor": attention_factor,
        "truncate": rope.get("truncate", True),
    }


def write_rope_scaling(scaling: dict | None) -> dict[str, Any]:
    """The rope plugin's ``scaling`` -> Hugging Face's rope parameters (beside rope_theta)."""
    if not scaling:
        return {"rope_type": "default"}
    renamed = {"type": "rope_type", "original_context_length": "original_max_position_embeddings"}
    return {renamed.get(k, k): v for k, v in scaling.items() if v is not None}
