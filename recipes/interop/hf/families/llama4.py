"""Llama 4's text model (llama4_text): Llama's layer with chunked attention on its RoPE layers, NoPE
layers with a query temperature, a weightless L2 QK-norm on the RoPE layers, and experts every
``interleave_moe_layer_step``-th layer, routed top-1 by a sigmoid that scales the expert's input, beside
an always-on shared expert.

Each layer is one of four things at most (rotary or not, chunked or not, experts or a dense SwiGLU):
a layer kind is made for each combination the config uses, named by it (``rope_chunked_moe``).
"""

from __future__ import annotations

import json
from typing import Any

from gptzoo.recipes.interop.hf.families.base import Conversion, Family, Field, Weight, period
from gptzoo.recipes.interop.hf.families.llama import LLAMA_WEIGHTS, ROPE_SCALING, SILU


def _layers(hf: dict) -> list[tuple[bool, bool, bool]]:
    """(rotary, chunked, experts) of each layer, as Llama4TextConfig derives them."""
    n = hf["num_hidden_layers"]
    rotary = hf.get("no_rope_layers") or [int((i + 1) % hf.get("no_rope_layer_interval", 4) != 0) for i in range(n)]
    chunk = hf.get("attention_chunk_size", 8192)
    types = hf.get("layer_types") or [
        "chunked_attention" if r and chunk is not None else "full_attention" for r in rotary
    ]
    step = hf.get("interleave_moe_layer_step", 1)
    experts = hf.get("moe_layers")
    experts = set(range(step - 1, n, step) if experts is None else experts)
    if len(rotary) < n or not set(rotary[:n]) <= {0, 1}:
        raise ValueError(f"no_rope_layers = {json.dumps(rotary)} is not supported: gptzoo reads {n} entries of 0 or 1")
    if (
        len(types) != n
        or not set(types) <= {"chunked_attention", "full_attention"}
        or ("chunked_attention" in types and chunk is None)
    ):
        raise ValueError(
            f"layer_types = {json.dumps(types)} is not supported: gptzoo reads {n} entries of chunked_attention "
            "(with attention_chunk_size) or full_attention"
        )
    return [(bool(rotary[i]), types[i] == "chunked_attention", i in experts) for i in range(n)]


def _kind_name(rotary: bool, chunked: bool, experts: bool) -> str:
    return f"{'rope' if rotary else 'nope'}_{'chunked' if chunked else 'full'}_{'moe' if experts else 'dense'}"


def _read_layers(hf: dict) -> dict[str, Any]:
    layers = _layers(hf)
    moe = {
        "name": "moe",
        "n_experts": hf.get("num_local_experts", 16),
        "top_k": hf.get("num_experts_per_tok", 1),
        "hidden": hf.get("intermediate_size", 8192),
        "scoring": "sigmoid",
        "normalize_top_k": False,
        "n_shared_experts": 1,
        "weights_at": "input",
    }
    kinds: dict[str, dict] = {}
    for rotary, chunked, experts in layers:
        attention: dict[str, Any] = {"name": "chunked", "chunk_size": hf["attention_chunk_size"]} if chunked else {}
        attention = attention or {"name": "sdpa"}
        if rotary and hf.get("use_qk_norm", True):
            attention |= {"qk_norm": "per_head", "qk_norm_weight": False, "qk_norm_eps": hf.get("rms_norm_eps", 1e-5)}
        if not rotary and hf.get("attn_temperature_tuning", True):
            attention |= {
                "query_temperature_floor_scale": float(hf.get("floor_scale", 8192)),
                "query_temperature_scale": hf.get("attn_scale", 0.1),
            }
        kind: dict[str, Any] = {"attention": attention}
        if not rotary:
            kind["positional"] = {"name": "none"}
        if experts:
            kind["feed_forward"] = moe
        kinds[_kind_name(rotary, chunked, experts)] = kind
    return {"layer_pattern": period([_kind_name(*layer) for layer in layers]), "layer_kinds": kinds}


