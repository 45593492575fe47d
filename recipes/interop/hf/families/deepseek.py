"""DeepSeek-V3: latent attention, grouped sigmoid-scored experts with shared ones, DeepSeek's YaRN."""

from __future__ import annotations

import math
from typing import Any

from gptzoo.recipes.interop.hf.families.base import Conversion, Family, Field, Require, Weight
from gptzoo.recipes.interop.hf.families.llama import LLAMA_ASSEMBLY, LLAMA_FIELDS, LLAMA_WEIGHTS, SILU
from gptzoo.recipes.interop.hf.families.moe import dense_layers, expert_weights
from gptzoo.recipes.interop.hf.families.mtp import DEEPSEEK_MTP, MTP_CONVERSION, SHARED_COPIES, mtp_weights


def first_dense_layers(hf: dict) -> list[int]:
    """The first ``first_k_dense_replace`` layers, which keep a dense feed-forward (DeepSeek-V3, GLM-4.5)."""
    return list(range(min(hf.get("first_k_dense_replace") or 0, hf["num_hidden_layers"])))


def write_first_dense(layers: list[int], n: int) -> dict[str, Any]:
    if layers != list(range(len(layers))):
        raise ValueError(
            f"first_k_dense_replace keeps dense feed-forwards in the first layers only; these are {layers}"
        )
    return {"first_k_dense_replace": len(layers)}


def _yarn_mscale(factor: float, mscale: float) -> float:
    return 0.1 * mscale * math.log(factor) + 1.0


def _read_deepseek_rope(hf: dict) -> dict[str, Any]:
    """Interleaved rotary pairs (``rope_interleave``), and DeepSeek's YaRN: the frequencies as
    YaRN's, cos and sin unscaled (``mscale`` = ``mscale_all_dim``: their ratio is 1), and the
    scores multiplied by mscale(factor, mscale_all_dim)² through the latent attention's scale."""
    found: dict[str, Any] = {"positional.layout": "interleaved" if hf.get("rope_interleave", True) else "halves"}
    rope = hf["rope_parameters"]
    if rope.get("rope_type") != "yarn":
        return found
    factor, mscale, all_dim = rope["factor"], rope.get("mscale") or 0, rope.get("mscale_all_dim") or 0
    if mscale != all_dim or rope.get("attention_factor") is not None:
        raise ValueError(
            f"rope_parameters: mscale = {mscale} with mscale_all_dim = {all_dim} is not supported for deepseek_v3 (gptzoo reads equal ones, DeepSeek-V3's 1.0 and 1.0, and no attention_factor)"
        )
    qk_head_dim = hf.get("qk_nope_head_dim", 128) + hf.get("qk_rope_head_dim", 64)
    return found | {
        "positional.scaling": {
            "type": "yarn",
            "factor": factor,
            "original_context_length": rope["original_max_position_embeddings"],
            "beta_fast": rope.get("beta_fast") or 32.0,
            "beta_slow": rope.get("beta_slow") or 1.0,
            "attention_factor": 1.0,
            "truncate": rope.get("truncate", True),
        },
        "attention.scale": qk_head_dim**-0.5 * _yarn_mscale(factor, all_dim) ** 2,
    }


def _write_deepseek_rope(model: dict) -> dict[str, Any]:
    positional, attention = model["positional"], model["attention"]
    written: dict[str, Any] = {"rope_interleave": positional.get("layout", "halves") == "interleaved"}
    scaling = positional.get("scaling")
    if (
        not scaling
        or scaling.get("type") != "yarn"
        or scaling.get("attention_factor") != 1.0
        or attention.get("scale") is None
    ):
        return written
    qk_head_dim = (attention.get("qk_nope_head_dim") or 2 * model["head_dim"]) + model["head_dim"]
    mscale = round((math.sqrt(attention["scale"] * qk_head_dim**0.5) - 1) / (0.1 * math.log(scaling["factor"])), 12)
    return written | {
        "rope_parameters": {
            "rope_type": "yarn",
            "rope_theta": positional["base"],
            "factor": scaling["factor"],
            "original_max_position_embeddings": scaling["original_context_length"],
            "beta_fast": scaling["beta_fast"],
            "beta_slow": scaling["beta_slow"],
            "mscale": mscale,
            "mscale_all_dim": mscale,
            "truncate": scaling["truncate"],
        }
    }


