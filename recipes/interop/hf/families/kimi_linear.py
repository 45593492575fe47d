"""Kimi Linear: Kimi Delta Attention layers and multi-head latent attention layers without positions
(3 : 1 in the published model), each with DeepSeek-V3's mixture of experts (a dense SwiGLU on the
first layer).

The published config.json is Moonshot's own (``linear_attn_config`` with 1-indexed ``kda_layers`` and
``full_attn_layers``, ``first_k_dense_replace``); transformers 5 reads it and writes its own keys
(``layer_types``, ``mlp_layer_types``, ``linear_num_heads``, ...) under the names of its attribute
map (``model_max_length``, ``num_experts``, ``num_experts_per_token``, ``moe_renormalize``, ...),
which are the ones the table reads and export writes.
"""

from __future__ import annotations

import json
from typing import Any

from gptzoo.recipes.interop.hf.families.base import Conversion, Family, Field, Require, Weight
from gptzoo.recipes.interop.hf.families.llama import SILU
from gptzoo.recipes.interop.hf.families.qwen3_next import KINDS, hybrid_kinds, layer_components

# transformers' attribute map: the name a config.json may use -> the one transformers 5 writes
ATTRIBUTES = {
    "max_position_embeddings": "model_max_length",
    "norm_topk_prob": "moe_renormalize",
    "n_group": "num_expert_group",
    "num_local_experts": "num_experts",
    "num_experts_per_tok": "num_experts_per_token",
    "n_shared_experts": "num_shared_experts",
}


def _kimi_linear_legacy(hf: dict) -> dict:
    """Moonshot's config.json (and the attribute map's other names) -> the keys transformers 5 writes."""
    hf = dict(hf)
    for old, new in ATTRIBUTES.items():
        if old in hf:
            hf.setdefault(new, hf.pop(old))
    linear = hf.pop("linear_attn_config", None) or {}
    for old, new in (("head_dim", "linear_head_dim"), ("num_heads", "linear_num_heads")):
        if old in linear:
            hf.setdefault(new, linear[old])
    if "short_conv_kernel_size" in linear:
        hf.setdefault("linear_conv_kernel_dim", linear["short_conv_kernel_size"])
    if hf.get("layer_types") is None and "full_attn_layers" in linear and "kda_layers" in linear:
        types: list[Any] = [None] * hf["num_hidden_layers"]
        for layer in linear["full_attn_layers"]:  # 1-indexed in Moonshot's file
            types[layer - 1] = "full_attention"
        for layer in linear["kda_layers"]:
            types[layer - 1] = "linear_attention"
        hf["layer_types"] = types
    if hf.get("mlp_layer_types") is None:
        first = hf.pop("first_k_dense_replace", 1)
        hf["mlp_layer_types"] = ["dense" if i < first else "sparse" for i in range(hf["num_hidden_layers"])]
    return hf


def _read_layers(hf: dict) -> dict[str, Any]:
    """Kimi Delta Attention or latent attention per layer_types; experts, or a SwiGLU on the dense layers."""
    n = hf["num_hidden_layers"]
    types = hf.get("layer_types") or [
        "full_attention" if i and i % 4 == 0 else "linear_attention" for i in range(n)
    ]  # transformers' default
    mlp = hf.get("mlp_layer_types") or ["dense"] + ["sparse"] * (n - 1)
    for key, value, known in (("layer_types", types, KINDS), ("mlp_layer_types", mlp, ("dense", "sparse"))):
        unknown = sorted({str(v) for v in value} - set(known))
        if unknown or len(value) != n:
            raise ValueError(
                f"{key} = {json.dumps(value)} is not supported for kimi_linear (gptzoo reads one of "
                f"{' or '.join(known)} for each of the {n} layers)"
            )
    dense = {i for i, t in enumerate(mlp) if t == "dense"}
    swiglu = {"name": "swiglu", "hidden": hf.get("intermediate_size", 9216), "bias": False}
    delta = {
        "name": "kimi_delta",
        "num_heads": hf.get("linear_num_heads", 32),
        "head_dim": hf.get("linear_head_dim", 128),
        "conv_size": hf.get("linear_conv_kernel_dim", 4),
        "norm_eps": hf.get("rms_norm_eps", 1e-5),
    }
    mixture = {
        "name": "moe",
        "scoring": "sigmoid",
        "expert_bias": True,
        "n_experts": hf.get("num_experts", 256),
        "top_k": hf.get("num_experts_per_token", 8),
        "hidden": hf.get("moe_intermediate_size", 1024),
        "n_shared_experts": hf.get("num_shared_experts", 1),
        "routed_scale": hf.get("routed_scaling_factor", 2.446),
        "n_groups": hf.get("num_expert_group", 1),
        "top_groups": hf.get("topk_group", 1),
        "normalize_top_k": hf.get("moe_renormalize", True),
    }
    return hybrid_kinds(types, dense, {"attention": delta}, swiglu) | {
        "feed_forward": swiglu if len(dense) == n else mixture
    }


