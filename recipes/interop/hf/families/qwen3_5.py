"""Qwen3.5's language models: Qwen3-Next's layers (Gated DeltaNet : gated attention) with the Gated
DeltaNet's projections apart (in_proj_qkv, in_proj_z, in_proj_b, in_proj_a) instead of fused per key
head; a dense SwiGLU in every layer (qwen3_5_text) or Qwen3-Next's experts with the sigmoid-gated
shared expert, top k always renormalised (qwen3_5_moe_text).

Its rotary is Qwen3-VL's multimodal one (``mrope_section``): for text, whose three position streams are
one, it is the plain rotary on the first ``partial_rotary_factor`` of each head. The published
checkpoints wrap this model in the multimodal ``qwen3_5`` / ``qwen3_5_moe``: import reads the language model
(``text_config``, tied as the wrapper's ``tie_word_embeddings`` says; its tensors under ``model.language_model.``)
and leaves the vision encoder (``model.visual.*``) out; export writes the text-only model type. Their
multi-token-prediction module is Qwen3-Next's (``mtp.*``): model.mtp when the checkpoint holds it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from gptzoo.recipes.interop.hf.families.base import MISSING, Conversion, Family, Field, Fused, Weight
from gptzoo.recipes.interop.hf.families.llama import ROPE_SCALING, SILU
from gptzoo.recipes.interop.hf.families.mtp import QWEN3_NEXT_OWN, mtp_conversion, mtp_weights
from gptzoo.recipes.interop.hf.families.qwen3_next import (
    GATED_ATTENTION_WEIGHTS,
    GATED_QUERIES,
    GATED_SHARED_EXPERT_WEIGHTS,
    LINEAR,
    MTP,
    MTP_EMBEDDING,
    MTP_QUERIES,
    QWEN3_NEXT,
    hybrid_kinds,
    layer_components,
    layer_types,
    linear_kind,
    mixture,
    write_linear_layers,
)


def _read_layers(hf: dict) -> dict[str, Any]:
    """Gated DeltaNet or gated attention per layer_types, each layer with the model's SwiGLU."""
    types = layer_types(hf)
    return hybrid_kinds(types, set(), linear_kind(hf), {})


def _write_layers(model: dict) -> dict[str, Any]:
    _, feed_forwards = layer_components(model)
    if any(f["name"] != "swiglu" or f != feed_forwards[0] for f in feed_forwards):
        raise ValueError("qwen3_5_text has one SwiGLU for every layer")
    return write_linear_layers(model, "qwen3_5_text")


def _read_moe_layers(hf: dict) -> dict[str, Any]:
    """Gated DeltaNet or gated attention per layer_types, each layer with the experts (top k renormalised:
    Qwen3.5-MoE's router always does)."""
    return hybrid_kinds(layer_types(hf), set(), linear_kind(hf), {}) | {
        "feed_forward": mixture(hf) | {"normalize_top_k": True}
    }


def _write_moe_layers(model: dict) -> dict[str, Any]:
    _, feed_forwards = layer_components(model)
    moe = feed_forwards[0]
    if any(f["name"] != "moe" or f != moe for f in feed_forwards) or not moe["normalize_top_k"]:
        raise ValueError("qwen3_5_moe_text has one mixture of experts, top k renormalised, for every layer")
    return write_linear_layers(model, "qwen3_5_moe_text") | {
        "num_experts": moe["n_experts"],
        "num_experts_per_tok": moe["top_k"],
        "moe_intermediate_size": moe["hidden"],
        "shared_expert_intermediate_size": moe["n_shared_experts"] * moe["hidden"],
        "router_aux_loss_coef": moe["balance_loss_weight"],
    }


# the Gated DeltaNet's projections apart; in_proj_qkv holds all queries, then all keys, then all values
UNFUSED_LINEAR_WEIGHTS = (
    *(
        Weight(f"blocks.{{i}}.attention.{ours}.weight", (f"{LINEAR}.in_proj_qkv.weight[{part}]",))
        for ours, part in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"))
    ),
    Weight("blocks.{i}.attention.g_proj.weight", (f"{LINEAR}.in_proj_z.weight",)),
    Weight("blocks.{i}.attention.b_proj.weight", (f"{LINEAR}.in_proj_b.weight",)),
    Weight("blocks.{i}.attention.a_proj.weight", (f"{LINEAR}.in_proj_a.weight",)),
)


