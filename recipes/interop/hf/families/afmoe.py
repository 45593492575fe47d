"""AFMoE (Arcee's Trinity): Llama's attention with QK-norm per head and a sigmoid gate per output feature,
windowed layers with rotary and every n-th layer attending to all keys without positions, a norm before and
after each sublayer, a SwiGLU on the first num_dense_layers and sigmoid-scored experts with a choosing bias and
shared experts on the rest."""

from __future__ import annotations

import json
from typing import Any

from gptzoo.recipes.interop.hf.families.base import Conversion, Family, Field, Require, Weight, period
from gptzoo.recipes.interop.hf.families.llama import LLAMA_FIELDS, LLAMA_WEIGHTS, ROPE_SCALING, SILU
from gptzoo.recipes.interop.hf.families.moe import expert_weights

KINDS = {"sliding_attention": "local", "full_attention": "global"}  # layer_types -> gptzoo's kinds
ATTENTION = {"name": "sdpa", "qk_norm": "per_head", "output_gate": "elementwise"}


def _layer_types(hf: dict) -> list[str]:
    n, every = hf["num_hidden_layers"], hf.get("global_attn_every_n_layers", 4)
    types = hf.get("layer_types") or ["sliding_attention" if (i + 1) % every else "full_attention" for i in range(n)]
    if len(types) != n or not set(types) <= set(KINDS):
        raise ValueError(
            f"layer_types = {json.dumps(types)} is not supported for afmoe: gptzoo reads {n} entries of "
            f"{' or '.join(KINDS)}"
        )
    return types


def _read_layers(hf: dict) -> dict[str, Any]:
    """Windowed layers with rotary, global ones without positions (transformers rotates the windowed only); a
    SwiGLU on the first num_dense_layers (``local_dense``, ``global_dense`` where others have experts)."""
    types, n = _layer_types(hf), hf["num_hidden_layers"]
    window, shared = hf.get("sliding_window", 1024), hf.get("num_shared_experts", 2)
    if window is None and "sliding_attention" in types:
        raise ValueError("sliding_window = null is not supported for afmoe with sliding_attention layers")
    if not shared:
        raise ValueError(
            f"num_shared_experts = {json.dumps(shared)} is not supported for afmoe (gptzoo reads 1 or more)"
        )
    dense = min(hf.get("num_dense_layers", 1) or 0, n)
    swiglu = {"name": "swiglu", "hidden": hf.get("intermediate_size", 6144), "bias": False}
    attention = ATTENTION | {"qk_norm_eps": hf.get("rms_norm_eps", 1e-5)}
    local = {"attention": attention | {"name": "sliding_window", "window": window}}
    kinds = {"local": local, "global": {"positional": {"name": "none"}}}
    kinds |= {f"{k}_dense": v | {"feed_forward": swiglu} for k, v in kinds.items()}
    names = [KINDS[t] + ("_dense" if i < dense < n else "") for i, t in enumerate(types)]
    moe = {
        "name": "moe",
        "scoring": "sigmoid",
        "n_experts": hf.get("num_experts", 64),
        "top_k": hf.get("num_experts_per_tok", 6),
        "hidden": hf.get("moe_intermediate_size", 1408),
        "normalize_top_k": True,
        "routed_scale": hf.get("route_scale", 1.0),
        "expert_bias": True,
        "n_shared_experts": shared,
    }
    return {
        "attention": attention,
        "feed_forward": swiglu if dense == n else moe,
        "layer_pattern": period(names),
        "layer_kinds": {k: v for k, v in kinds.items() if k in names},
        "embedding_scale": "sqrt_d_model" if hf.get("mup_enabled") else 1.0,
    }