def _write_layers(model: dict) -> dict[str, Any]:
    mixers, feed_forwards = layer_components(model)
    names = {"kimi_delta": "linear_attention", "latent": "full_attention"}
    for mixer in mixers:
        if mixer["name"] not in names:
            raise ValueError(f"attention '{mixer['name']}' has no kimi_linear counterpart (kimi_delta or latent)")
    hf: dict[str, Any] = {
        "layer_types": [names[m["name"]] for m in mixers],
        "mlp_layer_types": ["sparse" if f["name"] == "moe" else "dense" for f in feed_forwards],
    }
    delta = next((m for m in mixers if m["name"] == "kimi_delta"), None)
    if delta is not None:
        hf |= {
            "linear_num_heads": delta.get("num_heads") or model["n_heads"],
            "linear_head_dim": delta.get("head_dim") or model["head_dim"],
            "linear_conv_kernel_dim": delta["conv_size"],
        }
    swiglu = next((f for f in feed_forwards if f["name"] != "moe"), None)
    if swiglu is not None:
        hf["intermediate_size"] = swiglu["hidden"]
    moe = next((f for f in feed_forwards if f["name"] == "moe"), None)
    if moe is not None:
        hf |= {
            "num_experts": moe["n_experts"],
            "num_experts_per_token": moe["top_k"],
            "moe_intermediate_size": moe["hidden"],
            "num_shared_experts": moe["n_shared_experts"],
            "routed_scaling_factor": moe["routed_scale"],
            "num_expert_group": moe["n_groups"],
            "topk_group": moe["top_groups"],
            "moe_renormalize": moe["normalize_top_k"],
        }
    return hf


def _attention(name: str) -> str:
    return f"model.layers.{{i}}.self_attn.{name}"


def _moe(name: str) -> str:
    return f"model.layers.{{i}}.block_sparse_moe.{name}"


