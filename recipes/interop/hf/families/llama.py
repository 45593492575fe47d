"""Llama and the dense families that reuse its decoder layer: Mistral, Qwen2, Qwen3, Phi-3, SmolLM3, Seed-OSS.

The other family modules take Llama's rows (fields, assembly, weights) and change what differs,
as transformers' modular files do.
"""

from __future__ import annotations

from typing import Any

from gptzoo.recipes.interop.hf.families.base import (
    Constant,
    Conversion,
    Family,
    Field,
    Require,
    Weight,
    period,
    qkv_rows,
    read_rope_scaling,
    write_rope_scaling,
)


def _heads(hf: dict) -> int:
    return hf["num_attention_heads"]


def _head_dim(hf: dict) -> int:
    return hf["hidden_size"] // hf["num_attention_heads"]


# ---- the decoder layer shared by Llama and the families derived from it -----------------------

LLAMA_FIELDS = (
    Field("vocab_size", ("vocab_size",)),
    Field("hidden_size", ("d_model",)),
    Field("num_hidden_layers", ("n_layers",)),
    Field("num_attention_heads", ("n_heads",)),
    Field("num_key_value_heads", ("n_kv_heads",), _heads),
    Field("head_dim", ("head_dim",), _head_dim),
    Field("max_position_embeddings", ("context_length",)),
    Field("intermediate_size", ("feed_forward.hidden",)),
    Field("rms_norm_eps", ("norm.eps",), 1e-6),
    Field("rope_parameters.rope_theta", ("positional.base",), 10000.0),
    Field("tie_word_embeddings", ("tied_head",), False),
)
LLAMA_ASSEMBLY = {
    "positional": {"name": "rope"},
    "feed_forward": {"name": "swiglu", "bias": False},
    "norm": {"name": "rmsnorm"},
    "block": {"name": "pre_norm"},
    "head": {"name": "lm"},
    "qkv_bias": False,
    "attn_out_bias": False,
}
SILU = Require("hidden_act", ("silu",), "silu", "the SwiGLU feed-forward gates with SiLU")


def _read_rope(hf: dict) -> dict[str, Any]:
    scaling = read_rope_scaling(hf["rope_parameters"], hf)
    return {} if scaling is None else {"positional.scaling": scaling}


def _write_rope(model: dict) -> dict[str, Any]:
    return {f"rope_parameters.{k}": v for k, v in write_rope_scaling(model["positional"].get("scaling")).items()}


ROPE_SCALING = Conversion(_read_rope, _write_rope)  # rope_parameters.rope_type and its parameters
DEFAULT_ROPE = Require(
    "rope_parameters.rope_type",
    ("default",),
    "default",
    "rope scaling is read for the dense families and DeepSeek-V3 so far",
)
LLAMA_WEIGHTS = (
    Weight("token_embedding.weight", ("model.embed_tokens.weight",)),
    Weight("blocks.{i}.attn_norm.weight", ("model.layers.{i}.input_layernorm.weight",)),
    Weight(
        "blocks.{i}.attention.qkv.weight",
        tuple(f"model.layers.{{i}}.self_attn.{p}_proj.weight" for p in "qkv"),
        "rows",
        qkv_rows,
    ),
    Weight(
        "blocks.{i}.attention.qkv.bias",
        tuple(f"model.layers.{{i}}.self_attn.{p}_proj.bias" for p in "qkv"),
        "rows",
        qkv_rows,
    ),
    Weight("blocks.{i}.attention.out_proj.weight", ("model.layers.{i}.self_attn.o_proj.weight",)),
    Weight("blocks.{i}.attention.out_proj.bias", ("model.layers.{i}.self_attn.o_proj.bias",)),
    Weight("blocks.{i}.ffn_norm.weight", ("model.layers.{i}.post_attention_layernorm.weight",)),
    Weight("blocks.{i}.feed_forward.gate_proj.weight", ("model.layers.{i}.mlp.gate_proj.weight",)),
    Weight("blocks.{i}.feed_forward.up_proj.weight", ("model.layers.{i}.mlp.up_proj.weight",)),
    Weight("blocks.{i}.feed_forward.out_proj.weight", ("model.layers.{i}.mlp.down_proj.weight",)),
    Weight("blocks.{i}.feed_forward.gate_proj.bias", ("model.layers.{i}.mlp.gate_proj.bias",)),
    Weight("blocks.{i}.feed_forward.up_proj.bias", ("model.layers.{i}.mlp.up_proj.bias",)),
    Weight("blocks.{i}.feed_forward.out_proj.bias", ("model.layers.{i}.mlp.down_proj.bias",)),
    Weight("final_norm.weight", ("model.norm.weight",)),
    Weight("head.weight", ("lm_head.weight",)),
)