def _write_layers(model: dict) -> dict[str, Any]:
    pattern, kinds = model.get("layer_pattern") or [], model.get("layer_kinds") or {}
    layers = [kinds.get(pattern[i % len(pattern)], {}) if pattern else {} for i in range(model["n_layers"])]
    attention = [k.get("attention") or model["attention"] for k in layers]
    feed_forwards = [k.get("feed_forward") or model["feed_forward"] for k in layers]
    dense = next((i for i, f in enumerate(feed_forwards) if f["name"] == "moe"), len(feed_forwards))
    if any(f["name"] != "moe" for f in feed_forwards[dense:]):
        raise ValueError("afmoe's SwiGLU layers are the first ones only (num_dense_layers), then experts")
    types = ["sliding_attention" if a["name"] == "sliding_window" else "full_attention" for a in attention]
    hf: dict[str, Any] = {
        "layer_types": types,
        "sliding_window": next((a["window"] for a in attention if a["name"] == "sliding_window"), None),
        "num_dense_layers": dense,
        "intermediate_size": feed_forwards[0].get("hidden"),
        "mup_enabled": model.get("embedding_scale") == "sqrt_d_model",
    }
    if dense == len(feed_forwards):
        return hf
    moe = feed_forwards[dense]
    return hf | {
        "num_experts": moe["n_experts"],
        "num_experts_per_tok": moe["top_k"],
        "moe_intermediate_size": moe["hidden"],
        "route_scale": moe["routed_scale"],
        "num_shared_experts": moe["n_shared_experts"],
    }


def _mlp(name: str) -> str:
    return f"model.layers.{{i}}.mlp.{name}"


AFMOE = Family(
    model_type="afmoe",
    architecture="AfmoeForCausalLM",
    fields=tuple(f for f in LLAMA_FIELDS if f.hf not in ("intermediate_size", "rms_norm_eps"))
    + (Field("rms_norm_eps", ("norm.eps",), 1e-5),),
    # Each sublayer between two RMSNorms (sandwich); attention without biases; the windowed layers' rotary is
    # the model's positional, the global layers take none.
    assembly={
        "positional": {"name": "rope"},
        "norm": {"name": "rmsnorm"},
        "block": {"name": "sandwich"},
        "head": {"name": "lm"},
        "qkv_bias": False,
        "attn_out_bias": False,
    },
    requires=(
        SILU,
        Require("attention_bias", (False,), False, "gptzoo's output gate has a bias wherever queries do"),
        # keys of Arcee's own config.json (its remote code's options): transformers implements these values only
        Require("score_func", ("sigmoid",), "sigmoid", "transformers' AfmoeTokenChoiceRouter scores by sigmoid"),
        Require("route_norm", (True,), True, "transformers' AfmoeTokenChoiceRouter renormalises the top k"),
        Require("n_group", (1, None), 1, "transformers' AfmoeTokenChoiceRouter chooses among all experts"),
    ),
    weights=tuple(w for w in LLAMA_WEIGHTS if "norm" not in w.ours or w.ours == "final_norm.weight")
    + (
        Weight("blocks.{i}.attn_norm.weight", ("model.layers.{i}.input_layernorm.weight",)),
        Weight("blocks.{i}.attn_out_norm.weight", ("model.layers.{i}.post_attention_layernorm.weight",)),
        Weight("blocks.{i}.ffn_norm.weight", ("model.layers.{i}.pre_mlp_layernorm.weight",)),
        Weight("blocks.{i}.ffn_out_norm.weight", ("model.layers.{i}.post_mlp_layernorm.weight",)),
        Weight("blocks.{i}.attention.qk_norm.q_norm", ("model.layers.{i}.self_attn.q_norm.weight",)),
        Weight("blocks.{i}.attention.qk_norm.k_norm", ("model.layers.{i}.self_attn.k_norm.weight",)),
        Weight("blocks.{i}.attention.gate_proj.weight", ("model.layers.{i}.self_attn.gate_proj.weight",)),
        Weight("blocks.{i}.feed_forward.router.weight", (_mlp("router.gate.weight"),)),
        *expert_weights("model.layers.{i}.mlp", "gate_proj", "up_proj", "down_proj")[1:],
        Weight("blocks.{i}.feed_forward.expert_bias", (_mlp("expert_bias"),)),
        *(
            Weight(f"blocks.{{i}}.feed_forward.shared.{ours}.weight", (_mlp(f"shared_experts.{theirs}.weight"),))
            for ours, theirs in (("gate_proj", "gate_proj"), ("up_proj", "up_proj"), ("out_proj", "down_proj"))
        ),
    ),
    conversions=(Conversion(_read_layers, _write_layers), ROPE_SCALING),
)
