"""Falcon-H1: attention and Mamba-2 side by side on every layer's normed input (parallel_mixers), then a
SwiGLU, with Falcon-H1's µP multipliers on the embeddings, each mixer's input and output, the keys, the
Mamba-2 projections, the MLP and the logits."""

from __future__ import annotations

import json
import math
from typing import Any

from gptzoo.recipes.interop.hf.families.base import Conversion, Family, Field, Require, Weight, qkv_rows
from gptzoo.recipes.interop.hf.families.llama import LLAMA_FIELDS, ROPE_SCALING
from gptzoo.recipes.interop.hf.families.mamba import DT_LIMIT, MAMBA2_MIXER

SSM_MULTIPLIERS = 5  # z, x, B, C and dt of in_proj's output


def _head_dim(hf: dict) -> int:
    return hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]


def _ones_to_none(values: list[float]) -> list[float] | None:
    return None if all(v == 1.0 for v in values) else values


def _read_mixers(hf: dict) -> dict[str, Any]:
    if hf.get("mamba_rms_norm", False) and hf.get("mamba_norm_before_gate", True):
        raise ValueError(
            "mamba_norm_before_gate = true with mamba_rms_norm = true is not supported for falcon_h1 (gptzoo's "
            "Mamba-2 norms y ⊙ SiLU(z), the gate before the norm; gptzoo reads mamba_norm_before_gate = false)"
        )
    if (proj := hf.get("mamba_proj_bias", False)) != (out := hf.get("projectors_bias", False)):
        raise ValueError(
            f"projectors_bias = {json.dumps(out)} with mamba_proj_bias = {json.dumps(proj)} is not supported for "
            "falcon_h1 (gptzoo's Mamba-2 has biases on in_proj and out_proj alike)"
        )
    ssm = list(hf.get("ssm_multipliers") or [1.0] * SSM_MULTIPLIERS)
    if len(ssm) != SSM_MULTIPLIERS:
        raise ValueError(f"ssm_multipliers = {json.dumps(ssm)} is not supported: gptzoo reads 5 (z, x, B, C, dt)")
    DT_LIMIT.read(hf)
    attention: dict[str, Any] = {"name": "sdpa"}
    if (key := hf.get("key_multiplier", 1.0)) != 1.0:  # keys × m: the scores × m, rotary being linear
        attention["scale"] = _head_dim(hf) ** -0.5 * key
    mamba = {
        "name": "mamba2",
        "d_inner": hf.get("mamba_d_ssm") or hf.get("mamba_expand", 2) * hf["hidden_size"],
        "head_dim": hf.get("mamba_d_head", 64),
        "d_state": hf.get("mamba_d_state", 256),
        "d_conv": hf.get("mamba_d_conv", 4),
        "n_groups": hf.get("mamba_n_groups", 1),
        "chunk_size": hf.get("mamba_chunk_size", 256),
        "bias": proj,
        "conv_bias": hf.get("mamba_conv_bias", True),
        "gated_norm": hf.get("mamba_rms_norm", False),
        "norm_eps": hf.get("rms_norm_eps", 1e-5),
        "in_proj_multipliers": _ones_to_none(ssm),
    }
    scales = [[hf.get(f"{part}_{side}_multiplier", 1.0) for part in ("attention", "ssm")] for side in ("in", "out")]
    gate, down = hf.get("mlp_multipliers") or (1.0, 1.0)
    return {
        "attention": {
            "name": "parallel_mixers",
            "mixers": [attention, mamba],
            "in_multipliers": _ones_to_none(scales[0]),
            "out_multipliers": _ones_to_none(scales[1]),
        },
        "feed_forward.gate_multiplier": gate,
        "feed_forward.out_multiplier": down,
    }


