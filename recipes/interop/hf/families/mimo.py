"""MiMo-V2-Flash: Llama's layer with windowed and full attention layers mixed (the first and every 6th full), the
windowed ones with twice the key/value heads and a sink logit per head, values narrower than queries and keys and
scaled by attention_value_scale, a rotary per kind of layer on part of each head, and DeepSeek-V3's sigmoid-scored
experts in all but the dense layers of mlp_layer_types.

The published checkpoint also holds three multi-token-prediction modules (``model.mtp.layers.{0,1,2}``,
``num_nextn_predict_layers``), which transformers skips: each a windowed layer with sinks and a dense SwiGLU
between DeepSeek-V3's enorm, hnorm, eh_proj and a final norm, the embedding and head the model's. Import keeps
them as ``model.mtp`` (blocks of the kind ``sliding_dense``, chained by their normalised outputs) when the
checkpoint holds them, and export writes them back."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from gptzoo.core import Dims
from gptzoo.recipes.interop.hf.families.base import Conversion, Family, Field, MtpLayout, Require, Weight, period
from gptzoo.recipes.interop.hf.families.llama import LLAMA_ASSEMBLY, LLAMA_FIELDS, LLAMA_WEIGHTS, SILU
from gptzoo.recipes.interop.hf.families.moe import expert_weights
from gptzoo.recipes.interop.hf.families.mtp import mtp_conversion, mtp_weights

ATTENTION_TYPES = ("full_attention", "sliding_attention")
MLP_TYPES = ("dense", "sparse")
ROTARY = {  # MiMoV2FlashConfig's rotary per kind of layer where config.json leaves it out
    "full_attention": {"rope_type": "default", "rope_theta": 5_000_000.0, "partial_rotary_factor": 0.334},
    "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0, "partial_rotary_factor": 0.334},
}


def _rotary(hf: dict, kind: str) -> dict[str, Any]:
    rope = hf["rope_parameters"].get(kind) or ROTARY[kind]
    if rope.get("rope_type", "default") != "default":
        raise ValueError(
            f"rope_parameters.{kind}.rope_type = {json.dumps(rope['rope_type'])} is not supported for mimo_v2_flash "
            '(gptzoo reads "default")'
        )
    return {
        "name": "rope",
        "base": rope.get("rope_theta", ROTARY[kind]["rope_theta"]),
        "fraction": rope.get("partial_rotary_factor", 0.334),
    }


def _layer_types(hf: dict, key: str, allowed: tuple[str, ...], default: list[str]) -> list[str]:
    n = hf["num_hidden_layers"]
    types = hf.get(key) or default
    if len(types) != n or not set(types) <= set(allowed):
        raise ValueError(
            f"{key} = {json.dumps(types)} is not supported: gptzoo reads {n} entries of {' or '.join(allowed)}"
        )
    return types


def _read_layers(hf: dict) -> dict[str, Any]:
    n = hf["num_hidden_layers"]
    attention = _layer_types(
        hf,
        "layer_types",
        ATTENTION_TYPES,
        ["full_attention" if i == 0 or not (i + 1) % 6 else "sliding_attention" for i in range(n)],
    )
    mlp = _layer_types(hf, "mlp_layer_types", MLP_TYPES, ["dense"] + ["sparse"] * (n - 1))
    if not isinstance(hf["rope_parameters"], dict) or set(hf["rope_parameters"]) - {*ATTENTION_TYPES, "rope_type"}:
        raise ValueError(
            f"rope_parameters = {json.dumps(hf['rope_parameters'])} is not supported for mimo_v2_flash "
            "(gptzoo reads one rotary per kind of layer: full_attention and sliding_attention)"
        )
    table: dict[str, Any] = {
        "positional": _rotary(hf, "full_attention"),
        "attention.value_scale": _value_scale(hf),
    }
    kinds = [
        f"{'sliding' if a == 'sliding_attention' else 'full'}_{'dense' if m == 'dense' else 'moe'}"
        for a, m in zip(attention, mlp, strict=True)
    ]
    if len(set(kinds)) == 1 and kinds[0] == "full_moe":
        return table
    parts = _kind_parts(hf, "sliding_attention layers" if "sliding_attention" in attention else None)
    return table | {
        "layer_pattern": period(kinds),
        "layer_kinds": {kind: parts[kind.split("_")[0]] | parts[kind.split("_")[1]] for kind in kinds},
    }


def _value_scale(hf: dict) -> float:
    scale = hf.get("attention_value_scale", 0.707)
    return 1.0 if scale is None else scale  # null: transformers scales by 1


def _kind_parts(hf: dict, windowed: str | None) -> dict[str, dict]:
    """The parts of MiMo's layer kinds: a windowed layer's and a dense one's (``windowed``: the layers that need the
    window, named in the refusal of a null one; None: no layer does)."""
    window = hf.get("sliding_window", 129)
    if window is None and windowed is not None:
        raise ValueError(f"sliding_window = null is not supported for mimo_v2_flash's {windowed}")
    sliding = {
        "attention": {
            "name": "sliding_window",
            "window": window,
            "sinks": True,
            "v_head_size": hf.get("v_head_dim", 128),
            "value_scale": _value_scale(hf),
        },
        "n_kv_heads": 2 * hf.get("num_key_value_heads", 4),  # the windowed layers have twice the key/value heads
        "positional": _rotary(hf, "sliding_attention"),
    }
    dense = {"feed_forward": {"name": "swiglu", "hidden": hf.get("intermediate_size", 16384), "bias": False}}
    return {"sliding": sliding, "full": {}, "dense": dense, "moe": {}}


MTP_KIND = "sliding_dense"


def _read_mtp(hf: dict, table: dict) -> dict[str, Any]:
    """MiMo-V2-Flash's MTP blocks are windowed layers with sinks and a dense SwiGLU (vLLM's and SGLang's
    MiMoV2 MTP layers: swa_* attention, intermediate_size), the kind ``sliding_dense``, which the table gains
    where its layers have none; its modules chain their normalised outputs, as those loops draft with them."""
    parts = _kind_parts(hf, "MTP layers (windowed)")
    table.setdefault("layer_kinds", {})[MTP_KIND] = parts["sliding"] | parts["dense"]
    return {"layer_kind": MTP_KIND, "chain_normed": True}


def _write_layers(model: dict) -> dict[str, Any]:
    pattern, kinds = model.get("layer_pattern") or [], model.get("layer_kinds") or {}
    chosen = [kinds[pattern[i % len(pattern)]] if pattern else {} for i in range(model["n_layers"])]
    attention = [c.get("attention") or model["attention"] for c in chosen]
    sliding = [i for i, a in enumerate(attention) if a["name"] == "sliding_window"]
    for i in sliding:
        if chosen[i].get("n_kv_heads") != 2 * model["n_kv_heads"]:
            raise ValueError(
                f"mimo_v2_flash's windowed layers have twice the key/value heads of the full ones (layer {i})"
            )
    # the MTP blocks' kind sets the window, the windowed rotary and the dense width where no layer has them
    mtp_kind = kinds.get((model.get("mtp") or {}).get("layer_kind") or "")
    if mtp_kind is not None and (mtp_kind.get("attention") or {}).get("name") == "sliding_window" and not sliding:
        chosen, attention, sliding = [*chosen, mtp_kind], [*attention, mtp_kind["attention"]], [len(chosen)]
    dense = [
        c["feed_forward"] for c in [*chosen, mtp_kind or {}] if (c.get("feed_forward") or {}).get("name") == "swiglu"
    ]

    def rotary(positional: dict) -> dict[str, Any]:
        if positional["name"] != "rope":
            raise ValueError(
                f"mimo_v2_flash's layers rotate their queries and keys; this one's positional is '{positional['name']}'"
            )
        return {
            "rope_type": "default",
            "rope_theta": positional["base"],
            "partial_rotary_factor": positional.get("fraction", 1.0),
        }

    return {
        "layer_types": ["sliding_attention" if i in sliding else "full_attention" for i in range(model["n_layers"])],
        "mlp_layer_types": [
            "dense" if (c.get("feed_forward") or model["feed_forward"])["name"] == "swiglu" else "sparse"
            for c in chosen[: model["n_layers"]]
        ],
        "sliding_window": attention[sliding[0]]["window"] if sliding else 129,  # MiMoV2FlashConfig's default
        "attention_value_scale": model["attention"].get("value_scale", 1.0),
        "rope_parameters": {
            "full_attention": rotary(model["positional"]),
            "sliding_attention": rotary(
                chosen[sliding[0]].get("positional") or model["positional"] if sliding else model["positional"]
            ),
        },
    } | ({"intermediate_size": dense[0]["hidden"]} if dense else {})


def _legacy(hf: dict) -> dict:
    """sliding_window_size, as the reference implementation counts the window (the keys before the query), is
    sliding_window - 1 (as MiMoV2FlashConfig reads it); no rope_parameters: MiMoV2FlashConfig's per-kind defaults,
    which it takes whatever rope_theta, swa_rope_theta and partial_rotary_factor the reference spelling also has
    (the published config.json's are those defaults)."""
    hf = dict(hf)
    if hf.get("sliding_window_size") is not None:
        hf["sliding_window"] = hf.pop("sliding_window_size") + 1
    if hf.get("rope_parameters") is None and hf.get("rope_scaling") is None:
        hf["rope_parameters"] = dict(ROTARY)
    return hf


def value_rows(dims: Dims, shape: tuple[int, ...]) -> tuple[int, ...]:
    """q_proj, k_proj and v_proj stacked: the layer's query heads, its key heads, then its values (narrower heads)."""
    q, k = dims.n_heads * dims.head_size, dims.n_kv_heads * dims.head_size
    return q, k, shape[0] - q - k


MIMO_WEIGHTS = (
    tuple(w for w in LLAMA_WEIGHTS if not w.ours.startswith("blocks.{i}.attention.qkv"))
    + tuple(
        Weight(
            f"blocks.{{i}}.attention.qkv.{p}",
            tuple(f"model.layers.{{i}}.self_attn.{x}_proj.{p}" for x in "qkv"),
            "rows",
            value_rows,
        )
        for p in ("weight", "bias")
    )
    + (Weight("blocks.{i}.attention.sinks", ("model.layers.{i}.self_attn.attention_sink_bias",)),)
    + expert_weights("model.layers.{i}.mlp", "gate_proj", "up_proj", "down_proj")
    + (Weight("blocks.{i}.feed_forward.expert_bias", ("model.layers.{i}.mlp.gate.e_score_correction_bias",)),)
)
# The checkpoints' MTP modules (model.mtp.layers.{i}, as vLLM's and SGLang's MiMo MTP loaders read them): a dense
# decoder layer's tensors, its second norm named pre_mlp_layernorm, with enorm, hnorm, eh_proj and final_layernorm.
MIMO_MTP = MtpLayout(
    "num_nextn_predict_layers",
    r"({prefix})?mtp\.layers\.0\.",
    shared_copies=False,
    read=_read_mtp,
    settings="`mtp.layer_kind` = `sliding_dense` (a windowed layer with sinks and a dense SwiGLU: the sliding_attention "
    "keys and intermediate_size), `mtp.chain_normed` = true",
)
MIMO_MTP_WEIGHTS = tuple(
    replace(w, theirs=tuple(t.replace("post_attention_layernorm", "pre_mlp_layernorm") for t in w.theirs))
    for w in mtp_weights(
        tuple(w for w in MIMO_WEIGHTS if not any(".mlp.experts." in t or ".mlp.gate." in t for t in w.theirs)),
        tuple(
            (ours, f"model.mtp.layers.{{i}}.{theirs}")
            for ours, theirs in (
                ("enorm.weight", "enorm.weight"),
                ("hnorm.weight", "hnorm.weight"),
                ("eh_proj.weight", "eh_proj.weight"),
                ("norm.weight", "final_layernorm.weight"),
            )
        ),
        "model.mtp.layers.{i}.",
    )
)

MIMO_V2_FLASH = Family(
    model_type="mimo_v2_flash",
    architecture="MiMoV2FlashForCausalLM",
    fields=tuple(
        f
        for f in LLAMA_FIELDS
        if f.hf
        not in ("num_key_value_heads", "head_dim", "intermediate_size", "rms_norm_eps", "rope_parameters.rope_theta")
    )
    + (  # MiMoV2FlashConfig's defaults where a key is absent
        Field("num_key_value_heads", ("n_kv_heads",), 4),
        Field("head_dim", ("head_dim",), 192),
        Field("v_head_dim", ("attention.v_head_size",), 128),
        Field("rms_norm_eps", ("norm.eps",), 1e-5),
        Field("attention_bias", ("qkv_bias",), False),
        Field("moe_intermediate_size", ("feed_forward.hidden",), 2048),
        Field("n_routed_experts", ("feed_forward.n_experts",), 256),
        Field("num_experts_per_tok", ("feed_forward.top_k",), 8),
        Field("routed_scaling_factor", ("feed_forward.routed_scale",), 1.0),
        Field("n_group", ("feed_forward.n_groups",), 1),
        Field("topk_group", ("feed_forward.top_groups",), 1),
        Field("norm_topk_prob", ("feed_forward.normalize_top_k",), True),
    ),
    # o_proj has no bias whatever attention_bias says; sigmoid scores with the bias for choosing only
    assembly={k: v for k, v in LLAMA_ASSEMBLY.items() if k != "qkv_bias"}
    | {"feed_forward": {"name": "moe", "scoring": "sigmoid", "expert_bias": True}},
    requires=(
        SILU,
        Require(
            "quantization_config",
            (None,),
            None,
            "the weights must be floating point; dequantize the FP8 checkpoint to bf16 first",
        ),
    ),
    weights=MIMO_WEIGHTS + MIMO_MTP_WEIGHTS,
    conversions=(Conversion(_read_layers, _write_layers), mtp_conversion(MIMO_MTP)),
    legacy=_legacy,
    mtp=MIMO_MTP,
)
