"""Gemma 2 and Gemma 3: sandwich blocks, local and global layers, on Llama's rows."""

from __future__ import annotations

import json
from typing import Any

from gptzoo.recipes.interop.hf.families.base import (
    Conversion,
    Family,
    Field,
    Require,
    Weight,
    period,
    read_rope_scaling,
    write_rope_scaling,
)
from gptzoo.recipes.interop.hf.families.llama import LLAMA_FIELDS, LLAMA_WEIGHTS, ROPE_SCALING

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
            "layer_pattern": [LAYER_KINDS[t] for t in period(types)],
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
    local = next((r for r, a in zip(rotary, kinds, strict=True) if a["name"] == "sliding_window"), model["positional"])
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