LLAMA = Family(
    model_type="llama",
    architecture="LlamaForCausalLM",
    fields=LLAMA_FIELDS
    + (
        Field("attention_bias", ("qkv_bias", "attn_out_bias"), False),
        Field("mlp_bias", ("feed_forward.bias",), False),
    ),
    assembly={k: v for k, v in LLAMA_ASSEMBLY.items() if k not in ("qkv_bias", "attn_out_bias")}
    | {"feed_forward": {"name": "swiglu"}},  # biases from the fields
    requires=(SILU, Require("pretraining_tp", (1,), 1, "the projections are not split into tensor-parallel slices")),
    weights=LLAMA_WEIGHTS,
    conversions=(ROPE_SCALING,),
)


def _read_window(hf: dict) -> dict[str, Any]:
    window = hf.get("sliding_window")
    return {} if window is None else {"attention.name": "sliding_window", "attention.window": window}


def _write_window(model: dict) -> dict[str, Any]:
    attention = model["attention"]
    return {"sliding_window": attention["window"] if attention["name"] == "sliding_window" else None}


SLIDING_WINDOW = Conversion(_read_window, _write_window)  # Mistral's sliding_window: every layer, null for none

MISTRAL = Family(
    model_type="mistral",
    architecture="MistralForCausalLM",
    fields=LLAMA_FIELDS,
    assembly=LLAMA_ASSEMBLY,
    requires=(SILU,),
    weights=LLAMA_WEIGHTS,
    conversions=(SLIDING_WINDOW, ROPE_SCALING),
)

QWEN2 = Family(
    model_type="qwen2",
    architecture="Qwen2ForCausalLM",
    fields=tuple(
        f for f in LLAMA_FIELDS if f.hf != "head_dim"
    ),  # Qwen2's heads are hidden_size / num_attention_heads wide
    assembly=LLAMA_ASSEMBLY | {"qkv_bias": True},  # biases on q, k and v; none on o_proj
    requires=(
        SILU,
        Require("use_sliding_window", (False,), False, "gptzoo's sliding-window attention is not available yet"),
    ),
    weights=LLAMA_WEIGHTS,
    conversions=(ROPE_SCALING,),
)

QWEN3 = Family(
    model_type="qwen3",
    architecture="Qwen3ForCausalLM",
    fields=tuple(f for f in LLAMA_FIELDS if f.hf not in ("head_dim", "rms_norm_eps"))
    + (
        Field("head_dim", ("head_dim",), 128),  # Qwen3's default, not hidden_size / heads
        Field("rms_norm_eps", ("norm.eps", "attention.qk_norm_eps"), 1e-6),
        Field("attention_bias", ("qkv_bias", "attn_out_bias"), False),
    ),
    # RMSNorm over each head's queries and keys before rotary, one weight shared by the heads
    assembly={k: v for k, v in LLAMA_ASSEMBLY.items() if k not in ("qkv_bias", "attn_out_bias")}
    | {"attention": {"name": "sdpa", "qk_norm": "per_head"}},
    requires=(
        SILU,
        Require("use_sliding_window", (False,), False, "Qwen3's windowed layers (max_window_layers) are not read yet"),
    ),
    conversions=(ROPE_SCALING,),
    weights=LLAMA_WEIGHTS
    + (
        Weight("blocks.{i}.attention.qk_norm.q_norm", ("model.layers.{i}.self_attn.q_norm.weight",)),
        Weight("blocks.{i}.attention.qk_norm.k_norm", ("model.layers.{i}.self_attn.k_norm.weight",)),
    ),
)