def with_mtp(weights: tuple[Weight, ...]) -> tuple[Weight, ...]:
    """``weights`` and the multi-token-prediction module's, Qwen3-Next's layout (``mtp.*``): a gated attention layer."""
    layer = tuple(w for w in weights if not any(t.startswith(LINEAR) for t in w.theirs))
    return weights + mtp_weights(layer, QWEN3_NEXT_OWN, "mtp.layers.{i}.") + MTP_EMBEDDING


UNFUSED_QKV = Fused(
    f"{LINEAR}.in_proj_qkv.weight", tuple(f"{LINEAR}.in_proj_qkv.weight[{p}]" for p in "qkv"), lambda m, i: 1
)

QWEN3_5_TEXT = Family(
    model_type="qwen3_5_text",
    architecture="Qwen3_5ForCausalLM",
    fields=tuple(f for f in QWEN3_NEXT.fields if f.hf not in ("vocab_size", "hidden_size", "num_hidden_layers"))
    + (
        Field("vocab_size", ("vocab_size",), 248320),
        Field("hidden_size", ("d_model",), 4096),
        Field("num_hidden_layers", ("n_layers",), 32),
        Field("intermediate_size", ("feed_forward.hidden",), 12288),
    ),
    assembly=QWEN3_NEXT.assembly | {"feed_forward": {"name": "swiglu", "bias": False}},
    requires=(SILU,),
    weights=with_mtp(GATED_ATTENTION_WEIGHTS + UNFUSED_LINEAR_WEIGHTS),
    conversions=(Conversion(_read_layers, _write_layers), ROPE_SCALING, mtp_conversion(MTP)),
    fused=(UNFUSED_QKV, *GATED_QUERIES, *MTP_QUERIES),
    mtp=MTP,
)

QWEN3_5_MOE_TEXT = Family(
    model_type="qwen3_5_moe_text",
    architecture="Qwen3_5MoeForCausalLM",
    fields=tuple(f for f in QWEN3_NEXT.fields if f.hf not in ("vocab_size", "num_hidden_layers"))
    + (Field("vocab_size", ("vocab_size",), 248320), Field("num_hidden_layers", ("n_layers",), 40)),
    assembly=QWEN3_NEXT.assembly,
    requires=(SILU,),
    weights=with_mtp(GATED_ATTENTION_WEIGHTS + UNFUSED_LINEAR_WEIGHTS + GATED_SHARED_EXPERT_WEIGHTS),
    conversions=(Conversion(_read_moe_layers, _write_moe_layers), ROPE_SCALING, mtp_conversion(MTP)),
    fused=(UNFUSED_QKV, *GATED_QUERIES, *MTP_QUERIES),
    mtp=MTP,
)


# ---- the multimodal checkpoints' language model ---------------------------------------------------

VISION_TENSORS = r"model\.visual\..*"


def _language_model(family: Family) -> Family:
    """``family`` as the multimodal checkpoints hold it: the base model's tensors under model.language_model., the
    vision encoder's left out. Its model_type stays the text model's, which export writes."""

    def inner(name: str) -> str:
        return name.replace("model.", "model.language_model.", 1) if name.startswith("model.") else name

    return replace(
        family,
        weights=tuple(replace(w, theirs=tuple(inner(t) for t in w.theirs)) for w in family.weights),
        fused=tuple(replace(f, name=inner(f.name), parts=tuple(inner(p) for p in f.parts)) for f in family.fused),
        prefix="model.language_model.",
        ignored=f"{family.ignored}|{VISION_TENSORS}",
    )


# a multimodal config.json's model_type -> its language model's family, as its checkpoints hold it
MULTIMODAL = {"qwen3_5": _language_model(QWEN3_5_TEXT), "qwen3_5_moe": _language_model(QWEN3_5_MOE_TEXT)}


def text_part(hf: dict) -> dict | None:
    """A multimodal config.json's language model (text_config, with the wrapper's tie_word_embeddings, which
    transformers ties by); None for another config.json. ValueError without text_config."""
    family = MULTIMODAL.get(hf.get("model_type"))
    if family is None:
        return None
    text = hf.get("text_config", MISSING)
    if not isinstance(text, dict):
        raise ValueError(f"text_config missing; a {hf['model_type']} config.json holds its language model's there")
    return text | {"model_type": family.model_type, "tie_word_embeddings": hf.get("tie_word_embeddings", False)}
