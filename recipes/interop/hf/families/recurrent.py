"""The recurrent families: Mamba-2 (every layer one Mamba-2 mixer, no feed-forward), LFM2 (gated
short convolutions and attention layers, each with a SwiGLU), Nemotron-H (layers of one sublayer
each: Mamba-2, attention or an MLP) and Bamba (Llama's layer with Mamba-2 in place of attention on
most layers).

Their recurrent layers keep a state or a window instead of keys and values, so where every layer
is recurrent a run imported from them decodes past its context with a cache of fixed size.
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
            for name, theirs in (
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
        ),
        Weight("final_norm.weight", ("backbone.norm_f.weight",)),
        Weight("head.weight", ("lm_head.weight",)),
    ),
    conversions=(DT_LIMIT,),
    prefix="backbone.",
)


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


# ---- Nemotron-H ------------------------------------------------------------------------------------

# Hugging Face's layers_block_type -> gptzoo's kinds, named by Nemotron-H's pattern characters
NEMOTRON_H_KINDS = {"linear_attention": "M", "mlp": "-", "full_attention": "*"}
NEMOTRON_H_PATTERN = {"M": "linear_attention", "E": "moe", "*": "full_attention", "-": "mlp"}
NEMOTRON_H_RENAMED = {  # older config.json keys -> transformers 5's
    "mamba_n_groups": "n_groups",
    "mamba_d_conv": "conv_kernel",
    "mamba_expand": "expand",
    "mamba_dt_min": "time_step_min",
    "mamba_dt_max": "time_step_max",
    "mamba_dt_init_floor": "time_step_floor",
    "mamba_conv_bias": "use_conv_bias",
    "mamba_chunk_size": "chunk_size",
}


def _nemotron_h_legacy(hf: dict) -> dict:
    """Nemotron-H's first config.json: the layers as hybrid_override_pattern ("M-M*-"), mamba_-prefixed keys."""
    hf = {NEMOTRON_H_RENAMED.get(k, k): v for k, v in hf.items()}
    pattern = hf.pop("hybrid_override_pattern", None)
    if hf.get("layers_block_type") is None and isinstance(pattern, str):
        hf["layers_block_type"] = [NEMOTRON_H_PATTERN.get(c, c) for c in pattern]
    return hf


def _read_nemotron_h_layers(hf: dict) -> dict[str, Any]:
    types = hf.get("layers_block_type") or ["linear_attention", "moe", "full_attention", "mlp"]
    unknown = sorted(set(types) - set(NEMOTRON_H_KINDS))
    if unknown:
        raise ValueError(
            f"layers_block_type = {json.dumps(types)} is not supported for nemotron_h (its {', '.join(unknown)} layers "
            f"are not read yet; gptzoo reads {' or '.join(NEMOTRON_H_KINDS)})"
        )
    # The mixer clamps Δ at time_step_min from below in its scan (not time_step_limit).
    mamba = {
        "name": "mamba2",
        "d_inner": hf.get("mamba_num_heads", 128) * hf.get("mamba_head_dim", 64),
        "head_dim": hf.get("mamba_head_dim", 64),
        "d_state": hf.get("ssm_state_size", 128),
        "d_conv": hf.get("conv_kernel", 4),
        "n_groups": hf.get("n_groups", 8),
        "chunk_size": hf.get("chunk_size", 128),
        "bias": hf.get("use_bias", False),
        "conv_bias": hf.get("use_conv_bias", True),
        "norm_eps": hf.get("layer_norm_epsilon", 1e-5),
        "dt_min": hf.get("time_step_min", 0.001),
        "dt_max": hf.get("time_step_max", 0.1),
        "dt_init_floor": hf.get("time_step_floor", 1e-4),
        "dt_limit_min": hf.get("time_step_min", 0.001),
    }
    kinds = {
        "M": {"attention": mamba, "feed_forward": {"name": "none"}},
        "-": {"attention": {"name": "none"}},
        "*": {"feed_forward": {"name": "none"}},
    }
    present = {NEMOTRON_H_KINDS[t] for t in types}
    return {
        "n_layers": len(types),
        "layer_pattern": [NEMOTRON_H_KINDS[t] for t in period(types)],
        "layer_kinds": {k: v for k, v in kinds.items() if k in present},
    }


def _write_nemotron_h_layers(model: dict) -> dict[str, Any]:
    pattern, kinds = model.get("layer_pattern") or [], model.get("layer_kinds") or {}
    layers = [kinds.get(pattern[i % len(pattern)], {}) if pattern else {} for i in range(model["n_layers"])]
    mixers = [
        (k.get("attention") or model["attention"], k.get("feed_forward") or model["feed_forward"]) for k in layers
    ]
    types = []
    for attention, feed_forward in mixers:
        if attention["name"] == "mamba2" and feed_forward["name"] == "none":
            types.append("linear_attention")
        elif attention["name"] == "none":
            types.append("mlp")
        elif feed_forward["name"] == "none":
            types.append("full_attention")
        else:
            raise ValueError("a layer with both a token mixer and a feed-forward has no nemotron_h counterpart")
    mamba = next((a for a, _ in mixers if a["name"] == "mamba2"), None)
    hf: dict[str, Any] = {"layers_block_type": types, "tie_word_embeddings": False}
    if mamba is not None:
        inner = mamba.get("d_inner") or mamba["expand"] * model["d_model"]
        head_dim = mamba.get("head_dim") or inner // model["n_heads"]
        hf |= {
            "mamba_num_heads": inner // head_dim,
            "mamba_head_dim": head_dim,
            "ssm_state_size": mamba["d_state"],
            "conv_kernel": mamba["d_conv"],
            "n_groups": mamba["n_groups"],
            "chunk_size": mamba["chunk_size"],
            "use_bias": mamba["bias"],
            "use_conv_bias": mamba["conv_bias"],
            "time_step_min": mamba["dt_limit_min"],
            "time_step_max": mamba["dt_max"],
            "time_step_floor": mamba["dt_init_floor"],
        }
    return hf


