"""Granite 4.0 hybrids (granitemoehybrid): Mamba-2 layers (Bamba's mixer) and attention layers, each
with a mixture of experts beside an always-on shared SwiGLU (or that SwiGLU alone), and Granite's
multipliers: embeddings × embedding_multiplier, each sublayer's output × residual_multiplier before it
joins the stream, attention scores × attention_multiplier (in place of 1/√head_size), logits ÷
logits_scaling.
"""

from __future__ import annotations

import json
import math
from typing import Any

from gptzoo.recipes.interop.hf.families.base import Conversion, Family, Field, Weight, period, qkv_rows
from gptzoo.recipes.interop.hf.families.llama import SILU, read_rope_scaling, write_rope_scaling
from gptzoo.recipes.interop.hf.families.mamba import (
    BAMBA_DT_LIMIT,
    MAMBA2_MIXER,
    bamba_mixer,
    write_bamba_mixer,
)
from gptzoo.recipes.interop.hf.families.qwen3_next import layer_components

LEGACY_TYPES = {"mamba": "linear_attention", "attention": "full_attention"}  # as transformers remaps them
KINDS = {"linear_attention": "mamba", "full_attention": "attention"}


def _granite_legacy(hf: dict) -> dict:
    """Older config.json: the layers as layers_block_type, of "mamba" and "attention"."""
    hf = dict(hf)
    types = hf.get("layer_types") or hf.pop("layers_block_type", None)
    if isinstance(types, list):
        hf["layer_types"] = [LEGACY_TYPES.get(t, t) for t in types]
    return hf


def _read_layers(hf: dict) -> dict[str, Any]:
    """Mamba-2 or attention per layer_types (all Mamba-2 without it); rotary on the attention layers when
    position_embedding_type is "rope", no positions otherwise."""
    n = hf["num_hidden_layers"]
    types = hf.get("layer_types") or ["linear_attention"] * n
    if sorted(set(types) - set(KINDS)) or len(types) != n:
        raise ValueError(
            f"layer_types = {json.dumps(types)} is not supported for granitemoehybrid (gptzoo reads "
            f"{' or '.join(KINDS)} for each of the {n} layers)"
        )
    if "full_attention" not in types:  # Mamba-2 throughout: no attention to take positions
        return {"positional": {"name": "none"}, "attention": bamba_mixer(hf)}
    positional: dict[str, Any] = {"name": "none"}
    if hf.get("position_embedding_type") == "rope":
        positional = {"name": "rope", "base": hf["rope_parameters"].get("rope_theta", 10000.0)}
        scaling = read_rope_scaling(hf["rope_parameters"], hf)
        if scaling is not None:
            positional["scaling"] = scaling
    if "linear_attention" not in types:
        return {"positional": positional}
    kinds = {"mamba": {"positional": {"name": "none"}, "attention": bamba_mixer(hf)}, "attention": {}}
    return {"positional": positional, "layer_pattern": period([KINDS[t] for t in types]), "layer_kinds": kinds}


def _write_layers(model: dict) -> dict[str, Any]:
    mixers, _ = layer_components(model)
    if any(m["name"] not in ("mamba2", "sdpa") for m in mixers):
        raise ValueError("a token mixer other than mamba2 or sdpa has no granitemoehybrid counterpart")
    hf: dict[str, Any] = {
        "layer_types": ["linear_attention" if m["name"] == "mamba2" else "full_attention" for m in mixers]
    }
    positional = model["positional"]
    if positional["name"] == "rope":
        hf |= {"position_embedding_type": "rope", "rope_parameters": {"rope_theta": positional["base"]}}
        hf |= {f"rope_parameters.{k}": v for k, v in write_rope_scaling(positional.get("scaling")).items()}
    elif positional["name"] == "none":
        hf["position_embedding_type"] = "nope"
    else:
        raise ValueError(f"positional '{positional['name']}' has no granitemoehybrid counterpart (rope or none)")
    mamba = next((m for m in mixers if m["name"] == "mamba2"), None)
    return hf if mamba is None else hf | write_bamba_mixer(mamba, model)


def _read_mixture(hf: dict) -> dict[str, Any]:
    """Experts (softmax over the top k's logits) beside a shared SwiGLU shared_intermediate_size wide, or the
    shared SwiGLU alone where num_local_experts is 0."""
    shared, experts = hf.get("shared_intermediate_size", 1024), hf.get("num_local_experts", 8)
    if not experts:
        return {"feed_forward": {"name": "swiglu", "hidden": shared, "bias": False}}
    hidden = hf.get("intermediate_size", 11008)
    if shared % hidden:
        raise ValueError(
            f"shared_intermediate_size = {shared} is not supported for granitemoehybrid (gptzoo's shared expert is "
            f"a whole number of experts, {hidden} wide each: intermediate_size)"
        )
    return {
        "feed_forward": {
            "name": "moe",
            "scoring": "softmax",
            "normalize_top_k": True,
            "n_experts": experts,
            "top_k": hf.get("num_experts_per_tok", 2),
            "hidden": hidden,
            "n_shared_experts": shared // hidden,
            "balance_loss_weight": hf.get("router_aux_loss_coef", 0.001),
        }
    }


