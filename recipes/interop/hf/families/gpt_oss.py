"""gpt-oss: Llama's attention with biases and a sink logit per head, windowed and full layers in turn, and a
mixture of experts with a biased router and biased experts computing a clamped, shifted SwiGLU.

transformers keeps each layer's experts as three stacks stored (in, out): gate_up_proj (E, C, 2 × hidden),
whose last axis takes the gate's and the up projection's features in turn, its bias gate_up_proj_bias
(E, 2 × hidden) likewise, and down_proj (E, hidden, C) with down_proj_bias (E, C).
"""

from __future__ import annotations

import json
from typing import Any

from gptzoo.recipes.interop.hf.families.base import Conversion, Family, Field, Require, Weight, period
from gptzoo.recipes.interop.hf.families.llama import LLAMA_ASSEMBLY, LLAMA_FIELDS, LLAMA_WEIGHTS, ROPE_SCALING

GPT_OSS_KINDS = {"sliding_attention": "sliding", "full_attention": "full"}  # layer_types -> gptzoo's kinds


def _read_layers(hf: dict) -> dict[str, Any]:
    n = hf["num_hidden_layers"]
    types = hf.get("layer_types") or [  # GptOssConfig's default: windowed, then full, in turn
        "sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n)
    ]
    if len(types) != n or not set(types) <= set(GPT_OSS_KINDS):
        raise ValueError(
            f"layer_types = {json.dumps(types)} is not supported: gptzoo reads {n} entries of {' or '.join(GPT_OSS_KINDS)}"
        )
    if "sliding_attention" not in types:
        return {}
    window = hf.get("sliding_window", 128)
    if window is None:
        raise ValueError(
            "sliding_window = null is not supported for gpt_oss's sliding_attention layers (give a window)"
        )
    return {
        "layer_pattern": [GPT_OSS_KINDS[t] for t in period(types)],
        "layer_kinds": {
            "sliding": {"attention": {"name": "sliding_window", "window": window, "sinks": True}},
            "full": {},
        },
    }


def _write_layers(model: dict) -> dict[str, Any]:
    pattern, kinds = model.get("layer_pattern") or [], model.get("layer_kinds") or {}
    chosen = [kinds[pattern[i % len(pattern)]] if pattern else {} for i in range(model["n_layers"])]
    attention = [c.get("attention") or model["attention"] for c in chosen]
    return {
        "layer_types": ["sliding_attention" if a["name"] == "sliding_window" else "full_attention" for a in attention],
        # GptOssModel builds the windowed mask even where no layer uses it, and needs a window for it: its default
        "sliding_window": next((a["window"] for a in attention if a["name"] == "sliding_window"), 128),
    }


def _legacy(hf: dict) -> dict:
    """A config.json without rope settings: GptOssConfig's default, YaRN of factor 32 over 4096 positions, the
    ramp not rounded to whole dimensions (truncate false)."""
    if any(hf.get(k) is not None for k in ("rope_parameters", "rope_scaling")):
        return dict(hf)
    return hf | {
        "rope_parameters": {
            "rope_type": "yarn",
            "rope_theta": hf.get("rope_theta") or 150000.0,
            "factor": 32.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "truncate": False,
            "original_max_position_embeddings": 4096,
        }
    }


EXPERTS = "model.layers.{i}.mlp.experts"

GPT_OSS = Family(
    model_type="gpt_oss",
    architecture="GptOssForCausalLM",
    fields=tuple(
        f
        for f in LLAMA_FIELDS
        if f.hf
        not in ("num_key_value_heads", "head_dim", "intermediate_size", "rms_norm_eps", "rope_parameters.rope_theta")
    )
    + (  # GptOssConfig's defaults where a key is absent
        Field("num_key_value_heads", ("n_kv_heads",), 8),
        Field("head_dim", ("head_dim",), 64),
        Field("rms_norm_eps", ("norm.eps",), 1e-5),
        Field("rope_parameters.rope_theta", ("positional.base",), 150000.0),
        Field("attention_bias", ("qkv_bias", "attn_out_bias"), True),
        Field("intermediate_size", ("feed_forward.hidden",), 2880),
        Field("num_local_experts", ("feed_forward.n_experts",), 128),
        Field("num_experts_per_tok", ("feed_forward.top_k",), 4),
        Field("swiglu_alpha", ("feed_forward.swiglu_alpha",), 1.702),
        Field("swiglu_limit", ("feed_forward.swiglu_limit",), 7.0),
        Field("router_aux_loss_coef", ("feed_forward.balance_loss_weight",), 0.001),
    ),
    # every layer's attention has sinks; the router's softmax over its top-k logits is a softmax renormalised
    # over the top k; the experts ignore hidden_act (their SwiGLU is the clamped one)
    assembly={k: v for k, v in LLAMA_ASSEMBLY.items() if k not in ("qkv_bias", "attn_out_bias")}
    | {
        "attention": {"name": "sdpa", "sinks": True},
        "feed_forward": {
            "name": "moe",
            "scoring": "softmax",
            "normalize_top_k": True,
            "router_bias": True,
            "expert_biases": True,
            "activation": "clamped_swiglu",
        },
    },
    requires=(
        Require(
            "quantization_config",
            (None,),
            None,
            "the weights must be floating point; the published experts are MXFP4 blocks: dequantize them to bf16 first",
        ),
    ),
    weights=tuple(w for w in LLAMA_WEIGHTS if ".feed_forward." not in w.ours)
    + (
        Weight("blocks.{i}.attention.sinks", ("model.layers.{i}.self_attn.sinks",)),
        Weight("blocks.{i}.feed_forward.router.weight", ("model.layers.{i}.mlp.router.weight",)),
        Weight("blocks.{i}.feed_forward.router.bias", ("model.layers.{i}.mlp.router.bias",)),
        Weight(
            "blocks.{i}.feed_forward.expert_gate", (f"{EXPERTS}.gate_up_proj",), "interleaved_transposed", chunk=(0, 2)
        ),
        Weight(
            "blocks.{i}.feed_forward.expert_up", (f"{EXPERTS}.gate_up_proj",), "interleaved_transposed", chunk=(1, 2)
        ),
        Weight(
            "blocks.{i}.feed_forward.expert_gate_bias", (f"{EXPERTS}.gate_up_proj_bias",), "interleaved", chunk=(0, 2)
        ),
        Weight(
            "blocks.{i}.feed_forward.expert_up_bias", (f"{EXPERTS}.gate_up_proj_bias",), "interleaved", chunk=(1, 2)
        ),
        Weight("blocks.{i}.feed_forward.expert_out", (f"{EXPERTS}.down_proj",), "transposed"),
        Weight("blocks.{i}.feed_forward.expert_out_bias", (f"{EXPERTS}.down_proj_bias",)),
    ),
    conversions=(Conversion(_read_layers, _write_layers), ROPE_SCALING),
    legacy=_legacy,
)