def _mixer(i: str, name: str) -> str:
    return f"backbone.layers.{i}.mixer.{name}"


NEMOTRON_H = Family(
    model_type="nemotron_h",
    architecture="NemotronHForCausalLM",
    fields=(
        Field("vocab_size", ("vocab_size",), 131072),
        Field("hidden_size", ("d_model",), 4096),
        Field("num_attention_heads", ("n_heads",), 32),
        Field("num_key_value_heads", ("n_kv_heads",), 8),
        Field("head_dim", ("head_dim",), 128),
        Field("max_position_embeddings", ("context_length",), 4096),
        Field("intermediate_size", ("feed_forward.hidden",), 21504),
        Field("mlp_bias", ("feed_forward.bias",), False),
        Field("layer_norm_epsilon", ("norm.eps",), 1e-5),
    ),
    # Layers of one sublayer each (a Mamba-2 mixer, an MLP or attention), pre-norm; the MLP
    # relu(x W_up)² W_down; attention without positions or biases.
    assembly={
        "positional": {"name": "none"},
        "attention": {"name": "sdpa"},
        "feed_forward": {"name": "squared_relu"},
        "norm": {"name": "rmsnorm"},
        "block": {"name": "pre_norm"},
        "head": {"name": "lm"},
        "qkv_bias": False,
        "attn_out_bias": False,
        "tied_head": False,  # transformers' NemotronH never ties lm_head, whatever tie_word_embeddings says
    },
    requires=(
        Require("mlp_hidden_act", ("relu2",), "relu2", "the MLP is gptzoo's squared_relu"),
        Require("mamba_hidden_act", ("silu",), "silu", "the Mamba-2 convolution's activation and gate are SiLU"),
        Require("num_nextn_predict_layers", (0,), 0, "multi-token-prediction layers are not read for nemotron_h yet"),
    ),
    weights=(
        Weight("token_embedding.weight", ("backbone.embeddings.weight",)),
        Weight("blocks.{i}.attn_norm.weight", ("backbone.layers.{i}.norm.weight",)),
        Weight("blocks.{i}.ffn_norm.weight", ("backbone.layers.{i}.norm.weight",)),
        Weight(
            "blocks.{i}.attention.qkv.weight", tuple(_mixer("{i}", f"{p}_proj.weight") for p in "qkv"), "rows", qkv_rows
        ),
        Weight(
            "blocks.{i}.attention.out_proj.weight",
            (_mixer("{i}", "o_proj.weight"),),
            when="blocks.{i}.attention.qkv.weight",
        ),
        *(
            Weight(f"blocks.{{i}}.attention.{name}", (_mixer("{i}", theirs),))
            for name, theirs in (
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
        ),
        Weight("blocks.{i}.feed_forward.in_proj.weight", (_mixer("{i}", "up_proj.weight"),)),
        Weight("blocks.{i}.feed_forward.in_proj.bias", (_mixer("{i}", "up_proj.bias"),)),
        Weight("blocks.{i}.feed_forward.out_proj.weight", (_mixer("{i}", "down_proj.weight"),)),
        Weight("blocks.{i}.feed_forward.out_proj.bias", (_mixer("{i}", "down_proj.bias"),)),
        Weight("final_norm.weight", ("backbone.norm_f.weight",)),
        Weight("head.weight", ("lm_head.weight",)),
    ),
    conversions=(Conversion(_read_nemotron_h_layers, _write_nemotron_h_layers),),
    prefix="backbone.",  # as transformers saves it (its checkpoints' names; "model." in memory)
    legacy=_nemotron_h_legacy,
)


# ---- Bamba -----------------------------------------------------------------------------------------


def _read_bamba_layers(hf: dict) -> dict[str, Any]:
    """Mamba-2 layers, and attention at attn_layer_indices; every layer then has its SwiGLU."""
    n = hf["num_hidden_layers"]
    attention = set(hf.get("attn_layer_indices") or ())
    heads = hf.get("mamba_n_heads", 128)
    head_dim = hf.get("mamba_d_head", "auto")
    inner = hf.get("mamba_expand", 2) * hf["hidden_size"]
    mamba = {
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
    if mamba is not None:
        inner = mamba.get("d_inner") or mamba["expand"] * model["d_model"]
        head_dim = mamba.get("head_dim") or inner // model["n_heads"]
        hf |= {
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
    return hf


def _bamba_dt_limit(model: dict) -> dict[str, Any]:
    mamba = next((k["attention"] for k in (model.get("layer_kinds") or {}).values() if "attention" in k), None)
    return _write_dt_limit({"attention": mamba or model["attention"]})


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
            for name, theirs in (
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
        Conversion(_read_dt_limit, _bamba_dt_limit),
        ROPE_SCALING,
    ),
)
