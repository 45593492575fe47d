"""LFM2: gated short convolutions and attention layers, each with a SwiGLU; LFM2-MoE: the same layers with
experts after the first few."""

from __future__ import annotations

import json
from typing import Any

from gptzoo.recipes.interop.hf.families.base import Conversion, Family, Field, Require, Weight, period, qkv_rows
from gptzoo.recipes.interop.hf.families.llama import ROPE_SCALING
from gptzoo.recipes.interop.hf.families.moe import expert_weights

# ---- LFM2 ------------------------------------------------------------------------------------------

LFM2_KINDS = {"conv": "conv", "full_attention": "attention"}  # Hugging Face's layer_types -> gptzoo's kinds


def _lfm2_legacy(hf: dict) -> dict:
    """LFM2's first config.json: block_ff_dim, tie_embedding, the attention layers as full_attn_idxs."""
    hf = dict(hf)
    for old, new in (("block_ff_dim", "intermediate_size"), ("tie_embedding", "tie_word_embeddings")):
        if old in hf:
            hf.setdefault(new, hf.pop(old))
    if hf.get("layer_types") is None and "num_hidden_layers" in hf:
        attention = hf.get("full_attn_idxs")
        attention = range(hf["num_hidden_layers"]) if attention is None else attention
        hf["layer_types"] = ["full_attention" if i in attention else "conv" for i in range(hf["num_hidden_layers"])]
    return hf


def _read_lfm2_layers(hf: dict) -> dict[str, Any]:
    types = hf["layer_types"]
    unknown = sorted(set(types) - set(LFM2_KINDS))
    if unknown or len(types) != hf["num_hidden_layers"]:
        raise ValueError(
            f"layer_types = {json.dumps(types)} is not supported: gptzoo reads {hf['num_hidden_layers']} entries of "
            f"{' or '.join(LFM2_KINDS)}"
        )
    if "conv" not in types:
        return {}
    conv = {
        "positional": {"name": "none"},
        "attention": {"name": "short_conv", "kernel_size": hf.get("conv_L_cache", 3)},
    }
    return {
        "layer_pattern": [LFM2_KINDS[t] for t in period(types)],
        "layer_kinds": {"conv": conv} | ({"attention": {}} if "full_attention" in types else {}),
    }


def _write_lfm2_layers(model: dict) -> dict[str, Any]:
    pattern, kinds = model.get("layer_pattern") or [], model.get("layer_kinds") or {}
    mixers = [
        (kinds.get(pattern[i % len(pattern)], {}) if pattern else {}).get("attention") or model["attention"]
        for i in range(model["n_layers"])
    ]
    conv = next((m for m in mixers if m["name"] == "short_conv"), {})
    return {
        "layer_types": ["conv" if m["name"] == "short_conv" else "full_attention" for m in mixers],
        "conv_L_cache": conv.get("kernel_size", 3),
    }


