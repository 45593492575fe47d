"""Mamba-2 (every layer one Mamba-2 mixer, no feed-forward) and Bamba (Llama's layer with Mamba-2 in
place of attention on most layers), with the Δ limit the Mamba-2 families share.

Their recurrent layers keep a state instead of keys and values, so where every layer is recurrent a
run imported from them decodes past its context with a cache of fixed size.
"""

from __future__ import annotations

import json
import math
from typing import Any

from gptzoo.recipes.interop.hf.families.base import Conversion, Family, Field, Require, Weight, period, qkv_rows
from gptzoo.recipes.interop.hf.families.llama import ROPE_SCALING


def _number(value: Any) -> float:
    """A number of config.json: transformers 5 writes infinity as {"__float__": "Infinity"}, older files as Infinity."""
    return float(value["__float__"]) if isinstance(value, dict) else float(value)


def _read_dt_limit(hf: dict) -> dict[str, Any]:
    low, high = (_number(v) for v in hf.get("time_step_limit") or (0.0, math.inf))
    if (low, high) != (0.0, math.inf):
        raise ValueError(
            f"time_step_limit = {json.dumps([low, high])} is not supported for {hf['model_type']} (transformers "
            "clamps Δ to it in the scan but not when decoding one token, so no model matches both; gptzoo reads [0.0, Infinity])"
        )
    return {}


def _write_dt_limit(model: dict) -> dict[str, Any]:
    attention = model["attention"]
    if attention.get("dt_limit_min", 0.0) != 0.0 or attention.get("dt_limit_max") is not None:
        raise ValueError(f"attention '{attention['name']}' with a Δ limit has no Hugging Face counterpart")
    return {"time_step_limit": [0.0, {"__float__": "Infinity"}]}


DT_LIMIT = Conversion(_read_dt_limit, _write_dt_limit)  # Δ is not clamped (time_step_limit [0, inf])

# A Mamba-2 mixer's tensors: (name under gptzoo's mixer, name under transformers' Mamba2Mixer), for every
# family that holds one (Mamba-2, Bamba, Nemotron-H, Granite 4.0-H, Falcon-H1).
MAMBA2_MIXER = (
    ("in_proj.weight", "in_proj.weight"),
    ("in_proj.bias", "in_proj.bias"),
    ("conv1d.conv.weight", "conv1d.weight"),
    ("conv1d.conv.bias", "conv1d.bias"),
    ("dt_bias", "dt_bias"),
    ("A_log", "A_log"),
    ("D", "D"),
    ("norm.weight", "norm.weight"),
    ("out_proj.weight", "out_proj.weight"),
    ("out_proj.bias", "out_proj.bias"),
)

# Mamba-2's config.json names no trained context (the state does not grow): gptzoo's context is
# then Mamba-2's pretraining length, 2048 tokens (Dao & Gu, 2024); decoding goes past it.
MAMBA2_CONTEXT = 2048

