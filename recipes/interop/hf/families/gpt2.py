"""GPT-2: learned positions, a GELU MLP, Conv1D weights stored transposed."""

from __future__ import annotations

from gptzoo.recipes.interop.hf.families.base import Family, Field, Require, Weight

GPT2 = Family(
    model_type="gpt2",
    architecture="GPT2LMHeadModel",
    fields=(
        Field("vocab_size", ("vocab_size",)),
        Field("n_embd", ("d_model",)),
        Field("n_layer", ("n_layers",)),
        Field("n_head", ("n_heads",)),
        Field("n_positions", ("context_length",)),
        Field("n_inner", ("feed_forward.hidden",), None),
        Field("layer_norm_epsilon", ("norm.eps",), 1e-5),
    ),
    assembly={
        "positional": {"name": "learned"},
        "feed_forward": {"name": "gelu", "bias": True},
        "norm": {"name": "layernorm", "bias": True},
        "block": {"name": "pre_norm"},
        "head": {"name": "lm"},
        "qkv_bias": True,
        "attn_out_bias": True,
        "tied_head": True,
    },
    requires=(
        Require("activation_function", ("gelu_new", "gelu_pytorch_tanh"), "gelu_new", "GPT-2's MLP uses the tanh-GELU"),
        Require("scale_attn_weights", (True,), True, "attention scores are scaled by 1/sqrt(head size)"),
        Require("scale_attn_by_inverse_layer_idx", (False,), False, "no per-layer score scaling"),
        Require("reorder_and_upcast_attn", (False,), False, "no reordered upcast attention"),
        Require("tie_word_embeddings", (True,), True, "GPT-2 ties its LM head to the token embedding"),
        Require("add_cross_attention", (False,), False, "GPT-2 is decoder-only"),
    ),
    weights=(
        Weight("token_embedding.weight", ("transformer.wte.weight",)),
        Weight("positional.table.weight", ("transformer.wpe.weight",)),
        Weight("blocks.{i}.attn_norm.weight", ("transformer.h.{i}.ln_1.weight",)),
        Weight("blocks.{i}.attn_norm.bias", ("transformer.h.{i}.ln_1.bias",)),
        Weight("blocks.{i}.attention.qkv.weight", ("transformer.h.{i}.attn.c_attn.weight",), "transposed"),
        Weight("blocks.{i}.attention.qkv.bias", ("transformer.h.{i}.attn.c_attn.bias",)),
        Weight("blocks.{i}.attention.out_proj.weight", ("transformer.h.{i}.attn.c_proj.weight",), "transposed"),
        Weight("blocks.{i}.attention.out_proj.bias", ("transformer.h.{i}.attn.c_proj.bias",)),
        Weight("blocks.{i}.ffn_norm.weight", ("transformer.h.{i}.ln_2.weight",)),
        Weight("blocks.{i}.ffn_norm.bias", ("transformer.h.{i}.ln_2.bias",)),
        Weight("blocks.{i}.feed_forward.in_proj.weight", ("transformer.h.{i}.mlp.c_fc.weight",), "transposed"),
        Weight("blocks.{i}.feed_forward.in_proj.bias", ("transformer.h.{i}.mlp.c_fc.bias",)),
        Weight("blocks.{i}.feed_forward.out_proj.weight", ("transformer.h.{i}.mlp.c_proj.weight",), "transposed"),
        Weight("blocks.{i}.feed_forward.out_proj.bias", ("transformer.h.{i}.mlp.c_proj.bias",)),
        Weight("final_norm.weight", ("transformer.ln_f.weight",)),
        Weight("final_norm.bias", ("transformer.ln_f.bias",)),
        Weight("head.weight", ("lm_head.weight",)),
    ),
    prefix="transformer.",
    ignored=r"(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)",  # causal-mask buffers of older checkpoints
)
