"""OLMo Hybrid: Gated DeltaNet layers (pre-norm, β up to 2) and OLMo 3's attention layers (the norms on each
sublayer's output, QK-norm across heads, rotary or none), three to one in the published model, each with a SwiGLU.

Its checkpoints keep OLMo-core's names, which transformers renames on loading (conversion_mapping.py):
``attention_layer_norm`` and ``feedforward_layer_norm`` (in an attention layer, the norm on the attention's
output), and the Gated DeltaNet's convolution as three tensors, ``q_conv1d``, ``k_conv1d`` and ``v_conv1d``.
"""

from __future__ import annotations

import json
from typing import Any

from gptzoo.recipes.interop.hf.families.base import Conversion, Family, Field, Require, Weight, period
from gptzoo.recipes.interop.hf.families.llama import LLAMA_FIELDS, LLAMA_WEIGHTS, ROPE_SCALING, SILU

KINDS = {"linear_attention": "linear", "full_attention": "full"}  # layer_types -> gptzoo's kinds


def _read_layers(hf: dict) -> dict[str, Any]:
    """Gated DeltaNet per layer_types' linear_attention (without positions, pre-norm), OLMo 3's attention elsewhere
    (rotary, or none where rope_theta is null); the linear_* sizes default as transformers' do."""
    n = hf["num_hidden_layers"]
    types = hf.get("layer_types") or ["full_attention" if i % 4 == 3 else "linear_attention" for i in range(n)]
    if len(types) != n or not set(types) <= set(KINDS):
        raise ValueError(
            f"layer_types = {json.dumps(types)} is not supported for olmo_hybrid: gptzoo reads {n} entries of "
            f"{' or '.join(KINDS)}"
        )
    heads = hf["num_attention_heads"]
    key_heads = hf.get("linear_num_key_heads") or heads
    key_dim = hf.get("linear_key_head_dim") or int(0.75 * hf["hidden_size"] / key_heads)
    deltanet = {
        "name": "gated_deltanet",
        "num_heads": hf.get("linear_num_value_heads") or heads,
        "num_k_heads": key_heads,
        "head_k_dim": key_dim,
        "head_v_dim": hf.get("linear_value_head_dim") or 2 * key_dim,
        "conv_size": hf.get("linear_conv_kernel_dim", 4),
        "allow_neg_eigval": hf.get("linear_allow_neg_eigval", True),
        "norm_eps": 1e-5,  # transformers' o_norm has its own epsilon, not rms_norm_eps
    }
    linear = {"positional": {"name": "none"}, "attention": deltanet, "block": {"name": "pre_norm"}}
    table: dict[str, Any] = {
        "layer_pattern": [KINDS[t] for t in period(types)],
        "layer_kinds": {k: v for k, v in {"linear": linear, "full": {}}.items() if k in (KINDS[t] for t in types)},
    }
    if hf["rope_parameters"].get("rope_theta") is None:  # transformers then builds no rotary
        table["positional"] = {"name": "none"}
    return table


def _write_layers(model: dict) -> dict[str, Any]:
    pattern, kinds = model.get("layer_pattern") or [], model.get("layer_kinds") or {}
    layers = [kinds.get(pattern[i % len(pattern)], {}) if pattern else {} for i in range(model["n_layers"])]
    mixers = [k.get("attention") or model["attention"] for k in layers]
    hf: dict[str, Any] = {
        "layer_types": ["linear_attention" if m["name"] == "gated_deltanet" else "full_attention" for m in mixers]
    }
    deltanet = next((m for m in mixers if m["name"] == "gated_deltanet"), None)
    if deltanet is not None:
        key_dim = deltanet.get("head_k_dim") or model["head_dim"]
        hf |= {
            "linear_num_value_heads": deltanet.get("num_heads") or model["n_heads"],
            "linear_num_key_heads": deltanet.get("num_k_heads") or model["n_kv_heads"],
            "linear_key_head_dim": key_dim,
            "linear_value_head_dim": deltanet.get("head_v_dim") or key_dim,
            "linear_conv_kernel_dim": deltanet["conv_size"],
            "linear_allow_neg_eigval": deltanet["allow_neg_eigval"],
        }
    if model["positional"]["name"] == "none":
        hf["rope_parameters"] = {"rope_type": "default", "rope_theta": None}
    return hf


