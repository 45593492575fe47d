"""MiniMax's families: MiniMax-01 (minimax: lightning attention 7 : 1 softmax attention, experts,
residual α and β) and MiniMax-M2 (Llama's layer with QK-norm across heads, partial rotary, and
sigmoid-scored experts chosen with a bias)."""

from __future__ import annotations

import json
from typing import Any

from gptzoo.recipes.interop.hf.families.base import Conversion, Family, Field, Require, Weight, period
from gptzoo.recipes.interop.hf.families.llama import (
    DEFAULT_ROPE,
    LLAMA_ASSEMBLY,
    LLAMA_FIELDS,
    LLAMA_WEIGHTS,
    ROPE_SCALING,
    SILU,
)
from gptzoo.recipes.interop.hf.families.moe import expert_weights

# ---- MiniMax-01 ---------------------------------------------------------------------------------------

MINIMAX_KINDS = {"linear_attention": "lightning", "full_attention": "softmax"}  # layer_types -> gptzoo's kinds
SCALES = ("alpha", "beta")  # α multiplies the (normalised) stream, β the sublayer's output


def _read_minimax_layers(hf: dict) -> dict[str, Any]:
    n = hf["num_hidden_layers"]
    types = hf.get("layer_types") or ["full_attention" if (i + 1) % 2 else "linear_attention" for i in range(n)]
    if len(types) != n or not set(types) <= set(MINIMAX_KINDS):
        raise ValueError(
            f"layer_types = {json.dumps(types)} is not supported: gptzoo reads {n} entries of {' or '.join(MINIMAX_KINDS)}"
        )
    for scale in SCALES:  # gptzoo's block scales both sublayers alike
        mlp = hf.get(f"mlp_{scale}_factor", 1)
        for kind in ("full_attn", "linear_attn"):
            if (value := hf.get(f"{kind}_{scale}_factor", 1)) != mlp:
                raise ValueError(
                    f"{kind}_{scale}_factor = {json.dumps(value)} is not supported for minimax (gptzoo's block scales "
                    f"the attention and the feed-forward alike: mlp_{scale}_factor = {json.dumps(mlp)})"
                )
    if "linear_attention" not in types:
        return {}
    lightning = {
        "attention": {"name": "lightning", "chunk_size": hf.get("block_size", 256)},
        "positional": {"name": "none"},
        "n_kv_heads": hf["num_attention_heads"],  # each head decays its own state: no key/value groups
    }
    return {
        "layer_pattern": [MINIMAX_KINDS[t] for t in period(types)],
        "layer_kinds": {"lightning": lightning, "softmax": {}},
    }


def _write_minimax_layers(model: dict) -> dict[str, Any]:
    pattern, kinds = model.get("layer_pattern") or [], model.get("layer_kinds") or {}
    chosen = [kinds[pattern[i % len(pattern)]] if pattern else {} for i in range(model["n_layers"])]
    attention = [c.get("attention") or model["attention"] for c in chosen]
    block = model["block"]
    scales = {"alpha": block.get("stream_scale", 1.0), "beta": block.get("branch_scale", 1.0)}
    return {
        "layer_types": ["linear_attention" if a["name"] == "lightning" else "full_attention" for a in attention],
        "block_size": next((a.get("chunk_size", 64) for a in attention if a["name"] == "lightning"), 256),
    } | {f"{kind}_{scale}_factor": value for kind in ("full_attn", "linear_attn") for scale, value in scales.items()}


