"""MiniMax-M2: Llama's layer with QK-norm across heads, partial rotary, and sigmoid-scored experts chosen with a bias."""

from __future__ import annotations

from gptzoo.recipes.interop.hf.families.base import Family, Field, Require, Weight
from gptzoo.recipes.interop.hf.families.llama import LLAMA_ASSEMBLY, LLAMA_FIELDS, LLAMA_WEIGHTS, ROPE_SCALING, SILU
from gptzoo.recipes.interop.hf.families.moe import expert_weights


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