def _write_mixture(model: dict) -> dict[str, Any]:
    _, feed_forwards = layer_components(model)
    ffn = feed_forwards[0]
    if any(f != ffn for f in feed_forwards):
        raise ValueError("granitemoehybrid has one feed-forward for every layer")
    if ffn["name"] != "moe":
        return {"num_local_experts": 0, "shared_intermediate_size": ffn["hidden"]}
    return {
        "num_local_experts": ffn["n_experts"],
        "num_experts_per_tok": ffn["top_k"],
        "intermediate_size": ffn["hidden"],
        "shared_intermediate_size": ffn["n_shared_experts"] * ffn["hidden"],
        "router_aux_loss_coef": ffn["balance_loss_weight"],
    }


def _read_logits_scaling(hf: dict) -> dict[str, Any]:
    return {"head.logit_scale": 1 / hf.get("logits_scaling", 1.0)}


def _write_logits_scaling(model: dict) -> dict[str, Any]:
    """logits_scaling s with 1 / s exactly the head's logit_scale, so the export reads back as it was."""
    scale = model["head"].get("logit_scale", 1.0)
    s = 1 / scale
    return {
        "logits_scaling": next((c for c in (s, math.nextafter(s, 0), math.nextafter(s, math.inf)) if 1 / c == scale), s)
    }


def _layer(name: str) -> str:
    return f"model.layers.{{i}}.{name}"


def _shared_swiglu(prefix: str) -> tuple[Weight, ...]:
    """A SwiGLU ``prefix`` (gptzoo) <-> Granite's shared_mlp: input_linear holds the gate's rows, then the up's."""
    return (
        Weight(f"{prefix}.gate_proj.weight", (_layer("shared_mlp.input_linear.weight"),), "chunk", chunk=(0, 2)),
        Weight(f"{prefix}.up_proj.weight", (_layer("shared_mlp.input_linear.weight"),), "chunk", chunk=(1, 2)),
        Weight(f"{prefix}.out_proj.weight", (_layer("shared_mlp.output_linear.weight"),)),
    )


GRANITEMOEHYBRID = Family(
    model_type="granitemoehybrid",
    architecture="GraniteMoeHybridForCausalLM",
    fields=(
        Field("vocab_size", ("vocab_size",), 32000),
        Field("hidden_size", ("d_model",), 4096),
        Field("num_hidden_layers", ("n_layers",), 32),
        Field("num_attention_heads", ("n_heads",), 32),
        Field("num_key_value_heads", ("n_kv_heads",), lambda hf: hf.get("num_attention_heads", 32)),
        Field("max_position_embeddings", ("context_length",), 2048),
        Field("rms_norm_eps", ("norm.eps",), 1e-6),
        Field("attention_bias", ("qkv_bias", "attn_out_bias"), False),
        Field("tie_word_embeddings", ("tied_head",), False),
        Field("embedding_multiplier", ("embedding_scale",), 1.0),
        Field("residual_multiplier", ("block.branch_scale",), 1.0),
        Field("attention_multiplier", ("attention.scale",), 1.0),
    ),
    # Pre-norm layers of a Mamba-2 mixer (gated norm) or attention, then the feed-forward; the head's
    # logit_scale and the multipliers from the fields.
    assembly={
        "attention": {"name": "sdpa"},
        "norm": {"name": "rmsnorm"},
        "block": {"name": "pre_norm"},
        "head": {"name": "lm"},
    },
    requires=(SILU,),
    weights=(
        Weight("token_embedding.weight", ("model.embed_tokens.weight",)),
        Weight("blocks.{i}.attn_norm.weight", (_layer("input_layernorm.weight"),)),
        Weight("blocks.{i}.ffn_norm.weight", (_layer("post_attention_layernorm.weight"),)),
        *(
            Weight(
                f"blocks.{{i}}.attention.qkv.{p}",
                tuple(_layer(f"self_attn.{x}_proj.{p}") for x in "qkv"),
                "rows",
                qkv_rows,
            )
            for p in ("weight", "bias")
        ),
        *(
            Weight(
                f"blocks.{{i}}.attention.out_proj.{p}",
                (_layer(f"self_attn.o_proj.{p}"),),
                when="blocks.{i}.attention.qkv.weight",
            )
            for p in ("weight", "bias")
        ),
        *(Weight(f"blocks.{{i}}.attention.{name}", (_layer(f"mamba.{theirs}"),)) for name, theirs in MAMBA2_MIXER),
        Weight("blocks.{i}.feed_forward.router.weight", (_layer("block_sparse_moe.router.layer.weight"),)),
        *(
            Weight(
                f"blocks.{{i}}.feed_forward.expert_{part}",
                (_layer("block_sparse_moe.input_linear.weight"),),
                "chunk",
                chunk=(k, 2),
            )
            for k, part in enumerate(("gate", "up"))
        ),
        Weight("blocks.{i}.feed_forward.expert_out", (_layer("block_sparse_moe.output_linear.weight"),)),
        *_shared_swiglu("blocks.{i}.feed_forward.shared"),
        *_shared_swiglu("blocks.{i}.feed_forward"),
        Weight("final_norm.weight", ("model.norm.weight",)),
        Weight("head.weight", ("lm_head.weight",)),
    ),
    conversions=(
        Conversion(_read_layers, _write_layers),
        Conversion(_read_mixture, _write_mixture),
        Conversion(_read_logits_scaling, _write_logits_scaling),
        BAMBA_DT_LIMIT,
    ),
    legacy=_granite_legacy,
)