MINIMAX = Family(
    model_type="minimax",
    architecture="MiniMaxForCausalLM",
    fields=tuple(
        f for f in LLAMA_FIELDS if f.hf not in ("rms_norm_eps", "rope_parameters.rope_theta", "intermediate_size")
    )
    + (
        Field("rms_norm_eps", ("norm.eps",), 1e-5),
        Field("rope_parameters.rope_theta", ("positional.base",), 1e6),  # MiniMaxConfig.default_theta
        Field("intermediate_size", ("feed_forward.hidden",)),  # each expert's width
        Field("num_local_experts", ("feed_forward.n_experts",)),
        Field("num_experts_per_tok", ("feed_forward.top_k",)),
        Field("router_aux_loss_coef", ("feed_forward.balance_loss_weight",), 0.001),
        Field("mlp_alpha_factor", ("block.stream_scale",), 1.0),
        Field("mlp_beta_factor", ("block.branch_scale",), 1.0),
    ),
    # Each sublayer reads the normalised stream and adds to it (normed_residual); Mixtral's experts. The softmax
    # layers rotate whole heads: transformers' MiniMax reads no rotary_dim (the original code rotated part).
    assembly=LLAMA_ASSEMBLY
    | {
        "block": {"name": "normed_residual"},
        "feed_forward": {"name": "moe", "scoring": "softmax", "normalize_top_k": True},
    },
    requires=(
        SILU,
        DEFAULT_ROPE,
        Require("sliding_window", (None,), None, "MiniMax-01's softmax layers attend to every key"),
    ),
    weights=(
        Weight("blocks.{i}.attention.qkv_proj.weight", ("model.layers.{i}.self_attn.qkv_proj.weight",)),
        Weight("blocks.{i}.attention.output_gate.weight", ("model.layers.{i}.self_attn.output_gate.weight",)),
        Weight("blocks.{i}.attention.norm.weight", ("model.layers.{i}.self_attn.norm.weight",)),
        Weight(
            "blocks.{i}.attention.out_proj.weight",
            ("model.layers.{i}.self_attn.out_proj.weight",),
            when="blocks.{i}.attention.qkv_proj.weight",
        ),
    )
    + tuple(w for w in LLAMA_WEIGHTS if ".feed_forward." not in w.ours)
    + expert_weights("model.layers.{i}.block_sparse_moe", "w1", "w3", "w2"),
    conversions=(Conversion(_read_minimax_layers, _write_minimax_layers),),
    # lightning attention's decays, which transformers saves and recomputes from the layer and head counts
    ignored=r"model\.layers\.\d+\.self_attn\.(slope_rate|query_decay|key_decay|diagonal_decay|rotary_emb\.inv_freq)",
)


# ---- MiniMax-M2 -------------------------------------------------------------------------------------------


def _minimax_m2_legacy(hf: dict) -> dict:
    """The published checkpoints give the rotary width as ``rotary_dim`` (transformers reads it as
    partial_rotary_factor = rotary_dim / head_dim, a factor given alongside winning)."""
    if hf.get("rotary_dim") is None:
        return dict(hf)
    factor = hf["rotary_dim"] / (hf.get("head_dim") or 128)
    rope = hf.get("rope_parameters")
    if isinstance(rope, dict):
        return hf | {"rope_parameters": {"partial_rotary_factor": factor} | rope}
    return {"partial_rotary_factor": factor} | hf


MINIMAX_M2 = Family(
    model_type="minimax_m2",
    architecture="MiniMaxM2ForCausalLM",
    fields=tuple(
        f
        for f in LLAMA_FIELDS
        if f.hf not in ("head_dim", "rms_norm_eps", "rope_parameters.rope_theta", "intermediate_size")
    )
    + (
        Field("head_dim", ("head_dim",), 128),  # MiniMaxM2Config's default, not hidden_size / heads
        Field("rms_norm_eps", ("norm.eps", "attention.qk_norm_eps"), 1e-6),
        Field("rope_parameters.rope_theta", ("positional.base",), 5e6),  # MiniMaxM2Config.default_theta
        Field("rope_parameters.partial_rotary_factor", ("positional.fraction",), 1.0),
        Field("intermediate_size", ("feed_forward.hidden",)),  # each expert's width
        Field("num_local_experts", ("feed_forward.n_experts",)),
        Field("num_experts_per_tok", ("feed_forward.top_k",)),
        Field("router_aux_loss_coef", ("feed_forward.balance_loss_weight",), 0.001),
    ),
    # RMSNorm over all heads' queries and over all keys (one weight each, q_norm and k_norm), no biases;
    # sigmoid scores, the bias for choosing, the top k renormalised
    assembly=LLAMA_ASSEMBLY
    | {
        "attention": {"name": "sdpa", "qk_norm": "across_heads"},
        "feed_forward": {"name": "moe", "scoring": "sigmoid", "expert_bias": True, "normalize_top_k": True},
    },
    requires=(
        SILU,
        Require("use_qk_norm", (True,), True, "transformers' MiniMax-M2 always normalises queries and keys"),
        Require("qk_norm_type", ("per_layer",), "per_layer", "the norms span all heads (per_layer)"),
        Require("scoring_func", ("sigmoid",), "sigmoid", "MiniMax-M2 scores experts with sigmoids"),
        Require("use_routing_bias", (True,), True, "MiniMax-M2 chooses experts with e_score_correction_bias"),
    ),
    weights=LLAMA_WEIGHTS
    + expert_weights("model.layers.{i}.block_sparse_moe", "w1", "w3", "w2")
    + (
        Weight("blocks.{i}.feed_forward.expert_bias", ("model.layers.{i}.block_sparse_moe.e_score_correction_bias",)),
        Weight("blocks.{i}.attention.qk_norm.q_norm", ("model.layers.{i}.self_attn.q_norm.weight",)),
        Weight("blocks.{i}.attention.qk_norm.k_norm", ("model.layers.{i}.self_attn.k_norm.weight",)),
    ),
    conversions=(ROPE_SCALING,),
    legacy=_minimax_m2_legacy,
)
