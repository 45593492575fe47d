"""The recurrent families: Mamba-2 (every layer one Mamba-2 mixer, no feed-forward).

Their layers keep a state instead of keys and values, so a run imported from them decodes past
its context with a cache of fixed size.
"""

from __future__ import annotations

import json
import math
from typing import Any

from gptzoo.recipes.interop.hf.families.base import Conversion, Family, Field, Require, Weight


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