PHI3 = Family(
    model_type="phi3",
    architecture="Phi3ForCausalLM",
    fields=tuple(f for f in LLAMA_FIELDS if f.hf not in ("head_dim", "rms_norm_eps"))
    + (
        Field("rms_norm_eps", ("norm.eps",), 1e-5),
        Field(
            "rope_parameters.partial_rotary_factor", ("positional.fraction",), 1.0
        ),  # the first dimensions of each head rotate (Phi-4-mini: 0.75)
    ),
    assembly=LLAMA_ASSEMBLY,
    requires=(SILU,),
    conversions=(SLIDING_WINDOW, ROPE_SCALING),  # Phi-3-mini-4k: a window of 2047 keys on every layer
    # Phi-3 keeps q, k and v in one projection, in gptzoo's order, and the gate and up projections in another.
    weights=tuple(
        w
        for w in LLAMA_WEIGHTS
        if not w.ours.startswith(
            ("blocks.{i}.attention.", "blocks.{i}.feed_forward.gate_proj", "blocks.{i}.feed_forward.up_proj")
        )
    )
    + (
        Weight("blocks.{i}.attention.qkv.weight", ("model.layers.{i}.self_attn.qkv_proj.weight",)),
        Weight("blocks.{i}.attention.out_proj.weight", ("model.layers.{i}.self_attn.o_proj.weight",)),
        Weight(
            "blocks.{i}.feed_forward.gate_proj.weight",
            ("model.layers.{i}.mlp.gate_up_proj.weight",),
            "chunk",
            chunk=(0, 2),
        ),
        Weight(
            "blocks.{i}.feed_forward.up_proj.weight",
            ("model.layers.{i}.mlp.gate_up_proj.weight",),
            "chunk",
            chunk=(1, 2),
        ),
    ),
)


NOPE_KINDS = {1: "rope", 0: "nope"}  # SmolLM3's no_rope_layers entries (1: the layer rotates) -> gptzoo's kinds


def _read_no_rope_layers(hf: dict) -> dict[str, Any]:
    n = hf["num_hidden_layers"]
    every = hf.get("no_rope_layer_interval", 4)
    layers = hf.get("no_rope_layers") or [int((i + 1) % every != 0) for i in range(n)]  # transformers' default
    if len(layers) != n or not set(layers) <= set(NOPE_KINDS):
        raise ValueError(f"no_rope_layers = {layers} is not supported: gptzoo reads {n} entries of 0 or 1")
    if all(layers):
        return {}
    return {
        "layer_pattern": [NOPE_KINDS[r] for r in period(layers)],
        "layer_kinds": {"rope": {}, "nope": {"positional": {"name": "none"}}},
    }


def _write_no_rope_layers(model: dict) -> dict[str, Any]:
    pattern, kinds = model.get("layer_pattern") or [], model.get("layer_kinds") or {}
    positional = [
        (kinds[pattern[i % len(pattern)]].get("positional") if pattern else None) or model["positional"]
        for i in range(model["n_layers"])
    ]
    return {"no_rope_layers": [int(p["name"] != "none") for p in positional]}


SMOLLM3 = Family(
    model_type="smollm3",
    architecture="SmolLM3ForCausalLM",
    fields=tuple(f for f in LLAMA_FIELDS if f.hf not in ("rope_parameters.rope_theta", "tie_word_embeddings"))
    + (
        Field("rope_parameters.rope_theta", ("positional.base",), 2e6),  # SmolLM3Config.default_theta
        Field("tie_word_embeddings", ("tied_head",), True),
        Field("attention_bias", ("qkv_bias", "attn_out_bias"), False),
        Field("mlp_bias", ("feed_forward.bias",), False),
    ),
    assembly=LLAMA.assembly,
    requires=(
        SILU,
        Require("use_sliding_window", (False,), False, "SmolLM3's windowed NoPE layers are not read yet"),
    ),
    weights=LLAMA_WEIGHTS,
    # every no_rope_layer_interval-th layer has no rotary (NoPE): layer kinds "rope" and "nope"
    conversions=(Conversion(_read_no_rope_layers, _write_no_rope_layers), ROPE_SCALING),
)