def _read_lfm2_feed_forward(hf: dict) -> dict[str, Any]:
    """The SwiGLU's width: intermediate_size, or with block_auto_adjust_ff_dim (the default) 2/3 of it, times
    block_ffn_dim_multiplier, rounded up to a multiple of block_multiple_of, as transformers sizes it."""
    hidden = hf.get("intermediate_size", 12288)
    if hf.get("block_auto_adjust_ff_dim", True):
        hidden = int(2 * hidden / 3)
        multiplier = hf.get("block_ffn_dim_multiplier", 1.0)
        if multiplier is not None:
            multiple = hf.get("block_multiple_of", 256)
            hidden = multiple * -(-int(multiplier * hidden) // multiple)
    return {"feed_forward.hidden": hidden}


def _write_lfm2_feed_forward(model: dict) -> dict[str, Any]:
    hidden = model["feed_forward"].get("hidden")  # none for a feed-forward without a width: the mismatch names it
    return {} if hidden is None else {"intermediate_size": hidden, "block_auto_adjust_ff_dim": False}


LFM2 = Family(
    model_type="lfm2",
    architecture="Lfm2ForCausalLM",
    fields=(
        Field("vocab_size", ("vocab_size",), 65536),
        Field("hidden_size", ("d_model",), 2560),
        Field("num_hidden_layers", ("n_layers",), 32),
        Field("num_attention_heads", ("n_heads",), 32),
        Field("num_key_value_heads", ("n_kv_heads",), 8),
        Field("max_position_embeddings", ("context_length",), 128_000),
        Field("norm_eps", ("norm.eps", "attention.qk_norm_eps"), 1e-5),
        Field("rope_parameters.rope_theta", ("positional.base",), 1e6),
        Field("tie_word_embeddings", ("tied_head",), True),
    ),
    # Pre-norm blocks; attention with QK-norm per head, no biases; SwiGLU (w1 the gate, w3 the up
    # projection); the convolution layers take no positions. LFM2's last norm is named embedding_norm.
    assembly={
        "positional": {"name": "rope"},
        "attention": {"name": "sdpa", "qk_norm": "per_head"},
        "feed_forward": {"name": "swiglu", "bias": False},
        "norm": {"name": "rmsnorm"},
        "block": {"name": "pre_norm"},
        "head": {"name": "lm"},
        "qkv_bias": False,
        "attn_out_bias": False,
    },
    requires=(Require("conv_bias", (False,), False, "gptzoo's short_conv has no biases"),),
    weights=(
        Weight("token_embedding.weight", ("model.embed_tokens.weight",)),
        Weight("blocks.{i}.attn_norm.weight", ("model.layers.{i}.operator_norm.weight",)),
        Weight(
            "blocks.{i}.attention.qkv.weight",
            tuple(f"model.layers.{{i}}.self_attn.{p}_proj.weight" for p in "qkv"),
            "rows",
            qkv_rows,
        ),
        Weight("blocks.{i}.attention.qk_norm.q_norm", ("model.layers.{i}.self_attn.q_layernorm.weight",)),
        Weight("blocks.{i}.attention.qk_norm.k_norm", ("model.layers.{i}.self_attn.k_layernorm.weight",)),
        Weight(
            "blocks.{i}.attention.out_proj.weight",
            ("model.layers.{i}.self_attn.out_proj.weight",),
            when="blocks.{i}.attention.qkv.weight",
        ),
        Weight("blocks.{i}.attention.in_proj.weight", ("model.layers.{i}.conv.in_proj.weight",)),
        Weight("blocks.{i}.attention.conv.conv.weight", ("model.layers.{i}.conv.conv.weight",)),
        Weight("blocks.{i}.attention.out_proj.weight", ("model.layers.{i}.conv.out_proj.weight",)),
        Weight("blocks.{i}.ffn_norm.weight", ("model.layers.{i}.ffn_norm.weight",)),
        Weight("blocks.{i}.feed_forward.gate_proj.weight", ("model.layers.{i}.feed_forward.w1.weight",)),
        Weight("blocks.{i}.feed_forward.up_proj.weight", ("model.layers.{i}.feed_forward.w3.weight",)),
        Weight("blocks.{i}.feed_forward.out_proj.weight", ("model.layers.{i}.feed_forward.w2.weight",)),
        Weight("final_norm.weight", ("model.embedding_norm.weight",)),
        Weight("head.weight", ("lm_head.weight",)),
    ),
    conversions=(
        Conversion(_read_lfm2_layers, _write_lfm2_layers),
        Conversion(_read_lfm2_feed_forward, _write_lfm2_feed_forward),
        ROPE_SCALING,
    ),
    legacy=_lfm2_legacy,
)


# ---- LFM2-MoE: LFM2's layers, the first num_dense_layers with a SwiGLU and the rest with experts ---


def _read_lfm2_moe_layers(hf: dict) -> dict[str, Any]:
    """LFM2's convolution and attention layers; a SwiGLU intermediate_size wide on the first num_dense_layers
    (``conv_dense``, ``attention_dense`` where others have experts), sigmoid-scored experts on the rest."""
    types, n = hf["layer_types"], hf["num_hidden_layers"]
    read = _read_lfm2_layers(hf) or {"layer_pattern": [], "layer_kinds": {}}
    conv = read["layer_kinds"].get("conv", {})
    kinds = [LFM2_KINDS[t] for t in types]
    dense = min(hf.get("num_dense_layers", 2), n)
    swiglu = {"name": "swiglu", "hidden": hf.get("intermediate_size", 7168), "bias": False}
    if dense == n:
        return read | {"feed_forward": swiglu}
    moe = {
        "name": "moe",
        "scoring": "sigmoid",
        "n_experts": hf.get("num_experts", 32),
        "top_k": hf.get("num_experts_per_tok", 4),
        "hidden": hf.get("moe_intermediate_size", 1792),
        "normalize_top_k": hf.get("norm_topk_prob", True),
        "routed_scale": hf.get("routed_scaling_factor", 1.0),
        "expert_bias": hf.get("use_expert_bias", True),
    }
    names = [k + ("_dense" if i < dense else "") for i, k in enumerate(kinds)]
    layer_kinds = {"conv": conv, "attention": {}, "conv_dense": conv | {"feed_forward": swiglu}}
    layer_kinds["attention_dense"] = {"feed_forward": swiglu}
    return {
        "layer_pattern": period(names),
        "layer_kinds": {k: v for k, v in layer_kinds.items() if k in names},
        "feed_forward": moe,
    }


def _write_lfm2_moe_layers(model: dict) -> dict[str, Any]:
    pattern, kinds = model.get("layer_pattern") or [], model.get("layer_kinds") or {}
    layers = [kinds.get(pattern[i % len(pattern)], {}) if pattern else {} for i in range(model["n_layers"])]
    feed_forwards = [k.get("feed_forward") or model["feed_forward"] for k in layers]
    other = next((f["name"] for f in feed_forwards if f["name"] not in ("moe", "swiglu")), None)
    if other is not None:
        raise ValueError(f"feed_forward '{other}' has no lfm2_moe counterpart (moe or swiglu)")
    dense = next((i for i, f in enumerate(feed_forwards) if f["name"] == "moe"), len(feed_forwards))
    if any(f["name"] != "moe" for f in feed_forwards[dense:]):
        raise ValueError("lfm2_moe's SwiGLU layers are the first ones only (num_dense_layers), then experts")
    hf = _write_lfm2_layers(model) | {"num_dense_layers": dense}
    if dense:
        hf["intermediate_size"] = feed_forwards[0]["hidden"]
    if dense == len(feed_forwards):
        return hf
    moe = feed_forwards[dense]
    return hf | {
        "num_experts": moe["n_experts"],
        "num_experts_per_tok": moe["top_k"],
        "moe_intermediate_size": moe["hidden"],
        "norm_topk_prob": moe["normalize_top_k"],
        "routed_scaling_factor": moe["routed_scale"],
        "use_expert_bias": moe["expert_bias"],
    }


LFM2_MOE = Family(
    model_type="lfm2_moe",
    architecture="Lfm2MoeForCausalLM",
    fields=tuple(f for f in LFM2.fields if f.hf not in ("hidden_size", "vocab_size"))
    + (Field("vocab_size", ("vocab_size",), 65536), Field("hidden_size", ("d_model",), 2048)),
    # LFM2's, its experts scored by a sigmoid, chosen with a bias (expert_bias, a buffer) and renormalised
    assembly={k: v for k, v in LFM2.assembly.items() if k != "feed_forward"},
    requires=LFM2.requires,
    weights=LFM2.weights
    + expert_weights("model.layers.{i}.feed_forward", "w1", "w3", "w2")
    + (Weight("blocks.{i}.feed_forward.expert_bias", ("model.layers.{i}.feed_forward.expert_bias",)),),
    conversions=(Conversion(_read_lfm2_moe_layers, _write_lfm2_moe_layers), ROPE_SCALING),
    legacy=lambda hf: {("tie_word_embeddings" if k == "tie_embedding" else k): v for k, v in hf.items()},
)
