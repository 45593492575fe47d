"""Qwen3.5's language model (qwen3_5_text): Qwen3-Next's layers (Gated DeltaNet : gated attention) with a
dense SwiGLU in every layer and the Gated DeltaNet's projections apart (in_proj_qkv, in_proj_z,
in_proj_b, in_proj_a) instead of fused per key head.

Its rotary is Qwen3-VL's multimodal one (``mrope_section``): for text, whose three position streams are
one, it is the plain rotary on the first ``partial_rotary_factor`` of each head. The published
checkpoints wrap this model in the multimodal ``qwen3_5`` (``text_config``, tensors under
``model.language_model.``), which import does not read yet; a ``qwen3_5_text`` folder imports.
"""

from __future__ import annotations

from typing import Any

from gptzoo.recipes.interop.hf.families.base import Conversion, Family, Field, Fused, Weight
from gptzoo.recipes.interop.hf.families.llama import ROPE_SCALING, SILU
from gptzoo.recipes.interop.hf.families.qwen3_next import (
    GATED_ATTENTION_WEIGHTS,
    GATED_QUERIES,
    LINEAR,
    MTP_IGNORED,
    QWEN3_NEXT,
    hybrid_kinds,
    layer_components,
    layer_types,
    linear_kind,
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
    weights=GATED_ATTENTION_WEIGHTS
    + (
        *(
            Weight(f"blocks.{{i}}.attention.{ours}.weight", (f"{LINEAR}.in_proj_qkv.weight[{part}]",))
            for ours, part in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"))
        ),
        Weight("blocks.{i}.attention.g_proj.weight", (f"{LINEAR}.in_proj_z.weight",)),
        Weight("blocks.{i}.attention.b_proj.weight", (f"{LINEAR}.in_proj_b.weight",)),
        Weight("blocks.{i}.attention.a_proj.weight", (f"{LINEAR}.in_proj_a.weight",)),
    ),
    conversions=(Conversion(_read_layers, _write_layers), ROPE_SCALING),
    ignored=MTP_IGNORED,
    fused=(
        # all queries, then all keys, then all values: one group
        Fused(
            f"{LINEAR}.in_proj_qkv.weight", tuple(f"{LINEAR}.in_proj_qkv.weight[{p}]" for p in "qkv"), lambda m, i: 1
        ),
        *GATED_QUERIES,
    ),
)
