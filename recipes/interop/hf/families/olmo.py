"""OLMo 2 and 3: Llama's layer with the norms on each sublayer's output and QK-norm across heads."""

from __future__ import annotations

import json
from typing import Any

from gptzoo.recipes.interop.hf.families.base import (
    Conversion,
    Family,
    Field,
    Weight,
    period,
    read_rope_scaling,
    write_rope_scaling,
)
from gptzoo.recipes.interop.hf.families.llama import LLAMA_ASSEMBLY, LLAMA_FIELDS, LLAMA_WEIGHTS, ROPE_SCALING, SILU

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


# ---- OLMo 3: OLMo 2's layer, three windowed layers to one full, a rotary per kind of layer -------

OLMO3_KINDS = {"sliding_attention": "local", "full_attention": "global"}  # layer_types -> gptzoo's kinds


def _read_olmo3_layers(hf: dict) -> dict[str, Any]:
    n = hf["num_hidden_layers"]
    types = hf.get("layer_types") or ["sliding_attention" if (i + 1) % 4 else "full_attention" for i in range(n)]
    if len(types) != n or not set(types) <= set(OLMO3_KINDS):
        raise ValueError(
            f"layer_types = {json.dumps(types)} is not supported: gptzoo reads {n} entries of {' or '.join(OLMO3_KINDS)}"
        )
    rope = {t: hf["rope_parameters"].get(t) or {} for t in OLMO3_KINDS}  # a kind left out: transformers' default
    rotary = {
        t: {
            "name": "rope",
            "base": rope[t].get("rope_theta", 500000.0),
            "scaling": read_rope_scaling(rope[t], hf, f"rope_parameters.{t}"),
        }
        for t in OLMO3_KINDS
    }
    table: dict[str, Any] = {"positional": rotary["full_attention"]}
    if "sliding_attention" in types:
        attention = {"qk_norm": "across_heads", "qk_norm_eps": hf.get("rms_norm_eps", 1e-5)}
        window = {"name": "sliding_window", "window": hf.get("sliding_window", 4096)}
        table |= {
            "layer_pattern": [OLMO3_KINDS[t] for t in period(types)],
            "layer_kinds": {
                "local": {"attention": attention | window, "positional": rotary["sliding_attention"]},
                "global": {},
            },
        }
    return table


def _write_olmo3_layers(model: dict) -> dict[str, Any]:
    pattern, kinds = model.get("layer_pattern") or [], model.get("layer_kinds") or {}
    chosen = [kinds[pattern[i % len(pattern)]] if pattern else {} for i in range(model["n_layers"])]
    attention = [c.get("attention") or model["attention"] for c in chosen]
    rotary = [c.get("positional") or model["positional"] for c in chosen]
    local = next((r for r, a in zip(rotary, attention, strict=True) if a["name"] == "sliding_window"), None)
    return {
        "layer_types": ["sliding_attention" if a["name"] == "sliding_window" else "full_attention" for a in attention],
        "sliding_window": next((a["window"] for a in attention if a["name"] == "sliding_window"), None),
        "rope_parameters": {  # a positional without a base (not rope) writes OLMo 3's; the mismatch names it
            t: {"rope_theta": r.get("base", 500000.0)} | write_rope_scaling(r.get("scaling"))
            for t, r in (("full_attention", model["positional"]), ("sliding_attention", local or model["positional"]))
        },
    }


def _olmo3_legacy(hf: dict) -> dict:
    """Configs with rope_theta and rope_scaling at the top: the scaling is the full layers' (as transformers reads it)."""
    if isinstance(hf.get("rope_parameters"), dict) and "full_attention" in hf["rope_parameters"]:
        return hf
    theta = hf.get("rope_theta") or 500000.0
    full = dict(hf.get("rope_scaling") or {})
    if "type" in full:
        full.setdefault("rope_type", full.pop("type"))
    full.setdefault("rope_type", "default")
    return hf | {
        "rope_parameters": {
            "full_attention": full | {"rope_theta": theta},
            "sliding_attention": {"rope_type": "default", "rope_theta": theta},
        }
    }


OLMO3 = Family(
    model_type="olmo3",
    architecture="Olmo3ForCausalLM",
    fields=tuple(f for f in OLMO2.fields if f.hf != "rope_parameters.rope_theta"),
    assembly=OLMO2.assembly,
    requires=(SILU,),
    conversions=(Conversion(_read_olmo3_layers, _write_olmo3_layers),),
    weights=OLMO2.weights,
    legacy=_olmo3_legacy,
)


# ---- EXAONE 4: OLMo 2's block with QK-norm per head; windowed layers rotate, full ones have none (NoPE) -------


def _read_exaone4_layers(hf: dict) -> dict[str, Any]:
    n, window = hf["num_hidden_layers"], hf.get("sliding_window", 4096)
    if window is None:
        raise ValueError(
            "sliding_window = null is not supported for exaone4 (transformers' Exaone4Config fails on it too)"
        )
    every = hf.get("sliding_window_pattern", 4)
    types = hf.get("layer_types")
    if types is None and not isinstance(every, int):
        raise ValueError(f"sliding_window_pattern = {json.dumps(every)} without layer_types is not supported")
    types = types or ["sliding_attention" if (i + 1) % every else "full_attention" for i in range(n)]
    if len(types) != n or not set(types) <= set(OLMO3_KINDS):
        raise ValueError(
            f"layer_types = {json.dumps(types)} is not supported: gptzoo reads {n} entries of {' or '.join(OLMO3_KINDS)}"
        )
    attention = {"qk_norm": "per_head", "qk_norm_eps": hf.get("rms_norm_eps", 1e-5)}
    return {
        "layer_pattern": [OLMO3_KINDS[t] for t in period(types)],
        "layer_kinds": {
            "local": {"attention": attention | {"name": "sliding_window", "window": window}},
            "global": {"positional": {"name": "none"}},
        },
    }


def _write_exaone4_layers(model: dict) -> dict[str, Any]:
    pattern, kinds = model.get("layer_pattern") or [], model.get("layer_kinds") or {}
    chosen = [kinds[pattern[i % len(pattern)]] if pattern else {} for i in range(model["n_layers"])]
    attention = [c.get("attention") or model["attention"] for c in chosen]
    return {
        "layer_types": ["sliding_attention" if a["name"] == "sliding_window" else "full_attention" for a in attention],
        "sliding_window": next((a["window"] for a in attention if a["name"] == "sliding_window"), None),
    }


EXAONE4 = Family(
    model_type="exaone4",
    architecture="Exaone4ForCausalLM",
    fields=tuple(f for f in LLAMA_FIELDS if f.hf != "rms_norm_eps")
    + (Field("rms_norm_eps", ("norm.eps", "attention.qk_norm_eps"), 1e-5),),
    assembly=OLMO2.assembly
    | {"qkv_bias": False, "attn_out_bias": False, "attention": {"name": "sdpa", "qk_norm": "per_head"}},
    requires=(SILU,),
    conversions=(Conversion(_read_exaone4_layers, _write_exaone4_layers), ROPE_SCALING),
    weights=OLMO2.weights,
)