MAMBA2 = Family(
    model_type="mamba2",
    architecture="Mamba2ForCausalLM",
    fields=(
        Field("vocab_size", ("vocab_size",), 32768),
        Field("hidden_size", ("d_model",), 4096),
        Field("num_hidden_layers", ("n_layers",), 64),
        Field("num_heads", ("n_heads",), 128),
        Field("max_position_embeddings", ("context_length",), MAMBA2_CONTEXT),
        Field("head_dim", ("attention.head_dim",), 64),
        Field("state_size", ("attention.d_state",), 128),
        Field("expand", ("attention.expand",), 2),
        Field("conv_kernel", ("attention.d_conv",), 4),
        Field("n_groups", ("attention.n_groups",), 8),
        Field("use_bias", ("attention.bias",), False),
        Field("use_conv_bias", ("attention.conv_bias",), True),
        Field("chunk_size", ("attention.chunk_size",), 256),
        Field("layer_norm_epsilon", ("norm.eps", "attention.norm_eps"), 1e-5),
        Field("time_step_min", ("attention.dt_min",), 0.001),
        Field("time_step_max", ("attention.dt_max",), 0.1),
        Field("time_step_floor", ("attention.dt_init_floor",), 1e-4),
        Field("tie_word_embeddings", ("tied_head",), False),
    ),
    # Pre-norm blocks of one Mamba-2 mixer each (its gated RMSNorm: the gate before the norm), no
    # feed-forward, no position scheme.
    assembly={
        "positional": {"name": "none"},
        "attention": {"name": "mamba2", "gated_norm": True},
        "feed_forward": {"name": "none"},
        "norm": {"name": "rmsnorm"},
        "block": {"name": "pre_norm"},
        "head": {"name": "lm"},
    },
    requires=(Require("hidden_act", ("silu",), "silu", "the convolution's activation and the gate are SiLU"),),
    weights=(
        Weight("token_embedding.weight", ("backbone.embeddings.weight",)),
        Weight("blocks.{i}.attn_norm.weight", ("backbone.layers.{i}.norm.weight",)),
        *(
            Weight(f"blocks.{{i}}.attention.{name}", (f"backbone.layers.{{i}}.mixer.{theirs}",))
            for name, theirs in MAMBA2_MIXER
        ),
        Weight("final_norm.weight", ("backbone.norm_f.weight",)),
        Weight("head.weight", ("lm_head.weight",)),
    ),
    conversions=(DT_LIMIT,),
    prefix="backbone.",
)


# ---- Bamba -----------------------------------------------------------------------------------------


def bamba_mixer(hf: dict) -> dict[str, Any]:
    """The Mamba-2 mixer of Bamba's mamba_* keys (Granite 4.0's too)."""
    heads = hf.get("mamba_n_heads", 128)
    head_dim = hf.get("mamba_d_head", "auto")
    inner = hf.get("mamba_expand", 2) * hf["hidden_size"]
    return {
        "name": "mamba2",
        "expand": hf.get("mamba_expand", 2),
        "head_dim": inner // heads if head_dim in ("auto", None) else head_dim,
        "d_state": hf.get("mamba_d_state", 256),
        "d_conv": hf.get("mamba_d_conv", 4),
        "n_groups": hf.get("mamba_n_groups", 1),
        "chunk_size": hf.get("mamba_chunk_size", 256),
        "bias": hf.get("mamba_proj_bias", False),
        "conv_bias": hf.get("mamba_conv_bias", True),
        "norm_eps": hf.get("rms_norm_eps", 1e-5),
    }


def write_bamba_mixer(mamba: dict, model: dict) -> dict[str, Any]:
    """Bamba's mamba_* keys of a Mamba-2 mixer."""
    inner = mamba.get("d_inner") or mamba["expand"] * model["d_model"]
    head_dim = mamba.get("head_dim") or inner // model["n_heads"]
    return {
        "mamba_n_heads": inner // head_dim,
        "mamba_d_head": head_dim,
        "mamba_expand": mamba["expand"],
        "mamba_d_state": mamba["d_state"],
        "mamba_d_conv": mamba["d_conv"],
        "mamba_n_groups": mamba["n_groups"],
        "mamba_chunk_size": mamba["chunk_size"],
        "mamba_proj_bias": mamba["bias"],
        "mamba_conv_bias": mamba["conv_bias"],
    }


def _read_bamba_layers(hf: dict) -> dict[str, Any]:
    """Mamba-2 layers, and attention at attn_layer_indices; every layer then has its SwiGLU."""
    n = hf["num_hidden_layers"]
    attention = set(hf.get("attn_layer_indices") or ())
    mamba = bamba_mixer(hf)
    types = ["attention" if i in attention else "mamba" for i in range(n)]
    kinds = {"mamba": {"positional": {"name": "none"}, "attention": mamba}, "attention": {}}
    return {
        "layer_pattern": period(types),
        "layer_kinds": {k: v for k, v in kinds.items() if k in types},
    }


def _write_bamba_layers(model: dict) -> dict[str, Any]:
    pattern, kinds = model.get("layer_pattern") or [], model.get("layer_kinds") or {}
    mixers = [
        (kinds.get(pattern[i % len(pattern)], {}) if pattern else {}).get("attention") or model["attention"]
        for i in range(model["n_layers"])
    ]
    hf: dict[str, Any] = {"attn_layer_indices": [i for i, m in enumerate(mixers) if m["name"] != "mamba2"]}
    mamba = next((m for m in mixers if m["name"] == "mamba2"), None)
    return hf if mamba is None else hf | write_bamba_mixer(mamba, model)


