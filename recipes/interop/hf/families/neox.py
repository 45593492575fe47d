"""GPT-NeoX (Pythia): parallel attention and MLP, a fused per-head query-key-value projection."""

from __future__ import annotations

import json
from typing import Any

from gptzoo.recipes.interop.hf.families.base import Conversion, Family, Field, Weight
from gptzoo.recipes.interop.hf.families.llama import ROPE_SCALING


def _neox_legacy(hf: dict) -> dict:
    """Older GPT-NeoX configs name the rotary base rotary_emb_base and its fraction rotary_pct."""
    renamed = {"rotary_emb_base": "rope_theta", "rotary_pct": "partial_rotary_factor"}
    return hf | {new: hf[old] for old, new in renamed.items() if hf.get(old) is not None and new not in hf}


GELU_APPROXIMATION = {
    "gelu": "none",
    "gelu_pytorch_tanh": "tanh",
    "gelu_new": "tanh",
}  # hidden_act -> the gelu plugin's approximate


def _read_neox(hf: dict) -> dict[str, Any]:
    act = hf.get("hidden_act", "gelu")
    if act not in GELU_APPROXIMATION:
        raise ValueError(
            f"hidden_act = {json.dumps(act)} is not supported for gpt_neox (gptzoo reads {' or '.join(GELU_APPROXIMATION)})"
        )
    # use_parallel_residual: attention and the MLP read the same input, each through its own norm
    return {
        "feed_forward.approximate": GELU_APPROXIMATION[act],
        "block": {"name": "parallel"} if hf.get("use_parallel_residual", True) else {"name": "pre_norm"},
    }


def _write_neox(model: dict) -> dict[str, Any]:
    return {
        "hidden_act": "gelu" if model["feed_forward"].get("approximate") == "none" else "gelu_pytorch_tanh",
        "use_parallel_residual": model["block"]["name"] != "pre_norm",
    }


GPT_NEOX = Family(
    model_type="gpt_neox",
    architecture="GPTNeoXForCausalLM",
    fields=(
        Field("vocab_size", ("vocab_size",)),
        Field("hidden_size", ("d_model",)),
        Field("num_hidden_layers", ("n_layers",)),
        Field("num_attention_heads", ("n_heads",)),
        Field("max_position_embeddings", ("context_length",)),
        Field("intermediate_size", ("feed_forward.hidden",)),
        Field("layer_norm_eps", ("norm.eps",), 1e-5),
        Field("rope_parameters.rope_theta", ("positional.base",), 10000.0),
        Field("rope_parameters.partial_rotary_factor", ("positional.fraction",), 0.25),
        Field("tie_word_embeddings", ("tied_head",), False),
        Field("attention_bias", ("qkv_bias", "attn_out_bias"), True),
    ),
    assembly={
        "positional": {"name": "rope"},  # the halves layout, the first rotary_pct of each head
        "feed_forward": {"name": "gelu", "bias": True},
        "norm": {"name": "layernorm", "bias": True},
        "head": {"name": "lm"},
    },
    requires=(),
    weights=(
        Weight("token_embedding.weight", ("gpt_neox.embed_in.weight",)),
        Weight("blocks.{i}.attn_norm.weight", ("gpt_neox.layers.{i}.input_layernorm.weight",)),
        Weight("blocks.{i}.attn_norm.bias", ("gpt_neox.layers.{i}.input_layernorm.bias",)),
        Weight("blocks.{i}.ffn_norm.weight", ("gpt_neox.layers.{i}.post_attention_layernorm.weight",)),
        Weight("blocks.{i}.ffn_norm.bias", ("gpt_neox.layers.{i}.post_attention_layernorm.bias",)),
        Weight(
            "blocks.{i}.attention.qkv.weight", ("gpt_neox.layers.{i}.attention.query_key_value.weight",), "per_head"
        ),
        Weight("blocks.{i}.attention.qkv.bias", ("gpt_neox.layers.{i}.attention.query_key_value.bias",), "per_head"),
        Weight("blocks.{i}.attention.out_proj.weight", ("gpt_neox.layers.{i}.attention.dense.weight",)),
        Weight("blocks.{i}.attention.out_proj.bias", ("gpt_neox.layers.{i}.attention.dense.bias",)),
        Weight("blocks.{i}.feed_forward.in_proj.weight", ("gpt_neox.layers.{i}.mlp.dense_h_to_4h.weight",)),
        Weight("blocks.{i}.feed_forward.in_proj.bias", ("gpt_neox.layers.{i}.mlp.dense_h_to_4h.bias",)),
        Weight("blocks.{i}.feed_forward.out_proj.weight", ("gpt_neox.layers.{i}.mlp.dense_4h_to_h.weight",)),
        Weight("blocks.{i}.feed_forward.out_proj.bias", ("gpt_neox.layers.{i}.mlp.dense_4h_to_h.bias",)),
        Weight("final_norm.weight", ("gpt_neox.final_layer_norm.weight",)),
        Weight("final_norm.bias", ("gpt_neox.final_layer_norm.bias",)),
        Weight("head.weight", ("embed_out.weight",)),  # transformers 5 calls it lm_head in memory, embed_out on disk
    ),
    conversions=(Conversion(_read_neox, _write_neox), ROPE_SCALING),
    prefix="gpt_neox.",
    legacy=_neox_legacy,
    ignored=r"(gpt_neox\.)?layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)",  # buffers of older checkpoints
)