def _write_layers(model: dict) -> dict[str, Any]:
    pattern, kinds = model.get("layer_pattern") or [], model.get("layer_kinds") or {}
    chosen = [kinds[pattern[i % len(pattern)]] if pattern else {} for i in range(model["n_layers"])]
    attention = [c.get("attention") or model["attention"] for c in chosen]
    rotary = [(c.get("positional") or model["positional"])["name"] != "none" for c in chosen]
    feed_forward = [c.get("feed_forward") or model["feed_forward"] for c in chosen]
    moe = next((f for f in feed_forward if f["name"] == "moe"), {})
    nope = next((a for a, r in zip(attention, rotary, strict=True) if not r), {})
    hf = {
        "no_rope_layers": [int(r) for r in rotary],
        "layer_types": ["chunked_attention" if a["name"] == "chunked" else "full_attention" for a in attention],
        "attention_chunk_size": next((a["chunk_size"] for a in attention if a["name"] == "chunked"), None),
        "moe_layers": [i for i, f in enumerate(feed_forward) if f["name"] == "moe"],
        "use_qk_norm": any(a.get("qk_norm", "none") != "none" for a, r in zip(attention, rotary, strict=True) if r),
        "attn_temperature_tuning": nope.get("query_temperature_floor_scale") is not None,
    }
    if moe:
        hf |= {
            "num_local_experts": moe["n_experts"],
            "num_experts_per_tok": moe["top_k"],
            "intermediate_size": moe["hidden"],
        }
    if hf["attn_temperature_tuning"]:
        floor = nope["query_temperature_floor_scale"]
        hf |= {
            "floor_scale": int(floor) if floor == int(floor) else floor,
            "attn_scale": nope["query_temperature_scale"],
        }
    return hf


def _feed_forward(name: str) -> tuple[str]:
    return (f"model.layers.{{i}}.feed_forward.{name}",)


LLAMA4_TEXT = Family(
    model_type="llama4_text",
    architecture="Llama4ForCausalLM",
    fields=(
        Field("vocab_size", ("vocab_size",)),
        Field("hidden_size", ("d_model",)),
        Field("num_hidden_layers", ("n_layers",)),
        Field("num_attention_heads", ("n_heads",)),
        Field("num_key_value_heads", ("n_kv_heads",), lambda hf: hf["num_attention_heads"]),
        Field("head_dim", ("head_dim",), lambda hf: hf["hidden_size"] // hf["num_attention_heads"]),
        Field("max_position_embeddings", ("context_length",), 131_072),
        Field("intermediate_size_mlp", ("feed_forward.hidden",), 16384),
        Field("rms_norm_eps", ("norm.eps",), 1e-5),
        Field("rope_parameters.rope_theta", ("positional.base",), 500000.0),
        Field("tie_word_embeddings", ("tied_head",), False),
        Field("attention_bias", ("qkv_bias", "attn_out_bias"), False),
    ),
    assembly={
        "positional": {"name": "rope", "layout": "interleaved"},  # Llama 4 rotates pairs as complex numbers
        "feed_forward": {"name": "swiglu", "bias": False},
        "norm": {"name": "rmsnorm"},
        "block": {"name": "pre_norm"},
        "head": {"name": "lm"},
    },
    requires=(SILU,),
    # Llama's rows for everything but the feed-forward, which is dense or a mixture layer by layer
    weights=tuple(w for w in LLAMA_WEIGHTS if ".feed_forward." not in w.ours)
    + (
        Weight("blocks.{i}.feed_forward.gate_proj.weight", _feed_forward("gate_proj.weight")),
        Weight("blocks.{i}.feed_forward.up_proj.weight", _feed_forward("up_proj.weight")),
        Weight("blocks.{i}.feed_forward.out_proj.weight", _feed_forward("down_proj.weight")),
        Weight("blocks.{i}.feed_forward.router.weight", _feed_forward("router.weight")),
        Weight(
            "blocks.{i}.feed_forward.expert_gate",
            _feed_forward("experts.gate_up_proj"),
            "stack_transposed",
            chunk=(0, 2),
        ),
        Weight(
            "blocks.{i}.feed_forward.expert_up", _feed_forward("experts.gate_up_proj"), "stack_transposed", chunk=(1, 2)
        ),
        Weight("blocks.{i}.feed_forward.expert_out", _feed_forward("experts.down_proj"), "transposed"),
        Weight("blocks.{i}.feed_forward.shared.gate_proj.weight", _feed_forward("shared_expert.gate_proj.weight")),
        Weight("blocks.{i}.feed_forward.shared.up_proj.weight", _feed_forward("shared_expert.up_proj.weight")),
        Weight("blocks.{i}.feed_forward.shared.out_proj.weight", _feed_forward("shared_expert.down_proj.weight")),
    ),
    conversions=(Conversion(_read_layers, _write_layers), ROPE_SCALING),
)
