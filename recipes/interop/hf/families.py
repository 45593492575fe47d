"""The Hugging Face model families gptzoo reads and writes, each as data.

A family is four tables:

- ``fields``: a Hugging Face config.json key <-> the gptzoo [model] path(s) holding the same
  number (``hidden_size`` <-> ``d_model``), with the value transformers assumes when the key is
  absent. Both directions read the same table.
- ``assembly``: what the family always is in gptzoo terms (the plugins and their fixed
  settings: ``positional.name = "rope"``, ``feed_forward.name = "swiglu"``, ...).
- ``requires``: Hugging Face options gptzoo implements at some values only (``hidden_act``
  must be ``silu``); another value is refused, naming the key, the value and why.
- ``weights``: gptzoo tensor names <-> Hugging Face tensor names, ``{i}`` standing for the
  layer; several Hugging Face tensors may be stacked into one of gptzoo's (query, key and
  value rows into ``qkv``), and GPT-2 stores its Conv1D weights transposed.

gptzoo.recipes.interop.hf.convert does the rest for every family alike: checks, streaming, run folders, export.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from gptzoo.core import CheckpointError, Dims

REQUIRED = object()  # a key every config.json of the family carries


@dataclass(frozen=True)
class Field:
    """One config.json key (dotted into nested objects) and the gptzoo paths it sets."""

    hf: str
    ours: tuple[str, ...]
    default: Any = REQUIRED  # the value when config.json leaves the key out; a callable reads the config

    def value(self, hf: dict) -> Any:
        found = lookup(hf, self.hf)
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
    """gptzoo tensor ``ours`` <-> Hugging Face tensor(s) ``theirs`` (``{i}``: the layer).

    ``layout``: ``same`` (one tensor, same shape), ``transposed`` (GPT-2's Conv1D stores
    (in, out)), ``per_head`` (GPT-NeoX's fused projection holds each head's query, key and value
    rows together, where gptzoo's holds all queries, then all keys, then all values), ``rows`` (the Hugging Face tensors stacked row-wise, sizes from ``rows(dims, shape)``),
    ``chunk`` (ours is part ``chunk = (k, n)`` of the Hugging Face tensor's rows cut into n equal
    parts: Phi-3's ``gate_up_proj`` holds the gate's rows, then the up projection's),
    ``experts`` (ours (E, ...) stacks one Hugging Face tensor per expert, ``{e}`` in its name).
    """

    ours: str
    theirs: tuple[str, ...]
    layout: Literal["same", "transposed", "per_head", "rows", "chunk", "experts"] = "same"
    rows: Callable[[Dims, tuple[int, ...]], tuple[int, ...]] | None = None
    chunk: tuple[int, int] = (0, 1)


@dataclass(frozen=True)
class Conversion:
    """A part of the config that is more than one key for one field (a rope scaling, a window):
    ``read(config.json)`` -> {gptzoo path: value}, raising ValueError for what gptzoo lacks;
    ``write(gptzoo [model] table)`` -> {config.json key: value}."""

    read: Callable[[dict], dict[str, Any]]
    write: Callable[[dict], dict[str, Any]]


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


MISSING = object()


# ---- expanding a family's weight table for one model ---------------------------------------------


def weight_plan(family: Family, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[Weight, list[str]]]:
    """gptzoo tensor name -> (its family entry, the Hugging Face names it is made of)."""
    patterns = [(re.compile(re.escape(w.ours).replace(r"\{i\}", r"(?P<i>\d+)") + "$"), w) for w in family.weights]
    plan = {}
    for name in shapes:
        for pattern, weight in patterns:
            if m := pattern.match(name):
                if weight.layout == "experts":
                    plan[name] = (
                        weight,
                        [weight.theirs[0].format(**m.groupdict(), e=e) for e in range(shapes[name][0])],
                    )
                else:
                    plan[name] = (weight, [t.format(**m.groupdict()) for t in weight.theirs])
                break
        else:
            raise CheckpointError(f"weight '{name}' has no {family.model_type} counterpart")
    return plan


def hf_shapes(
    plan: dict, shapes: dict[str, tuple[int, ...]], dims: Dims
) -> dict[str, tuple[list[tuple[str, slice | None]], str, tuple[int, ...]]]:
    """Hugging Face name -> (the gptzoo tensors it is made of, each with the rows it takes or
    None for all, stacked row-wise; the layout it is stored in; its shape)."""
    out: dict = {}
    for name, (weight, theirs) in plan.items():
        shape = shapes[name]
        if weight.layout == "rows":
            start = 0
            for hf, rows in zip(theirs, weight.rows(dims, shape)):
                out[hf] = ([(name, slice(start, start + rows))], "same", (rows, *shape[1:]))
                start += rows
        elif weight.layout == "experts":
            for e, hf in enumerate(theirs):
                out[hf] = ([(name, slice(e, e + 1))], "same", shape[1:])
        elif weight.layout == "chunk":
            k, n = weight.chunk
            parts = out.setdefault(theirs[0], ([None] * n, "same", (shape[0] * n, *shape[1:])))[0]
            parts[k] = (name, None)
        else:
            transposed = weight.layout == "transposed"
            out[theirs[0]] = ([(name, None)], weight.layout, shape[::-1] if transposed else shape)
    return out


def to_ours(layout: str, tensor: torch.Tensor, dims: Dims) -> torch.Tensor:
    """A Hugging Face tensor stored in ``layout`` -> gptzoo's."""
    if layout == "transposed":
        return tensor.T
    if layout == "per_head":
        return (
            tensor.unflatten(0, (dims.n_heads, 3, -1)).transpose(0, 1).flatten(0, 2)
        )  # (nh, 3, hs, ...) -> (3, nh, hs, ...)
    return tensor


def to_theirs(layout: str, tensor: torch.Tensor, dims: Dims) -> torch.Tensor:
    """A gptzoo tensor -> the Hugging Face one stored in ``layout``."""
    if layout == "transposed":
        return tensor.T
    if layout == "per_head":
        return (
            tensor.unflatten(0, (3, dims.n_heads, -1)).transpose(0, 1).flatten(0, 2)
        )  # (3, nh, hs, ...) -> (nh, 3, hs, ...)
    return tensor


def lookup(data: dict, dotted: str) -> Any:
    node: Any = data
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return MISSING
        node = node[key]
    return node


def qkv_rows(dims: Dims, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shared attention layout: query heads, then key heads, then value heads."""
    return (dims.n_heads * dims.head_size, dims.n_kv_heads * dims.head_size, dims.n_kv_heads * dims.head_size)


def _heads(hf: dict) -> int:
    return hf["num_attention_heads"]


def _head_dim(hf: dict) -> int:
    return hf["hidden_size"] // hf["num_attention_heads"]


# ---- the decoder layer shared by Llama and the families derived from it -----------------------

LLAMA_FIELDS = (
    Field("vocab_size", ("vocab_size",)),
    Field("hidden_size", ("d_model",)),
    Field("num_hidden_layers", ("n_layers",)),
    Field("num_attention_heads", ("n_heads",)),
    Field("num_key_value_heads", ("n_kv_heads",), _heads),
    Field("head_dim", ("head_dim",), _head_dim),
    Field("max_position_embeddings", ("context_length",)),
    Field("intermediate_size", ("feed_forward.hidden",)),
    Field("rms_norm_eps", ("norm.eps",), 1e-6),
    Field("rope_parameters.rope_theta", ("positional.base",), 10000.0),
    Field("tie_word_embeddings", ("tied_head",), False),
)
LLAMA_ASSEMBLY = {
    "positional": {"name": "rope"},
    "feed_forward": {"name": "swiglu", "bias": False},
    "norm": {"name": "rmsnorm"},
    "block": {"name": "pre_norm"},
    "head": {"name": "lm"},
    "qkv_bias": False,
    "attn_out_bias": False,
}
SILU = Require("hidden_act", ("silu",), "silu", "the SwiGLU feed-forward gates with SiLU")
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


def _read_rope(hf: dict) -> dict[str, Any]:
    scaling = read_rope_scaling(hf["rope_parameters"], hf)
    return {} if scaling is None else {"positional.scaling": scaling}


def _write_rope(model: dict) -> dict[str, Any]:
    return {f"rope_parameters.{k}": v for k, v in write_rope_scaling(model["positional"].get("scaling")).items()}


ROPE_SCALING = Conversion(_read_rope, _write_rope)  # rope_parameters.rope_type and its parameters
DEFAULT_ROPE = Require(
    "rope_parameters.rope_type",
    ("default",),
    "default",
    "rope scaling is read for the dense families and DeepSeek-V3 so far",
)
LLAMA_WEIGHTS = (
    Weight("token_embedding.weight", ("model.embed_tokens.weight",)),
    Weight("blocks.{i}.attn_norm.weight", ("model.layers.{i}.input_layernorm.weight",)),
    Weight(
        "blocks.{i}.attention.qkv.weight",
        tuple(f"model.layers.{{i}}.self_attn.{p}_proj.weight" for p in "qkv"),
        "rows",
        qkv_rows,
    ),
    Weight(
        "blocks.{i}.attention.qkv.bias",
        tuple(f"model.layers.{{i}}.self_attn.{p}_proj.bias" for p in "qkv"),
        "rows",
        qkv_rows,
    ),
    Weight("blocks.{i}.attention.out_proj.weight", ("model.layers.{i}.self_attn.o_proj.weight",)),
    Weight("blocks.{i}.attention.out_proj.bias", ("model.layers.{i}.self_attn.o_proj.bias",)),
    Weight("blocks.{i}.ffn_norm.weight", ("model.layers.{i}.post_attention_layernorm.weight",)),
    Weight("blocks.{i}.feed_forward.gate_proj.weight", ("model.layers.{i}.mlp.gate_proj.weight",)),
    Weight("blocks.{i}.feed_forward.up_proj.weight", ("model.layers.{i}.mlp.up_proj.weight",)),
    Weight("blocks.{i}.feed_forward.out_proj.weight", ("model.layers.{i}.mlp.down_proj.weight",)),
    Weight("blocks.{i}.feed_forward.gate_proj.bias", ("model.layers.{i}.mlp.gate_proj.bias",)),
    Weight("blocks.{i}.feed_forward.up_proj.bias", ("model.layers.{i}.mlp.up_proj.bias",)),
    Weight("blocks.{i}.feed_forward.out_proj.bias", ("model.layers.{i}.mlp.down_proj.bias",)),
    Weight("final_norm.weight", ("model.norm.weight",)),
    Weight("head.weight", ("lm_head.weight",)),
)

LLAMA = Family(
    model_type="llama",
    architecture="LlamaForCausalLM",
    fields=LLAMA_FIELDS
    + (
        Field("attention_bias", ("qkv_bias", "attn_out_bias"), False),
        Field("mlp_bias", ("feed_forward.bias",), False),
    ),
    assembly={k: v for k, v in LLAMA_ASSEMBLY.items() if k not in ("qkv_bias", "attn_out_bias")}
    | {"feed_forward": {"name": "swiglu"}},  # biases from the fields
    requires=(SILU, Require("pretraining_tp", (1,), 1, "the projections are not split into tensor-parallel slices")),
    weights=LLAMA_WEIGHTS,
    conversions=(ROPE_SCALING,),
)


def _read_window(hf: dict) -> dict[str, Any]:
    window = hf.get("sliding_window")
    return {} if window is None else {"attention.name": "sliding_window", "attention.window": window}


def _write_window(model: dict) -> dict[str, Any]:
    attention = model["attention"]
    return {"sliding_window": attention["window"] if attention["name"] == "sliding_window" else None}


SLIDING_WINDOW = Conversion(_read_window, _write_window)  # Mistral's sliding_window: every layer, null for none

MISTRAL = Family(
    model_type="mistral",
    architecture="MistralForCausalLM",
    fields=LLAMA_FIELDS,
    assembly=LLAMA_ASSEMBLY,
    requires=(SILU,),
    weights=LLAMA_WEIGHTS,
    conversions=(SLIDING_WINDOW, ROPE_SCALING),
)

QWEN2 = Family(
    model_type="qwen2",
    architecture="Qwen2ForCausalLM",
    fields=tuple(
        f for f in LLAMA_FIELDS if f.hf != "head_dim"
    ),  # Qwen2's heads are hidden_size / num_attention_heads wide
    assembly=LLAMA_ASSEMBLY | {"qkv_bias": True},  # biases on q, k and v; none on o_proj
    requires=(
        SILU,
        Require("use_sliding_window", (False,), False, "gptzoo's sliding-window attention is not available yet"),
    ),
    weights=LLAMA_WEIGHTS,
    conversions=(ROPE_SCALING,),
)

QWEN3 = Family(
    model_type="qwen3",
    architecture="Qwen3ForCausalLM",
    fields=tuple(f for f in LLAMA_FIELDS if f.hf not in ("head_dim", "rms_norm_eps"))
    + (
        Field("head_dim", ("head_dim",), 128),  # Qwen3's default, not hidden_size / heads
        Field("rms_norm_eps", ("norm.eps", "attention.qk_norm_eps"), 1e-6),
        Field("attention_bias", ("qkv_bias", "attn_out_bias"), False),
    ),
    # RMSNorm over each head's queries and keys before rotary, one weight shared by the heads
    assembly={k: v for k, v in LLAMA_ASSEMBLY.items() if k not in ("qkv_bias", "attn_out_bias")}
    | {"attention": {"name": "sdpa", "qk_norm": "per_head"}},
    requires=(
        SILU,
        Require("use_sliding_window", (False,), False, "Qwen3's windowed layers (max_window_layers) are not read yet"),
    ),
    conversions=(ROPE_SCALING,),
    weights=LLAMA_WEIGHTS
    + (
        Weight("blocks.{i}.attention.qk_norm.q_norm", ("model.layers.{i}.self_attn.q_norm.weight",)),
        Weight("blocks.{i}.attention.qk_norm.k_norm", ("model.layers.{i}.self_attn.k_norm.weight",)),
    ),
)

OLMO2 = Family(
    model_type="olmo2",
    architecture="Olmo2ForCausalLM",
    fields=tuple(f for f in LLAMA_FIELDS if f.hf not in ("head_dim", "rms_norm_eps"))
    + (
        Field("rms_norm_eps", ("norm.eps", "attention.qk_norm_eps"), 1e-5),
        Field("attention_bias", ("qkv_bias", "attn_out_bias"), False),
    ),
    # The norms act on each sublayer's output; QK-norm over all heads' features together.
    assembly={k: v for k, v in LLAMA_ASSEMBLY.items() if k not in ("qkv_bias", "attn_out_bias")}
    | {"block": {"name": "sublayer_output_norm"}, "attention": {"name": "sdpa", "qk_norm": "across_heads"}},
    requires=(SILU,),
    conversions=(ROPE_SCALING,),
    weights=tuple(w for w in LLAMA_WEIGHTS if not w.ours.startswith(("blocks.{i}.attn_norm", "blocks.{i}.ffn_norm")))
    + (
        Weight("blocks.{i}.attn_norm.weight", ("model.layers.{i}.post_attention_layernorm.weight",)),
        Weight("blocks.{i}.ffn_norm.weight", ("model.layers.{i}.post_feedforward_layernorm.weight",)),
        Weight("blocks.{i}.attention.qk_norm.q_norm", ("model.layers.{i}.self_attn.q_norm.weight",)),
        Weight("blocks.{i}.attention.qk_norm.k_norm", ("model.layers.{i}.self_attn.k_norm.weight",)),
    ),
)

PHI3 = Family(
    model_type="phi3",
    architecture="Phi3ForCausalLM",
    fields=tuple(f for f in LLAMA_FIELDS if f.hf not in ("head_dim", "rms_norm_eps"))
    + (
        Field("rms_norm_eps", ("norm.eps",), 1e-5),
        Field(
            "rope_parameters.partial_rotary_factor", ("positional.fraction",), 1.0
        ),  # the first dimensions of each head rotate (Phi-4-mini: 0.75)
    ),
    assembly=LLAMA_ASSEMBLY,
    requires=(SILU,),
    conversions=(SLIDING_WINDOW, ROPE_SCALING),  # Phi-3-mini-4k: a window of 2047 keys on every layer
    # Phi-3 keeps q, k and v in one projection, in gptzoo's order, and the gate and up projections in another.
    weights=tuple(
        w
        for w in LLAMA_WEIGHTS
        if not w.ours.startswith(
            ("blocks.{i}.attention.", "blocks.{i}.feed_forward.gate_proj", "blocks.{i}.feed_forward.up_proj")
        )
    )
    + (
        Weight("blocks.{i}.attention.qkv.weight", ("model.layers.{i}.self_attn.qkv_proj.weight",)),
        Weight("blocks.{i}.attention.out_proj.weight", ("model.layers.{i}.self_attn.o_proj.weight",)),
        Weight(
            "blocks.{i}.feed_forward.gate_proj.weight",
            ("model.layers.{i}.mlp.gate_up_proj.weight",),
            "chunk",
            chunk=(0, 2),
        ),
        Weight(
            "blocks.{i}.feed_forward.up_proj.weight",
            ("model.layers.{i}.mlp.gate_up_proj.weight",),
            "chunk",
            chunk=(1, 2),
        ),
    ),
)

# ---- Gemma 2 and Gemma 3: sandwich blocks, local and global layers ------------------------------

LAYER_KINDS = {"sliding_attention": "local", "full_attention": "global"}  # Hugging Face's layer_types -> gptzoo's kinds


def _gemma_attention(hf: dict) -> dict[str, Any]:
    """Attention options every Gemma layer shares: scores scaled by query_pre_attn_scalar^-1/2
    (None where that is the head size, gptzoo's default), soft-capped by attn_logit_softcapping."""
    scalar = hf.get("query_pre_attn_scalar", 256)
    attention = {
        "name": "sdpa",
        "scale": None if scalar == hf["head_dim"] else scalar**-0.5,
        "softcap": hf.get("attn_logit_softcapping"),
    }
    if hf["model_type"] == "gemma3_text":  # RMSNorm of each head's queries and keys, Gemma's (1 + weight) scale
        attention |= {"qk_norm": "per_head", "qk_norm_unit_offset": True, "qk_norm_eps": hf.get("rms_norm_eps", 1e-6)}
    return attention


def _period(types: list[str]) -> list[str]:
    """The shortest prefix that, repeated, gives ``types`` (gptzoo's layer_pattern)."""
    return next(types[:p] for p in range(1, len(types) + 1) if all(t == types[i % p] for i, t in enumerate(types)))


def _read_gemma_layers(hf: dict) -> dict[str, Any]:
    n = hf["num_hidden_layers"]
    every = (
        2 if hf["model_type"] == "gemma2" else hf.get("sliding_window_pattern", 6)
    )  # transformers' default schedules
    types = hf.get("layer_types") or ["sliding_attention" if (i + 1) % every else "full_attention" for i in range(n)]
    unknown = sorted(set(types) - set(LAYER_KINDS))
    if unknown or len(types) != n:
        raise ValueError(
            f"layer_types = {json.dumps(types)} is not supported: gptzoo reads {n} entries of {' or '.join(LAYER_KINDS)}"
        )
    attention = _gemma_attention(hf)
    window = hf.get("sliding_window")
    table: dict[str, Any] = {
        "attention": attention,
        "head.softcap": hf.get("final_logit_softcapping", 30.0 if hf["model_type"] == "gemma2" else None),
    }
    if window is not None and "sliding_attention" in types:
        table |= {
            "layer_pattern": [LAYER_KINDS[t] for t in _period(types)],
            "layer_kinds": {
                "local": {"attention": attention | {"name": "sliding_window", "window": window}},
                "global": {},
            },
        }
    if hf["model_type"] == "gemma3_text":  # rotary bases per kind of layer
        rope = hf["rope_parameters"]
        full, sliding = (
            {
                "name": "rope",
                "base": rope[t].get("rope_theta", base),
                "scaling": read_rope_scaling(rope[t], hf, f"rope_parameters.{t}"),
            }
            for t, base in (("full_attention", 1e6), ("sliding_attention", 1e4))
        )
        table["positional"] = full
        if "layer_kinds" in table:
            table["layer_kinds"]["local"]["positional"] = sliding
    return table


def _kind(model: dict, i: int) -> dict:
    pattern = model.get("layer_pattern") or []
    return (model.get("layer_kinds") or {}).get(pattern[i % len(pattern)], {}) if pattern else {}


def _write_gemma_layers(model: dict) -> dict[str, Any]:
    attention = model["attention"]
    kinds = [_kind(model, i).get("attention") or attention for i in range(model["n_layers"])]
    window = next((a["window"] for a in kinds if a["name"] == "sliding_window"), None)
    scale = attention.get("scale")
    scalar = model["head_dim"] if scale is None else scale**-2
    hf = {
        "layer_types": ["sliding_attention" if a["name"] == "sliding_window" else "full_attention" for a in kinds],
        "sliding_window": window,
        "query_pre_attn_scalar": round(scalar) if abs(scalar - round(scalar)) < 1e-6 else scalar,
        "attn_logit_softcapping": attention.get("softcap"),
        "final_logit_softcapping": model["head"].get("softcap"),
    }
    rotary = [(_kind(model, i).get("positional") or model["positional"]) for i in range(model["n_layers"])]
    local = next((r for r, a in zip(rotary, kinds) if a["name"] == "sliding_window"), model["positional"])
    hf["rope_parameters"] = {  # a positional without a base (not rope) keeps Gemma's; the mismatch names it
        t: {"rope_theta": r.get("base", base)} | write_rope_scaling(r.get("scaling"))
        for t, r, base in (("full_attention", model["positional"], 1e6), ("sliding_attention", local, 1e4))
    }
    return hf


def _write_gemma2_layers(model: dict) -> dict[str, Any]:
    return _write_gemma_layers(model) | {
        "rope_parameters": {"rope_theta": model["positional"].get("base", 1e4)}
    }  # one rotary for all layers; ROPE_SCALING adds its scaling


def _gemma3_legacy(hf: dict) -> dict:
    """Older Gemma 3 configs: rope_theta and rope_scaling for the global layers, rope_local_base_freq for the local ones."""
    if isinstance(hf.get("rope_parameters"), dict) and "full_attention" in hf["rope_parameters"]:
        return hf
    full = dict(hf.get("rope_scaling") or {})
    if "type" in full:
        full.setdefault("rope_type", full.pop("type"))
    full.setdefault("rope_type", "default")
    full["rope_theta"] = hf.get("rope_theta") or 1e6
    return hf | {
        "rope_parameters": {
            "full_attention": full,
            "sliding_attention": {"rope_type": "default", "rope_theta": hf.get("rope_local_base_freq") or 1e4},
        }
    }


GEMMA_FIELDS = tuple(
    f
    for f in LLAMA_FIELDS
    if f.hf not in ("num_key_value_heads", "head_dim", "tie_word_embeddings", "rope_parameters.rope_theta")
) + (
    Field("num_key_value_heads", ("n_kv_heads",)),
    Field("tie_word_embeddings", ("tied_head",), True),
    Field("attention_bias", ("qkv_bias", "attn_out_bias"), False),
)
GEMMA_ASSEMBLY = {
    "positional": {"name": "rope"},
    "feed_forward": {"name": "geglu", "bias": False},
    "norm": {"name": "rmsnorm", "unit_offset": True},  # (1 + weight), in float32
    "block": {"name": "sandwich"},  # a norm before and after each sublayer
    "head": {"name": "lm"},
    "embedding_scale": "sqrt_d_model",
}
GELU_TANH = Require(
    "hidden_activation", ("gelu_pytorch_tanh",), "gelu_pytorch_tanh", "the GeGLU feed-forward gates with the tanh GELU"
)
GEMMA_WEIGHTS = tuple(w for w in LLAMA_WEIGHTS if "norm" not in w.ours or w.ours == "final_norm.weight") + (
    Weight("blocks.{i}.attn_norm.weight", ("model.layers.{i}.input_layernorm.weight",)),
    Weight("blocks.{i}.attn_out_norm.weight", ("model.layers.{i}.post_attention_layernorm.weight",)),
    Weight("blocks.{i}.ffn_norm.weight", ("model.layers.{i}.pre_feedforward_layernorm.weight",)),
    Weight("blocks.{i}.ffn_out_norm.weight", ("model.layers.{i}.post_feedforward_layernorm.weight",)),
)

GEMMA2 = Family(
    model_type="gemma2",
    architecture="Gemma2ForCausalLM",
    fields=GEMMA_FIELDS
    + (Field("head_dim", ("head_dim",)), Field("rope_parameters.rope_theta", ("positional.base",), 10000.0)),
    assembly=GEMMA_ASSEMBLY,
    requires=(GELU_TANH, Require("use_bidirectional_attention", (None, False), None, "gptzoo's attention is causal")),
    weights=GEMMA_WEIGHTS,
    conversions=(Conversion(_read_gemma_layers, _write_gemma2_layers), ROPE_SCALING),
)

GEMMA3_TEXT = Family(
    model_type="gemma3_text",
    architecture="Gemma3ForCausalLM",
    fields=GEMMA_FIELDS + (Field("head_dim", ("head_dim",)),),
    assembly=GEMMA_ASSEMBLY,
    requires=(GELU_TANH, Require("use_bidirectional_attention", (False, None), False, "gptzoo's attention is causal")),
    weights=GEMMA_WEIGHTS
    + (
        Weight("blocks.{i}.attention.qk_norm.q_norm", ("model.layers.{i}.self_attn.q_norm.weight",)),
        Weight("blocks.{i}.attention.qk_norm.k_norm", ("model.layers.{i}.self_attn.k_norm.weight",)),
    ),
    conversions=(Conversion(_read_gemma_layers, _write_gemma_layers),),
    legacy=_gemma3_legacy,
)

# ---- GPT-NeoX (Pythia) --------------------------------------------------------------------------


def _neox_legacy(hf: dict) -> dict:
    """Older GPT-NeoX configs name the rotary base rotary_emb_base and its fraction rotary_pct."""
    renamed = {"rotary_emb_base": "rope_theta", "rotary_pct": "partial_rotary_factor"}
    return hf | {new: hf[old] for old, new in renamed.items() if hf.get(old) is not None and new not in hf}


GELU_APPROXIMATION = {
    "gelu": "none",
    "gelu_pytorch_tanh": "tanh",
    "gelu_new": "tanh",
}  # hidden_act -> the gelu plugin's approximate


def _read_neox(hf: dict) -> dict[str, Any]:
    act = hf.get("hidden_act", "gelu")
    if act not in GELU_APPROXIMATION:
        raise ValueError(
            f"hidden_act = {json.dumps(act)} is not supported for gpt_neox (gptzoo reads {' or '.join(GELU_APPROXIMATION)})"
        )
    # use_parallel_residual: attention and the MLP read the same input, each through its own norm
    return {
        "feed_forward.approximate": GELU_APPROXIMATION[act],
        "block": {"name": "parallel"} if hf.get("use_parallel_residual", True) else {"name": "pre_norm"},
    }


def _write_neox(model: dict) -> dict[str, Any]:
    return {
        "hidden_act": "gelu" if model["feed_forward"].get("approximate") == "none" else "gelu_pytorch_tanh",
        "use_parallel_residual": model["block"]["name"] != "pre_norm",
    }


GPT_NEOX = Family(
    model_type="gpt_neox",
    architecture="GPTNeoXForCausalLM",
    fields=(
        Field("vocab_size", ("vocab_size",)),
        Field("hidden_size", ("d_model",)),
        Field("num_hidden_layers", ("n_layers",)),
        Field("num_attention_heads", ("n_heads",)),
        Field("max_position_embeddings", ("context_length",)),
        Field("intermediate_size", ("feed_forward.hidden",)),
        Field("layer_norm_eps", ("norm.eps",), 1e-5),
        Field("rope_parameters.rope_theta", ("positional.base",), 10000.0),
        Field("rope_parameters.partial_rotary_factor", ("positional.fraction",), 0.25),
        Field("tie_word_embeddings", ("tied_head",), False),
        Field("attention_bias", ("qkv_bias", "attn_out_bias"), True),
    ),
    assembly={
        "positional": {"name": "rope"},  # the halves layout, the first rotary_pct of each head
        "feed_forward": {"name": "gelu", "bias": True},
        "norm": {"name": "layernorm", "bias": True},
        "head": {"name": "lm"},
    },
    requires=(),
    weights=(
        Weight("token_embedding.weight", ("gpt_neox.embed_in.weight",)),
        Weight("blocks.{i}.attn_norm.weight", ("gpt_neox.layers.{i}.input_layernorm.weight",)),
        Weight("blocks.{i}.attn_norm.bias", ("gpt_neox.layers.{i}.input_layernorm.bias",)),
        Weight("blocks.{i}.ffn_norm.weight", ("gpt_neox.layers.{i}.post_attention_layernorm.weight",)),
        Weight("blocks.{i}.ffn_norm.bias", ("gpt_neox.layers.{i}.post_attention_layernorm.bias",)),
        Weight(
            "blocks.{i}.attention.qkv.weight", ("gpt_neox.layers.{i}.attention.query_key_value.weight",), "per_head"
        ),
        Weight("blocks.{i}.attention.qkv.bias", ("gpt_neox.layers.{i}.attention.query_key_value.bias",), "per_head"),
        Weight("blocks.{i}.attention.out_proj.weight", ("gpt_neox.layers.{i}.attention.dense.weight",)),
        Weight("blocks.{i}.attention.out_proj.bias", ("gpt_neox.layers.{i}.attention.dense.bias",)),
        Weight("blocks.{i}.feed_forward.in_proj.weight", ("gpt_neox.layers.{i}.mlp.dense_h_to_4h.weight",)),
        Weight("blocks.{i}.feed_forward.in_proj.bias", ("gpt_neox.layers.{i}.mlp.dense_h_to_4h.bias",)),
        Weight("blocks.{i}.feed_forward.out_proj.weight", ("gpt_neox.layers.{i}.mlp.dense_4h_to_h.weight",)),
        Weight("blocks.{i}.feed_forward.out_proj.bias", ("gpt_neox.layers.{i}.mlp.dense_4h_to_h.bias",)),
        Weight("final_norm.weight", ("gpt_neox.final_layer_norm.weight",)),
        Weight("final_norm.bias", ("gpt_neox.final_layer_norm.bias",)),
        Weight("head.weight", ("embed_out.weight",)),  # transformers 5 calls it lm_head in memory, embed_out on disk
    ),
    conversions=(Conversion(_read_neox, _write_neox), ROPE_SCALING),
    prefix="gpt_neox.",
    legacy=_neox_legacy,
    ignored=r"(gpt_neox\.)?layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)",  # buffers of older checkpoints
)

# ---- GPT-2 --------------------------------------------------------------------------------------

GPT2 = Family(
    model_type="gpt2",
    architecture="GPT2LMHeadModel",
    fields=(
        Field("vocab_size", ("vocab_size",)),
        Field("n_embd", ("d_model",)),
        Field("n_layer", ("n_layers",)),
        Field("n_head", ("n_heads",)),
        Field("n_positions", ("context_length",)),
        Field("n_inner", ("feed_forward.hidden",), None),
        Field("layer_norm_epsilon", ("norm.eps",), 1e-5),
    ),
    assembly={
        "positional": {"name": "learned"},
        "feed_forward": {"name": "gelu", "bias": True},
        "norm": {"name": "layernorm", "bias": True},
        "block": {"name": "pre_norm"},
        "head": {"name": "lm"},
        "qkv_bias": True,
        "attn_out_bias": True,
        "tied_head": True,
    },
    requires=(
        Require("activation_function", ("gelu_new", "gelu_pytorch_tanh"), "gelu_new", "GPT-2's MLP uses the tanh-GELU"),
        Require("scale_attn_weights", (True,), True, "attention scores are scaled by 1/sqrt(head size)"),
        Require("scale_attn_by_inverse_layer_idx", (False,), False, "no per-layer score scaling"),
        Require("reorder_and_upcast_attn", (False,), False, "no reordered upcast attention"),
        Require("tie_word_embeddings", (True,), True, "GPT-2 ties its LM head to the token embedding"),
        Require("add_cross_attention", (False,), False, "GPT-2 is decoder-only"),
    ),
    weights=(
        Weight("token_embedding.weight", ("transformer.wte.weight",)),
        Weight("positional.table.weight", ("transformer.wpe.weight",)),
        Weight("blocks.{i}.attn_norm.weight", ("transformer.h.{i}.ln_1.weight",)),
        Weight("blocks.{i}.attn_norm.bias", ("transformer.h.{i}.ln_1.bias",)),
        Weight("blocks.{i}.attention.qkv.weight", ("transformer.h.{i}.attn.c_attn.weight",), "transposed"),
        Weight("blocks.{i}.attention.qkv.bias", ("transformer.h.{i}.attn.c_attn.bias",)),
        Weight("blocks.{i}.attention.out_proj.weight", ("transformer.h.{i}.attn.c_proj.weight",), "transposed"),
        Weight("blocks.{i}.attention.out_proj.bias", ("transformer.h.{i}.attn.c_proj.bias",)),
        Weight("blocks.{i}.ffn_norm.weight", ("transformer.h.{i}.ln_2.weight",)),
        Weight("blocks.{i}.ffn_norm.bias", ("transformer.h.{i}.ln_2.bias",)),
        Weight("blocks.{i}.feed_forward.in_proj.weight", ("transformer.h.{i}.mlp.c_fc.weight",), "transposed"),
        Weight("blocks.{i}.feed_forward.in_proj.bias", ("transformer.h.{i}.mlp.c_fc.bias",)),
        Weight("blocks.{i}.feed_forward.out_proj.weight", ("transformer.h.{i}.mlp.c_proj.weight",), "transposed"),
        Weight("blocks.{i}.feed_forward.out_proj.bias", ("transformer.h.{i}.mlp.c_proj.bias",)),
        Weight("final_norm.weight", ("transformer.ln_f.weight",)),
        Weight("final_norm.bias", ("transformer.ln_f.bias",)),
        Weight("head.weight", ("lm_head.weight",)),
    ),
    prefix="transformer.",
    ignored=r"(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)",  # causal-mask buffers of older checkpoints
)

# ---- mixtures of experts ------------------------------------------------------------------------


def _expert_weights(prefix: str, gate: str, up: str, out: str) -> tuple[Weight, ...]:
    """The router and the experts of a layer, ``prefix`` the layer's mixture (``model.layers.{i}.mlp``)."""
    return (
        Weight("blocks.{i}.feed_forward.router.weight", (f"{prefix}.gate.weight",)),
        Weight("blocks.{i}.feed_forward.expert_gate", (f"{prefix}.experts.{{e}}.{gate}.weight",), "experts"),
        Weight("blocks.{i}.feed_forward.expert_up", (f"{prefix}.experts.{{e}}.{up}.weight",), "experts"),
        Weight("blocks.{i}.feed_forward.expert_out", (f"{prefix}.experts.{{e}}.{out}.weight",), "experts"),
    )


def _dense_layers(dense: Callable[[dict], list[int]], write: Callable[[list[int], int], dict[str, Any]]) -> Conversion:
    """Some layers keep a dense SwiGLU (``intermediate_size`` wide) where the rest have experts:
    in gptzoo a ``dense`` layer kind and a ``layer_pattern`` of n_layers entries; none: no kinds.
    ``dense(config.json)`` lists those layers; ``write(layers, n_layers)`` gives the config.json keys."""

    def read(hf: dict) -> dict[str, Any]:
        layers = dense(hf)
        if not layers:
            return {}
        if hf.get("intermediate_size") is None:
            raise ValueError("intermediate_size missing; the dense layers need it")
        return {
            "layer_kinds.dense.feed_forward": {"name": "swiglu", "hidden": hf["intermediate_size"], "bias": False},
            "layer_kinds.moe": {},
            "layer_pattern": ["dense" if i in layers else "moe" for i in range(hf["num_hidden_layers"])],
        }

    def write_(model: dict) -> dict[str, Any]:
        pattern, n = model.get("layer_pattern") or [], model["n_layers"]
        layers = [i for i in range(n) if pattern and pattern[i % len(pattern)] == "dense"]
        dense_ffn = (model.get("layer_kinds") or {}).get("dense", {}).get("feed_forward") or {}
        return write(layers, n) | ({"intermediate_size": dense_ffn["hidden"]} if "hidden" in dense_ffn else {})

    return Conversion(read, write_)


MIXTRAL = Family(
    model_type="mixtral",
    architecture="MixtralForCausalLM",
    fields=tuple(f for f in LLAMA_FIELDS if f.hf != "intermediate_size")
    + (
        Field("intermediate_size", ("feed_forward.hidden",)),
        Field("num_local_experts", ("feed_forward.n_experts",)),
        Field("num_experts_per_tok", ("feed_forward.top_k",)),
        Field("router_aux_loss_coef", ("feed_forward.balance_loss_weight",), 0.001),
    ),
    # softmax over the experts, the top k renormalised (Mixtral's softmax over the top-k logits)
    assembly=LLAMA_ASSEMBLY | {"feed_forward": {"name": "moe", "scoring": "softmax", "normalize_top_k": True}},
    requires=(SILU, DEFAULT_ROPE),
    weights=tuple(w for w in LLAMA_WEIGHTS if ".feed_forward." not in w.ours)
    + _expert_weights("model.layers.{i}.block_sparse_moe", "w1", "w3", "w2"),
    conversions=(SLIDING_WINDOW,),
)


def _qwen3_moe_dense(hf: dict) -> list[int]:
    """Qwen3-MoE's MLP-only layers: those in mlp_only_layers and, with decoder_sparse_step s, those i with (i + 1) % s != 0."""
    step, only = hf.get("decoder_sparse_step") or 1, hf.get("mlp_only_layers") or []
    return [i for i in range(hf["num_hidden_layers"]) if i in only or (i + 1) % step]


QWEN3_MOE = Family(
    model_type="qwen3_moe",
    architecture="Qwen3MoeForCausalLM",
    fields=tuple(f for f in LLAMA_FIELDS if f.hf not in ("rms_norm_eps", "intermediate_size"))
    + (
        Field("rms_norm_eps", ("norm.eps", "attention.qk_norm_eps"), 1e-6),
        Field("attention_bias", ("qkv_bias", "attn_out_bias"), False),
        Field("moe_intermediate_size", ("feed_forward.hidden",)),
        Field(
            "num_experts", ("feed_forward.n_experts",), lambda hf: hf.get("num_local_experts", MISSING)
        ),  # transformers 5 writes num_local_experts
        Field("num_experts_per_tok", ("feed_forward.top_k",)),
        Field("norm_topk_prob", ("feed_forward.normalize_top_k",), False),
        Field("router_aux_loss_coef", ("feed_forward.balance_loss_weight",), 0.001),
    ),
    assembly={k: v for k, v in LLAMA_ASSEMBLY.items() if k not in ("qkv_bias", "attn_out_bias")}
    | {"attention": {"name": "sdpa", "qk_norm": "per_head"}, "feed_forward": {"name": "moe", "scoring": "softmax"}},
    requires=(
        SILU,
        DEFAULT_ROPE,
        Require("use_sliding_window", (False,), False, "Qwen3's windowed layers (max_window_layers) are not read yet"),
    ),
    weights=LLAMA_WEIGHTS
    + _expert_weights("model.layers.{i}.mlp", "gate_proj", "up_proj", "down_proj")
    + (
        Weight("blocks.{i}.attention.qk_norm.q_norm", ("model.layers.{i}.self_attn.q_norm.weight",)),
        Weight("blocks.{i}.attention.qk_norm.k_norm", ("model.layers.{i}.self_attn.k_norm.weight",)),
    ),
    conversions=(
        _dense_layers(_qwen3_moe_dense, lambda layers, n: {"decoder_sparse_step": 1, "mlp_only_layers": layers}),
    ),
)


def _deepseek_dense(hf: dict) -> list[int]:
    return list(range(min(hf.get("first_k_dense_replace") or 0, hf["num_hidden_layers"])))


def _deepseek_write_dense(layers: list[int], n: int) -> dict[str, Any]:
    if layers != list(range(len(layers))):
        raise ValueError(
            f"deepseek_v3 keeps dense feed-forwards in its first layers only (first_k_dense_replace); these are {layers}"
        )
    return {"first_k_dense_replace": len(layers)}


def _yarn_mscale(factor: float, mscale: float) -> float:
    return 0.1 * mscale * math.log(factor) + 1.0


def _read_deepseek_rope(hf: dict) -> dict[str, Any]:
    """Interleaved rotary pairs (``rope_interleave``), and DeepSeek's YaRN: the frequencies as
    YaRN's, cos and sin unscaled (``mscale`` = ``mscale_all_dim``: their ratio is 1), and the
    scores multiplied by mscale(factor, mscale_all_dim)² through the latent attention's scale."""
    found: dict[str, Any] = {"positional.layout": "interleaved" if hf.get("rope_interleave", True) else "halves"}
    rope = hf["rope_parameters"]
    if rope.get("rope_type") != "yarn":
        return found
    factor, mscale, all_dim = rope["factor"], rope.get("mscale") or 0, rope.get("mscale_all_dim") or 0
    if mscale != all_dim or rope.get("attention_factor") is not None:
        raise ValueError(
            f"rope_parameters: mscale = {mscale} with mscale_all_dim = {all_dim} is not supported for deepseek_v3 (gptzoo reads equal ones, DeepSeek-V3's 1.0 and 1.0, and no attention_factor)"
        )
    qk_head_dim = hf.get("qk_nope_head_dim", 128) + hf.get("qk_rope_head_dim", 64)
    return found | {
        "positional.scaling": {
            "type": "yarn",
            "factor": factor,
            "original_context_length": rope["original_max_position_embeddings"],
            "beta_fast": rope.get("beta_fast") or 32.0,
            "beta_slow": rope.get("beta_slow") or 1.0,
            "attention_factor": 1.0,
            "truncate": rope.get("truncate", True),
        },
        "attention.scale": qk_head_dim**-0.5 * _yarn_mscale(factor, all_dim) ** 2,
    }


def _write_deepseek_rope(model: dict) -> dict[str, Any]:
    positional, attention = model["positional"], model["attention"]
    written: dict[str, Any] = {"rope_interleave": positional.get("layout", "halves") == "interleaved"}
    scaling = positional.get("scaling")
    if (
        not scaling
        or scaling.get("type") != "yarn"
        or scaling.get("attention_factor") != 1.0
        or attention.get("scale") is None
    ):
        return written
    qk_head_dim = (attention.get("qk_nope_head_dim") or 2 * model["head_dim"]) + model["head_dim"]
    mscale = round((math.sqrt(attention["scale"] * qk_head_dim**0.5) - 1) / (0.1 * math.log(scaling["factor"])), 12)
    return written | {
        "rope_parameters": {
            "rope_type": "yarn",
            "rope_theta": positional["base"],
            "factor": scaling["factor"],
            "original_max_position_embeddings": scaling["original_context_length"],
            "beta_fast": scaling["beta_fast"],
            "beta_slow": scaling["beta_slow"],
            "mscale": mscale,
            "mscale_all_dim": mscale,
            "truncate": scaling["truncate"],
        }
    }


DEEPSEEK_V3 = Family(
    model_type="deepseek_v3",
    architecture="DeepseekV3ForCausalLM",
    fields=tuple(f for f in LLAMA_FIELDS if f.hf not in ("head_dim", "intermediate_size", "rms_norm_eps"))
    + (
        Field("qk_rope_head_dim", ("head_dim",), 64),  # the rotary part's width, which gptzoo's rope is built for
        Field("rms_norm_eps", ("norm.eps",), 1e-6),
        Field("q_lora_rank", ("attention.q_lora_rank",), None),
        Field("kv_lora_rank", ("attention.kv_lora_rank",), 512),
        Field("qk_nope_head_dim", ("attention.qk_nope_head_dim",), 128),
        Field("v_head_dim", ("attention.v_head_dim",), 128),
        Field("moe_intermediate_size", ("feed_forward.hidden",)),
        Field("n_routed_experts", ("feed_forward.n_experts",)),
        Field("num_experts_per_tok", ("feed_forward.top_k",)),
        Field("n_shared_experts", ("feed_forward.n_shared_experts",), 1),
        Field("routed_scaling_factor", ("feed_forward.routed_scale",), 2.5),
        Field("n_group", ("feed_forward.n_groups",), 8),
        Field("topk_group", ("feed_forward.top_groups",), 4),
        Field("norm_topk_prob", ("feed_forward.normalize_top_k",), True),
    ),
    # sigmoid scores with the bias for choosing only (DeepSeek-V3's noaux_tc); no z-loss or balance loss in its config
    assembly=LLAMA_ASSEMBLY
    | {"attention": {"name": "latent"}, "feed_forward": {"name": "moe", "scoring": "sigmoid", "expert_bias": True}},
    requires=(
        SILU,
        Require(
            "rope_parameters.rope_type",
            ("default", "yarn"),
            "default",
            "gptzoo's rope reads no other frequency scaling for DeepSeek-V3 yet",
        ),
        Require(
            "attention_bias", (False,), False, "gptzoo's latent attention puts q_proj's bias where DeepSeek has none"
        ),
        Require("scoring_func", ("sigmoid",), "sigmoid", "DeepSeek-V3 scores experts with sigmoids"),
        Require(
            "topk_method", ("noaux_tc",), "noaux_tc", "DeepSeek-V3 chooses experts with the bias and groups (noaux_tc)"
        ),
        Require("moe_layer_freq", (1,), 1, "every layer after the first dense ones has experts"),
        Require(
            "quantization_config",
            (None,),
            None,
            "the weights must be floating point; dequantize the FP8 checkpoint to bf16 first",
        ),
    ),
    weights=tuple(w for w in LLAMA_WEIGHTS if ".attention." not in w.ours)
    + _expert_weights("model.layers.{i}.mlp", "gate_proj", "up_proj", "down_proj")
    + tuple(
        Weight(
            f"blocks.{{i}}.feed_forward.shared.{ours}.weight",
            (f"model.layers.{{i}}.mlp.shared_experts.{theirs}.weight",),
        )
        for ours, theirs in (("gate_proj", "gate_proj"), ("up_proj", "up_proj"), ("out_proj", "down_proj"))
    )
    + (Weight("blocks.{i}.feed_forward.expert_bias", ("model.layers.{i}.mlp.gate.e_score_correction_bias",)),)
    + tuple(
        Weight(f"blocks.{{i}}.attention.{name}", (f"model.layers.{{i}}.self_attn.{name}",))
        for name in (
            "q_proj.weight",
            "q_a_proj.weight",
            "q_a_layernorm.weight",
            "q_b_proj.weight",
            "kv_a_proj_with_mqa.weight",
            "kv_a_layernorm.weight",
            "kv_b_proj.weight",
        )
    )
    + (Weight("blocks.{i}.attention.out_proj.weight", ("model.layers.{i}.self_attn.o_proj.weight",)),),
    conversions=(
        _dense_layers(_deepseek_dense, _deepseek_write_dense),
        Conversion(_read_deepseek_rope, _write_deepseek_rope),
    ),
    # the multi-token-prediction module of the 61-layer checkpoints, which transformers skips too
    ignored=r"model\.layers\.(\d+\.self_attn\.rotary_emb\.inv_freq|61\..*)",
)

FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        GPT2,
        LLAMA,
        MISTRAL,
        QWEN2,
        QWEN3,
        OLMO2,
        PHI3,
        GEMMA2,
        GEMMA3_TEXT,
        GPT_NEOX,
        MIXTRAL,
        QWEN3_MOE,
        DEEPSEEK_V3,
    )
}
