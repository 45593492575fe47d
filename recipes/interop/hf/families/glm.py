"""GLM-4.5 (glm4_moe): Llama's attention with q/k/v biases, partial rotary and optional QK-norm per head,
and DeepSeek-V3's mixture (sigmoid scores, the bias for choosing, groups, shared experts, dense first layers)."""

from __future__ import annotations

from typing import Any

from gptzoo.recipes.interop.hf.families.base import Conversion, Family, Field, Weight
from gptzoo.recipes.interop.hf.families.deepseek import (
    DEEPSEEK_V3,
    DEEPSEEK_WEIGHTS,
    first_dense_layers,
    write_first_dense,
)
from gptzoo.recipes.interop.hf.families.llama import LLAMA_ASSEMBLY, LLAMA_FIELDS, LLAMA_WEIGHTS, ROPE_SCALING
from gptzoo.recipes.interop.hf.families.moe import dense_layers
from gptzoo.recipes.interop.hf.families.mtp import DEEPSEEK_MTP, MTP_CONVERSION, SHARED_COPIES, mtp_weights


def _read_qk_norm(hf: dict) -> dict[str, Any]:
    return {"attention.qk_norm": "per_head"} if hf.get("use_qk_norm", False) else {}


def _write_qk_norm(model: dict) -> dict[str, Any]:
    return {"use_qk_norm": model["attention"].get("qk_norm", "none") == "per_head"}


GLM4_MOE_WEIGHTS = (
    LLAMA_WEIGHTS
    + tuple(
        w
        for w in DEEPSEEK_WEIGHTS
        if w.ours.startswith("blocks.{i}.feed_forward.") and w.ours not in {x.ours for x in LLAMA_WEIGHTS}
    )
    + (
        Weight("blocks.{i}.attention.qk_norm.q_norm", ("model.layers.{i}.self_attn.q_norm.weight",)),
        Weight("blocks.{i}.attention.qk_norm.k_norm", ("model.layers.{i}.self_attn.k_norm.weight",)),
    )
)

GLM4_MOE = Family(
    model_type="glm4_moe",
    architecture="Glm4MoeForCausalLM",
    fields=tuple(f for f in LLAMA_FIELDS if f.hf not in ("intermediate_size", "rms_norm_eps"))
    + (
        Field("rms_norm_eps", ("norm.eps", "attention.qk_norm_eps"), 1e-5),
        Field("attention_bias", ("qkv_bias",), False),  # on q, k and v; o_proj has none
        Field("rope_parameters.partial_rotary_factor", ("positional.fraction",), 0.5),  # the first half rotates
        Field("moe_intermediate_size", ("feed_forward.hidden",)),
        Field("n_routed_experts", ("feed_forward.n_experts",)),
        Field("num_experts_per_tok", ("feed_forward.top_k",)),
        Field("n_shared_experts", ("feed_forward.n_shared_experts",), 1),
        Field("routed_scaling_factor", ("feed_forward.routed_scale",), 1.0),
        Field("n_group", ("feed_forward.n_groups",), 1),
        Field("topk_group", ("feed_forward.top_groups",), 1),
        Field("norm_topk_prob", ("feed_forward.normalize_top_k",), True),
    ),
    assembly={k: v for k, v in LLAMA_ASSEMBLY.items() if k != "qkv_bias"}
    | {"feed_forward": {"name": "moe", "scoring": "sigmoid", "expert_bias": True}},
    requires=tuple(r for r in DEEPSEEK_V3.requires if r.hf in ("hidden_act", "quantization_config")),
    weights=GLM4_MOE_WEIGHTS + mtp_weights(GLM4_MOE_WEIGHTS),
    conversions=(
        dense_layers(first_dense_layers, write_first_dense),
        Conversion(_read_qk_norm, _write_qk_norm),
        ROPE_SCALING,
        MTP_CONVERSION,
    ),
    # its multi-token-prediction layer (layer num_hidden_layers: 46 of GLM-4.5-Air) is DeepSeek-V3's: model.mtp
    # when the checkpoint holds it, its copies of the embedding and head read as the model's (families/mtp.py)
    ignored=r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq|" + SHARED_COPIES,
    mtp=DEEPSEEK_MTP,
)