def _write_mixers(model: dict) -> dict[str, Any]:
    parallel = model["attention"]
    if parallel["name"] != "parallel_mixers" or [m["name"] for m in parallel["mixers"]] != ["sdpa", "mamba2"]:
        raise ValueError("falcon_h1 layers are parallel_mixers of sdpa and mamba2, in that order")
    attention, mamba = parallel["mixers"]
    head_dim = model["head_dim"]
    scale = attention.get("scale")
    ins, outs = parallel.get("in_multipliers") or (1.0, 1.0), parallel.get("out_multipliers") or (1.0, 1.0)
    inner = mamba.get("d_inner") or mamba["expand"] * model["d_model"]
    return {
        "key_multiplier": 1.0 if scale is None else round(scale * math.sqrt(head_dim), 12),
        "attention_in_multiplier": ins[0],
        "ssm_in_multiplier": ins[1],
        "attention_out_multiplier": outs[0],
        "ssm_out_multiplier": outs[1],
        "ssm_multipliers": list(mamba.get("in_proj_multipliers") or [1.0] * SSM_MULTIPLIERS),
        "mlp_multipliers": [
            model["feed_forward"].get("gate_multiplier", 1.0),
            model["feed_forward"].get("out_multiplier", 1.0),
        ],
        "mamba_d_ssm": inner,
        "mamba_n_heads": inner // mamba["head_dim"],
        "mamba_d_head": mamba["head_dim"],
        "mamba_d_state": mamba["d_state"],
        "mamba_d_conv": mamba["d_conv"],
        "mamba_n_groups": mamba["n_groups"],
        "mamba_chunk_size": mamba["chunk_size"],
        "mamba_proj_bias": mamba["bias"],
        "projectors_bias": mamba["bias"],
        "mamba_conv_bias": mamba["conv_bias"],
        "mamba_rms_norm": mamba["gated_norm"],
        "mamba_norm_before_gate": False,
    } | DT_LIMIT.write({"attention": mamba})


def _layer(name: str) -> str:
    return f"model.layers.{{i}}.{name}"


FALCON_H1 = Family(
    model_type="falcon_h1",
    architecture="FalconH1ForCausalLM",
    fields=tuple(f for f in LLAMA_FIELDS if f.hf not in ("rms_norm_eps",))
    + (
        Field("rms_norm_eps", ("norm.eps",), 1e-5),
        Field("attention_bias", ("qkv_bias", "attn_out_bias"), False),
        Field("mlp_bias", ("feed_forward.bias",), False),
        Field("embedding_multiplier", ("embedding_scale",), 1.0),
        Field("lm_head_multiplier", ("head.logit_scale",), 1.0),
    ),
    assembly={
        "positional": {"name": "rope"},  # the attention part's; Mamba-2 takes no positions
        "feed_forward": {"name": "swiglu"},
        "norm": {"name": "rmsnorm"},
        "block": {"name": "pre_norm"},
        "head": {"name": "lm"},
    },
    requires=(Require("hidden_act", ("silu",), "silu", "the SwiGLU and the Mamba-2 convolution use SiLU"),),
    weights=(
        Weight("token_embedding.weight", ("model.embed_tokens.weight",)),
        Weight("blocks.{i}.attn_norm.weight", (_layer("input_layernorm.weight"),)),
        Weight("blocks.{i}.ffn_norm.weight", (_layer("pre_ff_layernorm.weight"),)),
        *(
            Weight(
                f"blocks.{{i}}.attention.mixers.0.qkv.{p}",
                tuple(_layer(f"self_attn.{x}_proj.{p}") for x in "qkv"),
                "rows",
                qkv_rows,
            )
            for p in ("weight", "bias")
        ),
        *(
            Weight(f"blocks.{{i}}.attention.mixers.0.out_proj.{p}", (_layer(f"self_attn.o_proj.{p}"),))
            for p in ("weight", "bias")
        ),
        *(
            Weight(f"blocks.{{i}}.attention.mixers.1.{name}", (_layer(f"mamba.{theirs}"),))
            for name, theirs in MAMBA2_MIXER
        ),
        *(
            Weight(f"blocks.{{i}}.feed_forward.{ours}.{p}", (_layer(f"feed_forward.{theirs}.{p}"),))
            for ours, theirs in (("gate_proj", "gate_proj"), ("up_proj", "up_proj"), ("out_proj", "down_proj"))
            for p in ("weight", "bias")
        ),
        Weight("final_norm.weight", ("model.final_layernorm.weight",)),
        Weight("head.weight", ("lm_head.weight",)),
    ),
    conversions=(Conversion(_read_mixers, _write_mixers), ROPE_SCALING),
)
