"""OLMo 2: Llama's layer with the norms on each sublayer's output and QK-norm across heads."""

from __future__ import annotations

from gptzoo.recipes.interop.hf.families.base import Family, Field, Weight
from gptzoo.recipes.interop.hf.families.llama import LLAMA_ASSEMBLY, LLAMA_FIELDS, LLAMA_WEIGHTS, ROPE_SCALING, SILU

OLMO2 = Family(
    model_type="olmo2",
    architecture="Olmo2ForCausalLM",
    fields=tuple(f for f in LLAMA_FIELDS if f.hf not in ("head_dim", "rms_norm_eps"))
    + (
        Field("rms_norm_eps", ("norm.eps", "attention.qk_norm_eps"), 1e-5),
        Field("attention_bias", ("qkv_bias", "attn_out_bias"), False),
    ),
    # The norms act on each sublayer's output; QK-norm over all heads' features together.
    assembly={k: v for k, v in LLAMA_ASSEMBLY.items() if k not in ("qkv_bias", "attn_out_bias")}
    | {"block": {"name": "sublayer_output_norm"}, "attention": {"name": "sdpa", "qk_norm": "across_heads"}},
    requires=(SILU,),
    conversions=(ROPE_SCALING,),
    weights=tuple(w for w in LLAMA_WEIGHTS if not w.ours.startswith(("blocks.{i}.attn_norm", "blocks.{i}.ffn_norm")))
    + (
        Weight("blocks.{i}.attn_norm.weight", ("model.layers.{i}.post_attention_layernorm.weight",)),
        Weight("blocks.{i}.ffn_norm.weight", ("model.layers.{i}.post_feedforward_layernorm.weight",)),
        Weight("blocks.{i}.attention.qk_norm.q_norm", ("model.layers.{i}.self_attn.q_norm.weight",)),
        Weight("blocks.{i}.attention.qk_norm.k_norm", ("model.layers.{i}.self_attn.k_norm.weight",)),
    ),
)