KIMI_LINEAR = Family(
    model_type="kimi_linear",
    architecture="KimiLinearForCausalLM",
    fields=(
        Field("vocab_size", ("vocab_size",), 163840),
        Field("hidden_size", ("d_model",), 2304),
        Field("num_hidden_layers", ("n_layers",), 27),
        Field("num_attention_heads", ("n_heads",), 32),
        Field("num_key_value_heads", ("n_kv_heads",), lambda hf: hf.get("num_attention_heads", 32)),
        Field("qk_rope_head_dim", ("head_dim",), 64),  # the shared key part MLA's head_dim is (unrotated here)
        Field("model_max_length", ("context_length",), 1048576),
        Field("rms_norm_eps", ("norm.eps",), 1e-5),
        Field("q_lora_rank", ("attention.q_lora_rank",), None),
        Field("kv_lora_rank", ("attention.kv_lora_rank",), 512),
        Field("qk_nope_head_dim", ("attention.qk_nope_head_dim",), 128),
        Field("v_head_dim", ("attention.v_head_dim",), 128),
    ),
    # Pre-norm layers; no position scheme anywhere (the latent attention's rotary key part is a plain key
    # part shared by the heads); DeepSeek-V3's sigmoid-scored experts with the bias for choosing only.
    # transformers' KimiLinearForCausalLM ties no weights, whatever tie_word_embeddings says.
    assembly={
        "positional": {"name": "none"},
        "attention": {"name": "latent"},
        "norm": {"name": "rmsnorm"},
        "block": {"name": "pre_norm"},
        "head": {"name": "lm"},
        "qkv_bias": False,
        "attn_out_bias": False,
        "tied_head": False,
    },
    requires=(
        SILU,
        Require("mla_use_nope", (True,), True, "the latent attention has no positions (transformers: always)"),
        Require("attention_bias", (False,), False, "gptzoo's latent attention puts q_proj's bias where Kimi has none"),
        Require("moe_router_activation_func", ("sigmoid",), "sigmoid", "the experts are scored with sigmoids"),
        Require("moe_layer_freq", (1,), 1, "every layer after the dense ones has experts"),
        Require("num_nextn_predict_layers", (0,), 0, "multi-token-prediction layers are not read for kimi_linear"),
    ),
    weights=(
        Weight("token_embedding.weight", ("model.embed_tokens.weight",)),
        Weight("blocks.{i}.attn_norm.weight", ("model.layers.{i}.input_layernorm.weight",)),
        Weight("blocks.{i}.ffn_norm.weight", ("model.layers.{i}.post_attention_layernorm.weight",)),
        *(
            Weight(f"blocks.{{i}}.attention.{name}", (_attention(name),))
            for name in (
                "q_proj.weight",
                "q_a_proj.weight",
                "q_a_layernorm.weight",
                "q_b_proj.weight",
                "kv_a_proj_with_mqa.weight",
                "kv_a_layernorm.weight",
                "kv_b_proj.weight",
                "k_proj.weight",
                "v_proj.weight",
                "f_a_proj.weight",
                "f_b_proj.weight",
                "dt_bias",
                "b_proj.weight",
                "g_a_proj.weight",
                "g_b_proj.weight",
                "o_norm.weight",
            )
        ),
        Weight(
            "blocks.{i}.attention.conv1d.conv.weight",
            tuple(_attention(f"{p}_conv1d.weight") for p in "qkv"),
            "rows",
            lambda dims, shape: (shape[0] // 3,) * 3,
        ),
        Weight("blocks.{i}.attention.A_log", (_attention("A_log"),), "reshaped", lambda dims, shape: (1, 1, *shape, 1)),
        Weight("blocks.{i}.attention.out_proj.weight", (_attention("o_proj.weight"),)),
        Weight("blocks.{i}.feed_forward.router.weight", (_moe("gate.weight"),)),
        Weight("blocks.{i}.feed_forward.expert_bias", (_moe("gate.e_score_correction_bias"),)),
        *(
            Weight(f"blocks.{{i}}.feed_forward.expert_{ours}", (_moe(f"experts.{{e}}.{theirs}.weight"),), "experts")
            for ours, theirs in (("gate", "w1"), ("up", "w3"), ("out", "w2"))
        ),
        *(
            Weight(f"blocks.{{i}}.feed_forward.shared.{ours}.weight", (_moe(f"shared_experts.{theirs}.weight"),))
            for ours, theirs in (("gate_proj", "gate_proj"), ("up_proj", "up_proj"), ("out_proj", "down_proj"))
        ),
        *(
            Weight(f"blocks.{{i}}.feed_forward.{ours}.weight", (_moe(f"{theirs}.weight"),))
            for ours, theirs in (("gate_proj", "gate_proj"), ("up_proj", "up_proj"), ("out_proj", "down_proj"))
        ),
        Weight("final_norm.weight", ("model.norm.weight",)),
        Weight("head.weight", ("lm_head.weight",)),
    ),
    conversions=(Conversion(_read_layers, _write_layers),),
    legacy=_kimi_linear_legacy,
)
