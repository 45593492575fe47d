"""Mixtures of experts on Llama's layer: Mixtral and Qwen3-MoE, and the expert rows DeepSeek-V3 reuses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gptzoo.recipes.interop.hf.families.base import MISSING, Conversion, Family, Field, Require, Weight
from gptzoo.recipes.interop.hf.families.llama import (
    DEFAULT_ROPE,
    LLAMA_ASSEMBLY,
    LLAMA_FIELDS,
    LLAMA_WEIGHTS,
    SILU,
    SLIDING_WINDOW,
)


def expert_weights(prefix: str, gate: str, up: str, out: str) -> tuple[Weight, ...]:
    """The router and the experts of a layer, ``prefix`` the layer's mixture (``model.layers.{i}.mlp``)."""
    return (
        Weight("blocks.{i}.feed_forward.router.weight", (f"{prefix}.gate.weight",)),
        Weight("blocks.{i}.feed_forward.expert_gate", (f"{prefix}.experts.{{e}}.{gate}.weight",), "experts"),
        Weight("blocks.{i}.feed_forward.expert_up", (f"{prefix}.experts.{{e}}.{up}.weight",), "experts"),
        Weight("blocks.{i}.feed_forward.expert_out", (f"{prefix}.experts.{{e}}.{out}.weight",), "experts"),
    )


def dense_layers(dense: Callable[[dict], list[int]], write: Callable[[list[int], int], dict[str, Any]]) -> Conversion:
    """Some layers keep a dense SwiGLU (``intermediate_size`` wide) where the rest have experts:
    in gptzoo a ``dense`` layer kind and a ``layer_pattern`` of n_layers entries; none: no kinds.
    ``dense(config.json)`` lists those layers; ``write(layers, n_layers)`` gives the config.json keys."""

    def read(hf: dict) -> dict[str, Any]:
        layers = dense(hf)
        if not layers:
            return {}
        if hf.get("intermediate_size") is None:
            raise ValueError("intermediate_size missing; the dense layers need it")
        return {
            "layer_kinds.dense.feed_forward": {"name": "swiglu", "hidden": hf["intermediate_size"], "bias": False},
            "layer_kinds.moe": {},
            "layer_pattern": ["dense" if i in layers else "moe" for i in range(hf["num_hidden_layers"])],
        }

    def write_(model: dict) -> dict[str, Any]:
        pattern, n = model.get("layer_pattern") or [], model["n_layers"]
        layers = [i for i in range(n) if pattern and pattern[i % len(pattern)] == "dense"]
        dense_ffn = (model.get("layer_kinds") or {}).get("dense", {}).get("feed_forward") or {}
        return write(layers, n) | ({"intermediate_size": dense_ffn["hidden"]} if "hidden" in dense_ffn else {})

    return Conversion(read, write_)


MIXTRAL = Family(
    model_type="mixtral",
    architecture="MixtralForCausalLM",
    fields=tuple(f for f in LLAMA_FIELDS if f.hf != "intermediate_size")
    + (
        Field("intermediate_size", ("feed_forward.hidden",)),
        Field("num_local_experts", ("feed_forward.n_experts",)),
        Field("num_experts_per_tok", ("feed_forward.top_k",)),
        Field("router_aux_loss_coef", ("feed_forward.balance_loss_weight",), 0.001),
    ),
    # softmax over the experts, the top k renormalised (Mixtral's softmax over the top-k logits)
    assembly=LLAMA_ASSEMBLY | {"feed_forward": {"name": "moe", "scoring": "softmax", "normalize_top_k": True}},
    requires=(SILU, DEFAULT_ROPE),
    weights=tuple(w for w in LLAMA_WEIGHTS if ".feed_forward." not in w.ours)
    + expert_weights("model.layers.{i}.block_sparse_moe", "w1", "w3", "w2"),
    conversions=(SLIDING_WINDOW,),
)


def _qwen3_moe_dense(hf: dict) -> list[int]:
    """Qwen3-MoE's MLP-only layers: those in mlp_only_layers and, with decoder_sparse_step s, those i with (i + 1) % s != 0."""
    step, only = hf.get("decoder_sparse_step") or 1, hf.get("mlp_only_layers") or []
    return [i for i in range(hf["num_hidden_layers"]) if i in only or (i + 1) % step]


QWEN3_MOE = Family(
    model_type="qwen3_moe",
    architecture="Qwen3MoeForCausalLM",
    fields=tuple(f for f in LLAMA_FIELDS if f.hf not in ("rms_norm_eps", "intermediate_size"))
    + (
        Field("rms_norm_eps", ("norm.eps", "attention.qk_norm_eps"), 1e-6),
        Field("attention_bias", ("qkv_bias", "attn_out_bias"), False),
        Field("moe_intermediate_size", ("feed_forward.hidden",)),
        Field(
            "num_experts", ("feed_forward.n_experts",), lambda hf: hf.get("num_local_experts", MISSING)
        ),  # transformers 5 writes num_local_experts
        Field("num_experts_per_tok", ("feed_forward.top_k",)),
        Field("norm_topk_prob", ("feed_forward.normalize_top_k",), False),
        Field("router_aux_loss_coef", ("feed_forward.balance_loss_weight",), 0.001),
    ),
    assembly={k: v for k, v in LLAMA_ASSEMBLY.items() if k not in ("qkv_bias", "attn_out_bias")}
    | {"attention": {"name": "sdpa", "qk_norm": "per_head"}, "feed_forward": {"name": "moe", "scoring": "softmax"}},
    requires=(
        SILU,
        DEFAULT_ROPE,
        Require("use_sliding_window", (False,), False, "Qwen3's windowed layers (max_window_layers) are not read yet"),
    ),
    weights=LLAMA_WEIGHTS
    + expert_weights("model.layers.{i}.mlp", "gate_proj", "up_proj", "down_proj")
    + (
        Weight("blocks.{i}.attention.qk_norm.q_norm", ("model.layers.{i}.self_attn.q_norm.weight",)),
        Weight("blocks.{i}.attention.qk_norm.k_norm", ("model.layers.{i}.self_attn.k_norm.weight",)),
    ),
    conversions=(
        dense_layers(_qwen3_moe_dense, lambda layers, n: {"decoder_sparse_step": 1, "mlp_only_layers": layers}),
    ),
)