def bamba_dt_limit(model: dict) -> dict[str, Any]:
    mamba = next((k["attention"] for k in (model.get("layer_kinds") or {}).values() if "attention" in k), None)
    return _write_dt_limit({"attention": mamba or model["attention"]})


BAMBA_DT_LIMIT = Conversion(_read_dt_limit, bamba_dt_limit)  # Δ unclamped, in the Mamba-2 layer kind


def _layer(i: str, name: str) -> str:
    return f"model.layers.{i}.{name}"


BAMBA = Family(
    model_type="bamba",
    architecture="BambaForCausalLM",
    fields=(
        Field("vocab_size", ("vocab_size",), 128000),
        Field("hidden_size", ("d_model",), 4096),
        Field("num_hidden_layers", ("n_layers",), 32),
        Field("num_attention_heads", ("n_heads",), 32),
        Field("num_key_value_heads", ("n_kv_heads",), lambda hf: hf.get("num_attention_heads", 32)),
        Field("max_position_embeddings", ("context_length",), 262144),
        Field("intermediate_size", ("feed_forward.hidden",), 14336),
        Field("rms_norm_eps", ("norm.eps",), 1e-5),
        Field("rope_parameters.rope_theta", ("positional.base",), 10000.0),
        Field("attention_bias", ("qkv_bias", "attn_out_bias"), False),
        Field("mlp_bias", ("feed_forward.bias",), False),
        Field("tie_word_embeddings", ("tied_head",), False),
    ),
    # Llama's layer with Mamba-2 (gated norm) in place of attention on most layers; rotary on the
    # first half of each attention head (transformers fixes partial_rotary_factor at 0.5).
    assembly={
        "positional": {"name": "rope", "fraction": 0.5},
        "attention": {"name": "sdpa"},
        "feed_forward": {"name": "swiglu"},
        "norm": {"name": "rmsnorm"},
        "block": {"name": "pre_norm"},
        "head": {"name": "lm"},
    },
    requires=(Require("hidden_act", ("silu",), "silu", "the SwiGLU and the Mamba-2 convolution use SiLU"),),
    weights=(
        Weight("token_embedding.weight", ("model.embed_tokens.weight",)),
        Weight("blocks.{i}.attn_norm.weight", (_layer("{i}", "input_layernorm.weight"),)),
        Weight("blocks.{i}.ffn_norm.weight", (_layer("{i}", "pre_ff_layernorm.weight"),)),
        *(
            Weight(
                f"blocks.{{i}}.attention.qkv.{p}",
                tuple(_layer("{i}", f"self_attn.{x}_proj.{p}") for x in "qkv"),
                "rows",
                qkv_rows,
            )
            for p in ("weight", "bias")
        ),
        *(
            Weight(
                f"blocks.{{i}}.attention.out_proj.{p}",
                (_layer("{i}", f"self_attn.o_proj.{p}"),),
                when="blocks.{i}.attention.qkv.weight",
            )
            for p in ("weight", "bias")
        ),
        *(
            Weight(f"blocks.{{i}}.attention.{name}", (_layer("{i}", f"mamba.{theirs}"),))
            for name, theirs in MAMBA2_MIXER
        ),
        *(
            Weight(f"blocks.{{i}}.feed_forward.{ours}.{p}", (_layer("{i}", f"feed_forward.{theirs}.{p}"),))
            for ours, theirs in (("gate_proj", "gate_proj"), ("up_proj", "up_proj"), ("out_proj", "down_proj"))
            for p in ("weight", "bias")
        ),
        Weight("final_norm.weight", ("model.final_layernorm.weight",)),
        Weight("head.weight", ("lm_head.weight",)),
    ),
    conversions=(
        Conversion(_read_bamba_layers, _write_bamba_layers),
        BAMBA_DT_LIMIT,
        ROPE_SCALING,
    ),
)
