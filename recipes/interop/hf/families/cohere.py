"""Cohere's Command R7B / Command A (cohere2): one LayerNorm (no bias) feeding attention and a SwiGLU in
parallel, three windowed layers with interleaved rotary to one full layer without positions, and the logits
scaled by ``logit_scale``."""

from __future__ import annotations

import json
from typing import Any

from gptzoo.recipes.interop.hf.families.base import Conversion, Family, Field, period
from gptzoo.recipes.interop.hf.families.llama import LLAMA_FIELDS, LLAMA_WEIGHTS, ROPE_SCALING, SILU
from gptzoo.recipes.interop.hf.families.olmo import OLMO3_KINDS


def _read_cohere2_layers(hf: dict) -> dict[str, Any]:
    n, window = hf["num_hidden_layers"], hf.get("sliding_window", 4096)
    every = hf.get("sliding_window_pattern", 4)
    types = hf.get("layer_types") or ["sliding_attention" if (i + 1) % every else "full_attention" for i in range(n)]
    if len(types) != n or not set(types) <= set(OLMO3_KINDS):
        raise ValueError(
            f"layer_types = {json.dumps(types)} is not supported: gptzoo reads {n} entries of {' or '.join(OLMO3_KINDS)}"
        )
    if window is None and "sliding_attention" in types:
        raise ValueError("sliding_window = null is not supported for cohere2 with sliding_attention layers")
    kinds: dict[str, Any] = {"global": {"positional": {"name": "none"}}}  # transformers rotates the windowed only
    if "sliding_attention" in types:
        kinds["local"] = {"attention": {"name": "sliding_window", "window": window}}
    return {"layer_pattern": [OLMO3_KINDS[t] for t in period(types)], "layer_kinds": kinds}


def _write_cohere2_layers(model: dict) -> dict[str, Any]:
    pattern, kinds = model.get("layer_pattern") or [], model.get("layer_kinds") or {}
    chosen = [kinds[pattern[i % len(pattern)]] if pattern else {} for i in range(model["n_layers"])]
    attention = [c.get("attention") or model["attention"] for c in chosen]
    return {
        "layer_types": ["sliding_attention" if a["name"] == "sliding_window" else "full_attention" for a in attention],
        "sliding_window": next((a["window"] for a in attention if a["name"] == "sliding_window"), None),
    }


COHERE2 = Family(
    model_type="cohere2",
    architecture="Cohere2ForCausalLM",
    fields=tuple(f for f in LLAMA_FIELDS if f.hf not in ("rms_norm_eps", "tie_word_embeddings"))
    + (
        Field("layer_norm_eps", ("norm.eps",), 1e-5),
        Field("tie_word_embeddings", ("tied_head",), True),
        Field("attention_bias", ("qkv_bias", "attn_out_bias"), False),
        Field("logit_scale", ("head.logit_scale",), 0.0625),
    ),
    # rotary on interleaved pairs (transformers' repeat_interleave); LayerNorm with a weight and no bias
    assembly={
        "positional": {"name": "rope", "layout": "interleaved"},
        "feed_forward": {"name": "swiglu", "bias": False},
        "norm": {"name": "layernorm", "bias": False},
        "block": {"name": "parallel", "shared_norm": True},
        "head": {"name": "lm"},
    },
    requires=(SILU,),
    weights=tuple(w for w in LLAMA_WEIGHTS if w.ours not in ("blocks.{i}.ffn_norm.weight",)),
    conversions=(Conversion(_read_cohere2_layers, _write_cohere2_layers), ROPE_SCALING),
)