def _layer(name: str) -> str:
    return f"model.layers.{{i}}.{name}"


LINEAR = "model.layers.{i}.linear_attn"
OLMO_HYBRID = Family(
    model_type="olmo_hybrid",
    architecture="OlmoHybridForCausalLM",
    fields=tuple(f for f in LLAMA_FIELDS if f.hf not in ("head_dim", "rms_norm_eps"))
    + (Field("rms_norm_eps", ("norm.eps", "attention.qk_norm_eps"), 1e-6),),
    # The attention layers' norms act on each sublayer's output (OLMo 2 and 3); QK-norm over all heads' features.
    assembly={
        "positional": {"name": "rope"},
        "attention": {"name": "sdpa", "qk_norm": "across_heads"},
        "feed_forward": {"name": "swiglu", "bias": False},
        "norm": {"name": "rmsnorm"},
        "block": {"name": "sublayer_output_norm"},
        "head": {"name": "lm"},
        "qkv_bias": False,
        "attn_out_bias": False,
    },
    requires=(SILU, Require("attention_bias", (False,), False, "OLMo Hybrid's published attention has no biases")),
    weights=tuple(
        w
        for w in LLAMA_WEIGHTS
        if not w.ours.startswith(("blocks.{i}.attn_norm", "blocks.{i}.ffn_norm", "blocks.{i}.attention.out_proj"))
    )
    + (
        # the attention layers' norms on each sublayer's output; the Gated DeltaNet layers' before each sublayer
        Weight(
            "blocks.{i}.attn_norm.weight",
            (_layer("feedforward_layer_norm.weight"),),
            when="blocks.{i}.attention.qkv.weight",
        ),
        Weight(
            "blocks.{i}.ffn_norm.weight",
            (_layer("post_feedforward_layernorm.weight"),),
            when="blocks.{i}.attention.qkv.weight",
        ),
        Weight("blocks.{i}.attn_norm.weight", (_layer("attention_layer_norm.weight"),)),
        Weight("blocks.{i}.ffn_norm.weight", (_layer("feedforward_layer_norm.weight"),)),
        Weight("blocks.{i}.attention.qk_norm.q_norm", (_layer("self_attn.q_norm.weight"),)),
        Weight("blocks.{i}.attention.qk_norm.k_norm", (_layer("self_attn.k_norm.weight"),)),
        Weight(
            "blocks.{i}.attention.out_proj.weight",
            (_layer("self_attn.o_proj.weight"),),
            when="blocks.{i}.attention.qkv.weight",
        ),
        *(
            Weight(f"blocks.{{i}}.attention.{p}.weight", (f"{LINEAR}.{p}.weight",))
            for p in ("q_proj", "k_proj", "v_proj", "a_proj", "b_proj", "g_proj")
        ),
        Weight(
            "blocks.{i}.attention.conv1d.conv.weight",
            tuple(f"{LINEAR}.{p}_conv1d.weight" for p in "qkv"),
            "rows",
            row_sizes_of=tuple(f"blocks.{{i}}.attention.{p}_proj.weight" for p in "qkv"),
        ),
        Weight("blocks.{i}.attention.A_log", (f"{LINEAR}.A_log",)),
        Weight("blocks.{i}.attention.dt_bias", (f"{LINEAR}.dt_bias",)),
        Weight("blocks.{i}.attention.o_norm.weight", (f"{LINEAR}.o_norm.weight",)),
        Weight("blocks.{i}.attention.out_proj.weight", (f"{LINEAR}.o_proj.weight",)),
    ),
    conversions=(Conversion(_read_layers, _write_layers), ROPE_SCALING),
)