DEEPSEEK_WEIGHTS = (
    tuple(w for w in LLAMA_WEIGHTS if ".attention." not in w.ours)
    + expert_weights("model.layers.{i}.mlp", "gate_proj", "up_proj", "down_proj")
    + tuple(
        Weight(
            f"blocks.{{i}}.feed_forward.shared.{ours}.weight",
            (f"model.layers.{{i}}.mlp.shared_experts.{theirs}.weight",),
        )
        for ours, theirs in (("gate_proj", "gate_proj"), ("up_proj", "up_proj"), ("out_proj", "down_proj"))
    )
    + (Weight("blocks.{i}.feed_forward.expert_bias", ("model.layers.{i}.mlp.gate.e_score_correction_bias",)),)
    + tuple(
        Weight(f"blocks.{{i}}.attention.{name}", (f"model.layers.{{i}}.self_attn.{name}",))
        for name in (
            "q_proj.weight",
            "q_a_proj.weight",
            "q_a_layernorm.weight",
            "q_b_proj.weight",
            "kv_a_proj_with_mqa.weight",
            "kv_a_layernorm.weight",
            "kv_b_proj.weight",
        )
    )
    + (Weight("blocks.{i}.attention.out_proj.weight", ("model.layers.{i}.self_attn.o_proj.weight",)),)
)


DEEPSEEK_V3 = Family(
    model_type="deepseek_v3",
    architecture="DeepseekV3ForCausalLM",
    fields=tuple(f for f in LLAMA_FIELDS if f.hf not in ("head_dim", "intermediate_size", "rms_norm_eps"))
    + (
        Field("qk_rope_head_dim", ("head_dim",), 64),  # the rotary part's width, which gptzoo's rope is built for
        Field("rms_norm_eps", ("norm.eps",), 1e-6),
        Field("q_lora_rank", ("attention.q_lora_rank",), None),
        Field("kv_lora_rank", ("attention.kv_lora_rank",), 512),
        Field("qk_nope_head_dim", ("attention.qk_nope_head_dim",), 128),
        Field("v_head_dim", ("attention.v_head_dim",), 128),
        Field("moe_intermediate_size", ("feed_forward.hidden",)),
        Field("n_routed_experts", ("feed_forward.n_experts",)),
        Field("num_experts_per_tok", ("feed_forward.top_k",)),
        Field("n_shared_experts", ("feed_forward.n_shared_experts",), 1),
        Field("routed_scaling_factor", ("feed_forward.routed_scale",), 2.5),
        Field("n_group", ("feed_forward.n_groups",), 8),
        Field("topk_group", ("feed_forward.top_groups",), 4),
        Field("norm_topk_prob", ("feed_forward.normalize_top_k",), True),
    ),
    # sigmoid scores with the bias for choosing only (DeepSeek-V3's noaux_tc); no z-loss or balance loss in its config
    assembly=LLAMA_ASSEMBLY
    | {"attention": {"name": "latent"}, "feed_forward": {"name": "moe", "scoring": "sigmoid", "expert_bias": True}},
    requires=(
        SILU,
        Require(
            "rope_parameters.rope_type",
            ("default", "yarn"),
            "default",
            "gptzoo's rope reads no other frequency scaling for DeepSeek-V3 yet",
        ),
        Require(
            "attention_bias", (False,), False, "gptzoo's latent attention puts q_proj's bias where DeepSeek has none"
        ),
        Require("scoring_func", ("sigmoid",), "sigmoid", "DeepSeek-V3 scores experts with sigmoids"),
        Require(
            "topk_method", ("noaux_tc",), "noaux_tc", "DeepSeek-V3 chooses experts with the bias and groups (noaux_tc)"
        ),
        Require("moe_layer_freq", (1,), 1, "every layer after the first dense ones has experts"),
        Require(
            "quantization_config",
            (None,),
            None,
            "the weights must be floating point; dequantize the checkpoint (DeepSeek-V3's FP8, Kimi K2-Thinking's int4) to bf16 first",
        ),
    ),
    weights=DEEPSEEK_WEIGHTS + mtp_weights(DEEPSEEK_WEIGHTS),
    conversions=(
        dense_layers(first_dense_layers, write_first_dense),
        Conversion(_read_deepseek_rope, _write_deepseek_rope),
        MTP_CONVERSION,
    ),
    # the MTP layers' copies of the embedding and head, which gptzoo shares with the model (families/mtp.py)
    ignored=r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq|" + SHARED_COPIES,
    mtp=DEEPSEEK_MTP,
)
