"""Gemma 4's text model (gemma4_text): Gemma 3's sandwich layers, local and global, with wider global
heads (whose keys may be their values), the last layers attending with an earlier layer's keys and
values, per-layer embeddings, a value norm and a learned scalar on each layer's output; in the 26B-A4B,
experts beside each layer's MLP, each between norms of its own (``mlp_and_experts``).

Hugging Face keeps the global layers' head shape in ``per_layer_config`` (layer index -> head_dim,
num_key_value_heads), which transformers 5 writes from ``global_head_dim`` and
``num_global_key_value_heads``; both spellings are read, the first is written.
"""

from __future__ import annotations

import json
from typing import Any

from gptzoo.core import Dims
from gptzoo.recipes.interop.hf.families.base import Conversion, Family, Field, Require, Weight, period

KINDS = {"sliding_attention": "local", "full_attention": "global"}  # Hugging Face's layer_types -> gptzoo's kinds


def _layer_types(hf: dict) -> list[str]:
    """``layer_types`` as transformers reads it: five local layers to one global by default, the last one global."""
    n = hf["num_hidden_layers"]
    types = list(hf.get("layer_types") or ["sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(n)])
    if len(types) != n or not set(types) <= set(KINDS):
        raise ValueError(
            f"layer_types = {json.dumps(types)} is not supported: gptzoo reads {n} entries of {' or '.join(KINDS)}"
        )
    types[-1] = "full_attention"  # as Gemma4TextConfig forces it
    return types


def _global_heads(hf: dict, types: list[str]) -> tuple[int, int]:
    """(head_dim, num_key_value_heads) of the global layers."""
    per_layer = hf.get("per_layer_config")
    if per_layer is None:  # transformers 5's own reading of the two keys
        heads = hf.get("num_global_key_value_heads") if hf.get("attention_k_eq_v", False) else None
        return hf.get("global_head_dim", 512), heads or hf.get("num_key_value_heads", 4)
    base = (hf.get("head_dim", 256), hf.get("num_key_value_heads", 4))
    shapes = set()
    for index, overrides in per_layer.items():
        if types[int(index)] != "full_attention" or not set(overrides) <= {"head_dim", "num_key_value_heads"}:
            raise ValueError(
                f"per_layer_config.{index} = {json.dumps(overrides)} is not supported: gptzoo reads head_dim and "
                "num_key_value_heads of the full_attention layers"
            )
        shapes.add((overrides.get("head_dim", base[0]), overrides.get("num_key_value_heads") or base[1]))
    given = {int(index) for index in per_layer}  # transformers writes the indices as strings, "04" among them
    if any(t == "full_attention" and i not in given for i, t in enumerate(types)):
        shapes.add(base)  # a layer without overrides (transformers leaves out those equal to the base shape)
    if len(shapes) > 1:
        raise ValueError(
            f"per_layer_config = {json.dumps(per_layer)} is not supported: gptzoo reads one head shape for every "
            "full_attention layer"
        )
    return shapes.pop()


def _rope(rope: dict, kind: str) -> dict[str, Any]:
    base = rope.get("rope_theta", 1e4 if kind == "sliding_attention" else 1e6)
    if rope.get("rope_type", "default") == "default":
        return {"name": "rope", "base": base}
    if rope["rope_type"] == "proportional" and kind == "full_attention" and rope.get("factor", 1.0) == 1.0:
        return {"name": "rope", "base": base, "fraction": rope.get("partial_rotary_factor", 1.0), "proportional": True}
    raise ValueError(
        f"rope_parameters.{kind} = {json.dumps(rope)} is not supported for gemma4_text (gptzoo reads default rope, "
        "and proportional rope without a factor on the full_attention layers)"
    )


def _read_layers(hf: dict) -> dict[str, Any]:
    types = _layer_types(hf)
    head_dim, heads = _global_heads(hf, types)
    attention = {
        "name": "sdpa",
        "scale": 1.0,  # queries and keys are RMS-normalised per head
        "qk_norm": "per_head",
        "qk_norm_eps": hf.get("rms_norm_eps", 1e-6),
        "v_norm": True,
        "shared_key_value": bool(hf.get("attention_k_eq_v", False)),  # the global layers' only
    }
    rope = hf.get("rope_parameters") or {}
    table: dict[str, Any] = {
        "attention": attention,
        "positional": _rope(rope.get("full_attention") or {}, "full_attention"),
    }
    table["layer_pattern"] = [KINDS[t] for t in period(types)]
    table["layer_kinds"] = {"global": {}}  # the global layers' head shape where it is not the local layers'
    if head_dim != hf.get("head_dim", 256):
        table["layer_kinds"]["global"]["head_dim"] = head_dim
    if heads != hf.get("num_key_value_heads", 4):
        table["layer_kinds"]["global"]["n_kv_heads"] = heads
    if "sliding_attention" in types:
        local = attention | {
            "name": "sliding_window",
            "window": hf.get("sliding_window", 512),
            "shared_key_value": False,
        }
        table["layer_kinds"]["local"] = {
            "attention": local,
            "positional": _rope(rope.get("sliding_attention") or {}, "sliding_attention"),
        }
    per_layer = hf.get("hidden_size_per_layer_input", 256)
    if per_layer and hf.get("vocab_size_per_layer_input", 262_144) != hf["vocab_size"]:
        raise ValueError(
            f"vocab_size_per_layer_input = {hf.get('vocab_size_per_layer_input', 262_144)} is not supported: "
            f"gptzoo's per-layer embeddings have the vocabulary's {hf['vocab_size']} rows"
        )
    table["block.per_layer_input"] = per_layer or None
    return table


def _write_layers(model: dict) -> dict[str, Any]:
    pattern, kinds = model.get("layer_pattern") or [], model.get("layer_kinds") or {}
    chosen = [kinds[pattern[i % len(pattern)]] if pattern else {} for i in range(model["n_layers"])]
    attention = [c.get("attention") or model["attention"] for c in chosen]
    sliding = [a["name"] == "sliding_window" for a in attention]
    rotary = [c.get("positional") or model["positional"] for c in chosen]

    def rope(r: dict, base: float) -> dict:
        if r.get("proportional"):
            return {"rope_type": "proportional", "partial_rotary_factor": r["fraction"], "rope_theta": r["base"]}
        return {"rope_type": "default", "rope_theta": r.get("base", base)}

    full = next((i for i, s in enumerate(sliding) if not s), None)
    local = next((i for i, s in enumerate(sliding) if s), None)
    per_layer_config = {
        str(i): {
            "head_dim": chosen[i].get("head_dim") or model["head_dim"],
            "num_key_value_heads": chosen[i].get("n_kv_heads") or model["n_kv_heads"],
        }
        for i, s in enumerate(sliding)
        if not s
    }
    per_layer = model["block"].get("per_layer_input")
    return {
        "layer_types": ["sliding_attention" if s else "full_attention" for s in sliding],
        "sliding_window": attention[local]["window"] if local is not None else None,
        "attention_k_eq_v": bool(full is not None and attention[full].get("shared_key_value")),
        "per_layer_config": per_layer_config,
        "rope_parameters": {
            "full_attention": rope(rotary[full] if full is not None else model["positional"], 1e6),
            "sliding_attention": rope(rotary[local] if local is not None else model["positional"], 1e4),
        },
        "hidden_size_per_layer_input": per_layer or 0,
        "vocab_size_per_layer_input": model["vocab_size"],
    }


def _read_experts(hf: dict) -> dict[str, Any]:
    """The 26B-A4B's feed-forward (``enable_moe_block``): experts beside the MLP, as ``mlp_and_experts``."""
    if not hf.get("enable_moe_block", False):
        return {}
    sizes = {key: hf.get(key) for key in ("num_experts", "top_k_experts", "moe_intermediate_size")}
    if None in sizes.values():
        raise ValueError(
            f"enable_moe_block = true with {json.dumps(sizes)}: a gemma4_text config.json with experts gives all three"
        )
    eps = hf.get("rms_norm_eps", 1e-6)
    experts = {
        "n_experts": sizes["num_experts"],
        "top_k": sizes["top_k_experts"],
        "hidden": sizes["moe_intermediate_size"],
        "activation": "geglu",
        "router_norm_eps": eps,
    }
    return {"feed_forward.name": "mlp_and_experts", "feed_forward.norm_eps": eps, "feed_forward.experts": experts}


def _write_experts(model: dict) -> dict[str, Any]:
    feed_forward = model["feed_forward"]
    if feed_forward["name"] != "mlp_and_experts":
        return {"enable_moe_block": False}
    experts = feed_forward["experts"]
    if experts.get("hidden") is None:
        raise ValueError("feed_forward.experts.hidden is unset: gemma4_text's config.json gives moe_intermediate_size")
    return {
        "enable_moe_block": True,
        "num_experts": experts["n_experts"],
        "top_k_experts": experts["top_k"],
        "moe_intermediate_size": experts["hidden"],
    }


def _qkv_rows(dims: Dims, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Queries, keys, values of one layer: no keys nor values where it reads another layer's, no values
    where its keys are its values (attention_k_eq_v)."""
    q, kv = dims.n_heads * dims.head_size, dims.n_kv_heads * dims.head_size
    if dims.kv_from is not None:
        return q, 0, 0
    return (q, kv, 0) if shape[0] == q + kv else (q, kv, kv)


def _layer(name: str) -> tuple[str]:
    return (f"model.layers.{{i}}.{name}",)


FEED_FORWARD = "blocks.{i}.feed_forward"
# The 26B-A4B's feed-forward (mlp_and_experts): its MLP and its experts, each between norms of its own
EXPERT_WEIGHTS = (
    Weight(f"{FEED_FORWARD}.mlp_norm.weight", _layer("pre_feedforward_layernorm.weight")),
    Weight(f"{FEED_FORWARD}.mlp_out_norm.weight", _layer("post_feedforward_layernorm_1.weight")),
    Weight(f"{FEED_FORWARD}.mlp.gate_proj.weight", _layer("mlp.gate_proj.weight")),
    Weight(f"{FEED_FORWARD}.mlp.up_proj.weight", _layer("mlp.up_proj.weight")),
    Weight(f"{FEED_FORWARD}.mlp.out_proj.weight", _layer("mlp.down_proj.weight")),
    Weight(f"{FEED_FORWARD}.experts_norm.weight", _layer("pre_feedforward_layernorm_2.weight")),
    Weight(f"{FEED_FORWARD}.experts_out_norm.weight", _layer("post_feedforward_layernorm_2.weight")),
    Weight(f"{FEED_FORWARD}.experts.router.weight", _layer("router.proj.weight")),
    Weight(f"{FEED_FORWARD}.experts.router_scale", _layer("router.scale")),
    Weight(f"{FEED_FORWARD}.experts.expert_scale", _layer("router.per_expert_scale")),
    Weight(f"{FEED_FORWARD}.experts.expert_gate", _layer("experts.gate_up_proj"), "chunk", chunk=(0, 2)),
    Weight(f"{FEED_FORWARD}.experts.expert_up", _layer("experts.gate_up_proj"), "chunk", chunk=(1, 2)),
    Weight(f"{FEED_FORWARD}.experts.expert_out", _layer("experts.down_proj")),
)


GEMMA4_TEXT = Family(
    model_type="gemma4_text",
    architecture="Gemma4ForCausalLM",
    fields=(
        Field("vocab_size", ("vocab_size",)),
        Field("hidden_size", ("d_model",)),
        Field("num_hidden_layers", ("n_layers",)),
        Field("num_attention_heads", ("n_heads",)),
        Field("num_key_value_heads", ("n_kv_heads",), 4),
        Field("head_dim", ("head_dim",), 256),
        Field("max_position_embeddings", ("context_length",), 131_072),
        Field("intermediate_size", ("feed_forward.hidden",)),
        Field("rms_norm_eps", ("norm.eps",), 1e-6),
        Field("tie_word_embeddings", ("tied_head",), True),
        Field("attention_bias", ("qkv_bias", "attn_out_bias"), False),
        Field("num_kv_shared_layers", ("kv_shared_layers",), 0),
        Field("use_double_wide_mlp", ("feed_forward.double_wide_kv_shared",), False),
        Field("final_logit_softcapping", ("head.softcap",), None),
    ),
    assembly={
        "feed_forward": {"name": "geglu", "bias": False},
        "norm": {"name": "rmsnorm"},  # Gemma 4's RMSNorm scales by its weight (Gemma 3's by 1 + weight)
        "block": {"name": "sandwich", "layer_scalar": True},
        "head": {"name": "lm"},
        "embedding_scale": "sqrt_d_model",
    },
    requires=(
        Require(
            "hidden_activation",
            ("gelu_pytorch_tanh",),
            "gelu_pytorch_tanh",
            "the GeGLU feed-forward gates with the tanh GELU",
        ),
        Require("use_bidirectional_attention", (None,), None, "gptzoo's attention is causal"),
    ),
    weights=(
        Weight("token_embedding.weight", ("model.embed_tokens.weight",)),
        Weight(
            "blocks.{i}.attention.qkv.weight",
            tuple(f"model.layers.{{i}}.self_attn.{p}_proj.weight" for p in "qkv"),
            "rows",
            _qkv_rows,
        ),
        Weight(
            "blocks.{i}.attention.qkv.bias",
            tuple(f"model.layers.{{i}}.self_attn.{p}_proj.bias" for p in "qkv"),
            "rows",
            _qkv_rows,
        ),
        Weight("blocks.{i}.attention.out_proj.weight", _layer("self_attn.o_proj.weight")),
        Weight("blocks.{i}.attention.out_proj.bias", _layer("self_attn.o_proj.bias")),
        Weight("blocks.{i}.attention.qk_norm.q_norm", _layer("self_attn.q_norm.weight")),
        Weight("blocks.{i}.attention.qk_norm.k_norm", _layer("self_attn.k_norm.weight")),
        Weight("blocks.{i}.attn_norm.weight", _layer("input_layernorm.weight")),
        Weight("blocks.{i}.attn_out_norm.weight", _layer("post_attention_layernorm.weight")),
        Weight("blocks.{i}.ffn_norm.weight", _layer("pre_feedforward_layernorm.weight")),
        Weight("blocks.{i}.ffn_out_norm.weight", _layer("post_feedforward_layernorm.weight")),
        Weight("blocks.{i}.feed_forward.gate_proj.weight", _layer("mlp.gate_proj.weight")),
        Weight("blocks.{i}.feed_forward.up_proj.weight", _layer("mlp.up_proj.weight")),
        Weight("blocks.{i}.feed_forward.out_proj.weight", _layer("mlp.down_proj.weight")),
        Weight("blocks.{i}.layer_scalar", _layer("layer_scalar")),
        Weight(
            "blocks.{i}.per_layer_input.embedding.weight", ("model.embed_tokens_per_layer.weight",), "layer_columns"
        ),
        Weight(
            "blocks.{i}.per_layer_input.projection.weight", ("model.per_layer_model_projection.weight",), "layer_rows"
        ),
        Weight(
            "blocks.{i}.per_layer_input.projection_norm.weight", ("model.per_layer_projection_norm.weight",), "shared"
        ),
        Weight("blocks.{i}.per_layer_input.gate.weight", _layer("per_layer_input_gate.weight")),
        Weight("blocks.{i}.per_layer_input.up.weight", _layer("per_layer_projection.weight")),
        Weight("blocks.{i}.per_layer_input.out_norm.weight", _layer("post_per_layer_input_norm.weight")),
        *EXPERT_WEIGHTS,
        Weight("final_norm.weight", ("model.norm.weight",)),
        Weight("head.weight", ("lm_head.weight",)),
    ),
    conversions=(Conversion(_read_layers, _write_layers), Conversion(_read_experts, _write_experts)),
)