SEED_OSS = Family(
    model_type="seed_oss",
    architecture="SeedOssForCausalLM",
    fields=tuple(f for f in LLAMA_FIELDS if f.hf != "head_dim")
    + (
        Field("head_dim", ("head_dim",), 128),  # SeedOssConfig's default, not hidden_size / heads
        Field("attention_bias", ("qkv_bias",), True),  # biases on q, k and v ...
        Field("attention_out_bias", ("attn_out_bias",), False),  # ... and, separately, on o_proj
        Field("mlp_bias", ("feed_forward.bias",), False),
    ),
    assembly=LLAMA.assembly,  # attention_dropout and residual_dropout act in training only, as gptzoo's dropout
    requires=LLAMA.requires,
    weights=LLAMA_WEIGHTS,
    conversions=(ROPE_SCALING,),
)


def _apertus_legacy(hf: dict) -> dict:
    """A config.json without rope settings: ApertusConfig's default, llama3 scaling of theta 12e6 from 8192 positions."""
    if any(hf.get(k) is not None for k in ("rope_parameters", "rope_scaling", "rope_theta")):
        return dict(hf)
    return hf | {
        "rope_parameters": {
            "rope_type": "llama3",
            "rope_theta": 12e6,
            "factor": 8.0,
            "original_max_position_embeddings": 8192,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
        }
    }


APERTUS = Family(
    model_type="apertus",
    architecture="ApertusForCausalLM",
    fields=tuple(f for f in LLAMA_FIELDS if f.hf not in ("rms_norm_eps", "rope_parameters.rope_theta"))
    + (
        Field("rms_norm_eps", ("norm.eps", "attention.qk_norm_eps"), 1e-5),
        Field("rope_parameters.rope_theta", ("positional.base",), 12e6),  # ApertusConfig.default_theta
        Field("attention_bias", ("qkv_bias", "attn_out_bias"), False),
    ),
    # QK-norm per head; an up projection, xIELU, a down projection (no gate). xIELU's fixed beta and eps are
    # one-number buffers in transformers' checkpoints, settings of gptzoo's xielu.
    assembly={k: v for k, v in LLAMA_ASSEMBLY.items() if k not in ("qkv_bias", "attn_out_bias")}
    | {"attention": {"name": "sdpa", "qk_norm": "per_head"}, "feed_forward": {"name": "xielu", "bias": False}},
    requires=(Require("hidden_act", ("xielu",), "xielu", "the feed-forward is gptzoo's xielu"),),
    weights=tuple(
        w
        for w in LLAMA_WEIGHTS
        if ".feed_forward." not in w.ours
        and w.ours not in ("blocks.{i}.attn_norm.weight", "blocks.{i}.ffn_norm.weight")
    )
    + (
        Weight("blocks.{i}.attn_norm.weight", ("model.layers.{i}.attention_layernorm.weight",)),
        Weight("blocks.{i}.ffn_norm.weight", ("model.layers.{i}.feedforward_layernorm.weight",)),
        Weight("blocks.{i}.attention.qk_norm.q_norm", ("model.layers.{i}.self_attn.q_norm.weight",)),
        Weight("blocks.{i}.attention.qk_norm.k_norm", ("model.layers.{i}.self_attn.k_norm.weight",)),
        Weight("blocks.{i}.feed_forward.in_proj.weight", ("model.layers.{i}.mlp.up_proj.weight",)),
        Weight("blocks.{i}.feed_forward.out_proj.weight", ("model.layers.{i}.mlp.down_proj.weight",)),
        Weight("blocks.{i}.feed_forward.alpha_p", ("model.layers.{i}.mlp.act_fn.alpha_p",)),
        Weight("blocks.{i}.feed_forward.alpha_n", ("model.layers.{i}.mlp.act_fn.alpha_n",)),
    ),
    conversions=(ROPE_SCALING,),
    legacy=_apertus_legacy,
    ignored=r"model\.layers\.\d+\.(self_attn\.rotary_emb\.inv_freq|mlp\.act_fn\.(beta|eps))",
    constants=tuple(
        Constant(
            f"model.layers.{{i}}.mlp.act_fn.{name}",
            "blocks.{i}.feed_forward.alpha_p",
            lambda m, n=name: m["feed_forward"][n],
        )
        for name in ("beta", "eps")
    ),
)
