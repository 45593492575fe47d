"""Nemotron-H: layers of one sublayer each (Mamba-2, attention or an MLP), named by its pattern
characters M, * and -."""

from __future__ import annotations

import json
from typing import Any

from gptzoo.recipes.interop.hf.families.base import Conversion, Family, Field, Require, Weight, period, qkv_rows
from gptzoo.recipes.interop.hf.families.mamba import DT_LIMIT, MAMBA2_MIXER

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
    DT_LIMIT.read(hf)  # Δ unclamped, as in Mamba-2 (time_step_min only sets dt_bias's initial range)
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
            "time_step_min": mamba["dt_min"],
            "time_step_max": mamba["dt_max"],
            "time_step_floor": mamba["dt_init_floor"],
        } | DT_LIMIT.write({"attention": mamba})
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
        *(Weight(f"blocks.{{i}}.attention.{name}", (_mixer("{i}", theirs),)) for name, theirs in MAMBA2_MIXER),
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
