"""Qwen3-Next: Gated DeltaNet layers and gated attention layers (3 : 1 in the published models), each
with a mixture of experts whose shared expert is gated by a sigmoid of the token.

Its checkpoints fuse what gptzoo keeps apart, group by group (``Fused``): a linear-attention layer's
``in_proj_qkvz`` holds, per key head, its query, its key, and the values and output gates of the
value heads sharing it, and ``in_proj_ba`` their β and decay inputs; an attention layer's ``q_proj``
holds, per head, its query rows and then its output gate's rows.

The published checkpoints also carry a multi-token-prediction module (``mtp.*``: fc, the two
pre_fc norms, one gated-attention decoder layer, norm; ``mtp_num_hidden_layers`` = 1), which
transformers does not load. Import keeps it as ``model.mtp`` when the checkpoint holds it, and
export writes it back (families/mtp.py). With ``mtp_use_dedicated_embeddings`` (false in every
published config.json) the module embeds the tokens ahead with a table of its own,
``mtp.embed_tokens``: gptzoo's ``own_embedding``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from gptzoo.core import ModelConfig
from gptzoo.recipes.interop.hf.families.base import (
    Conversion,
    Family,
    Field,
    Fused,
    Weight,
    period,
    qkv_rows,
)
from gptzoo.recipes.interop.hf.families.llama import ROPE_SCALING, SILU
from gptzoo.recipes.interop.hf.families.moe import expert_weights
from gptzoo.recipes.interop.hf.families.mtp import QWEN3_NEXT_MTP, QWEN3_NEXT_OWN, mtp_conversion, mtp_weights

KINDS = {"linear_attention": "linear", "full_attention": "full"}


def layer_types(hf: dict) -> list[str]:
    """config.json's layer_types, or as transformers derives them: full attention every full_attention_interval-th layer."""
    n, interval = hf["num_hidden_layers"], hf.get("full_attention_interval", 4)
    types = hf.get("layer_types") or ["linear_attention" if (i + 1) % interval else "full_attention" for i in range(n)]
    unknown = sorted(set(types) - set(KINDS))
    if unknown:
        raise ValueError(
            f"layer_types = {json.dumps(types)} is not supported for {hf['model_type']} (its {', '.join(unknown)} "
            f"layers are not read; gptzoo reads {' or '.join(KINDS)})"
        )
    return types


def _dense_layers(hf: dict) -> set[int]:
    """The layers with a plain SwiGLU: all without experts, else those in mlp_only_layers and, with
    decoder_sparse_step s, those i with (i + 1) % s != 0."""
    n, step, only = hf["num_hidden_layers"], hf.get("decoder_sparse_step") or 1, hf.get("mlp_only_layers") or []
    if hf.get("num_experts", 512) == 0:
        return set(range(n))
    return {i for i in range(n) if i in only or (i + 1) % step}


def mixture(hf: dict) -> dict[str, Any]:
    hidden, shared = hf.get("moe_intermediate_size", 512), hf.get("shared_expert_intermediate_size", 512)
    if shared <= 0 or shared % hidden:
        raise ValueError(
            f"shared_expert_intermediate_size = {shared} is not supported for {hf['model_type']} (gptzoo's shared "
            f"expert is a whole number of experts, {hidden} wide each: moe_intermediate_size)"
        )
    return {
        "name": "moe",
        "scoring": "softmax",
        "n_experts": hf.get("num_experts", 512),
        "top_k": hf.get("num_experts_per_tok", 10),
        "hidden": hidden,
        "normalize_top_k": hf.get("norm_topk_prob", True),
        "n_shared_experts": shared // hidden,
        "shared_expert_gate": True,
        "balance_loss_weight": hf.get("router_aux_loss_coef", 0.001),
    }


def hybrid_kinds(types: list[str], dense: set[int], linear: dict, swiglu: dict) -> dict[str, Any]:
    """The layer kinds of a hybrid with layer_types (linear_attention, full_attention): ``linear``, the
    linear-attention layers' components, and ``full``; where some layers have a SwiGLU (``dense``) and the
    others experts, those are kinds of their own (``linear_dense``, ``full_dense``)."""
    mixed = len(dense) not in (0, len(types))
    names = [KINDS[t] + ("_dense" if mixed and i in dense else "") for i, t in enumerate(types)]
    kinds = {
        "linear": linear,
        "full": {},
        "linear_dense": linear | {"feed_forward": swiglu},
        "full_dense": {"feed_forward": swiglu},
    }
    return {"layer_pattern": period(names), "layer_kinds": {k: v for k, v in kinds.items() if k in names}}


def layer_components(model: dict) -> tuple[list[dict], list[dict]]:
    """Each layer's token mixer and feed-forward of a [model] table; ValueError for a feed-forward other than
    the mixtures' and SwiGLU's (the hybrids' families have no other)."""
    pattern, kinds = model.get("layer_pattern") or [], model.get("layer_kinds") or {}
    layers = [kinds.get(pattern[i % len(pattern)], {}) if pattern else {} for i in range(model["n_layers"])]
    feed_forwards = [k.get("feed_forward") or model["feed_forward"] for k in layers]
    other = next((f["name"] for f in feed_forwards if f["name"] not in ("moe", "swiglu")), None)
    if other is not None:
        raise ValueError(f"feed_forward '{other}' has no counterpart in this family (moe or swiglu)")
    return [k.get("attention") or model["attention"] for k in layers], feed_forwards


def linear_kind(hf: dict) -> dict[str, Any]:
    """The linear-attention layers' kind: Gated DeltaNet of the linear_* keys, without positions."""
    deltanet = {
        "name": "gated_deltanet",
        "num_heads": hf.get("linear_num_value_heads", 32),
        "num_k_heads": hf.get("linear_num_key_heads", 16),
        "head_k_dim": hf.get("linear_key_head_dim", 128),
        "head_v_dim": hf.get("linear_value_head_dim", 128),
        "conv_size": hf.get("linear_conv_kernel_dim", 4),
        "norm_eps": hf.get("rms_norm_eps", 1e-6),
    }
    return {"positional": {"name": "none"}, "attention": deltanet}


def write_linear_layers(model: dict, family: str) -> dict[str, Any]:
    """layer_types and the linear_* keys of a [model] table's Gated DeltaNet and attention layers."""
    mixers, _ = layer_components(model)
    types = []
    for mixer in mixers:
        if mixer["name"] not in ("gated_deltanet", "sdpa"):
            raise ValueError(f"attention '{mixer['name']}' has no {family} counterpart (gated_deltanet or sdpa)")
        types.append("linear_attention" if mixer["name"] == "gated_deltanet" else "full_attention")
    hf: dict[str, Any] = {"layer_types": types}
    deltanet = next((m for m in mixers if m["name"] == "gated_deltanet"), None)
    if deltanet is not None:
        key_dim = deltanet.get("head_k_dim") or model["head_dim"]
        hf |= {
            "linear_num_value_heads": deltanet.get("num_heads") or model["n_heads"],
            "linear_num_key_heads": deltanet.get("num_k_heads") or model["n_kv_heads"],
            "linear_key_head_dim": key_dim,
            "linear_value_head_dim": deltanet.get("head_v_dim") or key_dim,
            "linear_conv_kernel_dim": deltanet["conv_size"],
        }
    return hf


def _read_layers(hf: dict) -> dict[str, Any]:
    """Gated DeltaNet or gated attention per layer_types; a mixture of experts, or a SwiGLU on the dense layers."""
    types, dense = layer_types(hf), _dense_layers(hf)
    swiglu = {"name": "swiglu", "hidden": hf.get("intermediate_size", 5632), "bias": False}
    return hybrid_kinds(types, dense, linear_kind(hf), swiglu) | {
        "feed_forward": swiglu if len(dense) == len(types) else mixture(hf)
    }


def _write_layers(model: dict) -> dict[str, Any]:
    _, feed_forwards = layer_components(model)
    hf = write_linear_layers(model, "qwen3_next") | {"decoder_sparse_step": 1}
    moe = next((f for f in feed_forwards if f["name"] == "moe"), None)
    dense = [i for i, f in enumerate(feed_forwards) if f["name"] != "moe"]
    swiglu = next((f for f in feed_forwards if f["name"] != "moe"), None)
    hf["mlp_only_layers"] = dense if moe is not None else []
    if swiglu is not None:
        hf["intermediate_size"] = swiglu["hidden"]
    if moe is None:
        return hf | {"num_experts": 0}
    return hf | {
        "num_experts": moe["n_experts"],
        "num_experts_per_tok": moe["top_k"],
        "moe_intermediate_size": moe["hidden"],
        "shared_expert_intermediate_size": moe["n_shared_experts"] * moe["hidden"],
        "norm_topk_prob": moe["normalize_top_k"],
        "router_aux_loss_coef": moe["balance_loss_weight"],
    }


def key_heads(model: ModelConfig, i: int) -> int:
    """The query/key heads of layer i's Gated DeltaNet: the groups of its fused projections."""
    return model.layer(i).attention.params.num_k_heads or model.dims().n_kv_heads


def _layer(name: str) -> str:
    return f"model.layers.{{i}}.{name}"


LINEAR = "model.layers.{i}.linear_attn"
ATTENTION = "model.layers.{i}.self_attn"

# What Qwen3-Next and Qwen3.5 share: the gated attention layers (q_proj holding each head's query rows, then
# its gate's), the Gated DeltaNet's convolution, decay and output, the dense SwiGLU, norms, embedding and head.
GATED_ATTENTION_WEIGHTS = (
    Weight("token_embedding.weight", ("model.embed_tokens.weight",)),
    Weight("blocks.{i}.attn_norm.weight", (_layer("input_layernorm.weight"),)),
    Weight("blocks.{i}.ffn_norm.weight", (_layer("post_attention_layernorm.weight"),)),
    *(
        Weight(
            f"blocks.{{i}}.attention.qkv.{p}",
            (f"{ATTENTION}.q_proj.{p}[query]", f"{ATTENTION}.k_proj.{p}", f"{ATTENTION}.v_proj.{p}"),
            "rows",
            qkv_rows,
        )
        for p in ("weight", "bias")
    ),
    *(Weight(f"blocks.{{i}}.attention.gate_proj.{p}", (f"{ATTENTION}.q_proj.{p}[gate]",)) for p in ("weight", "bias")),
    *(
        Weight(
            f"blocks.{{i}}.attention.out_proj.{p}", (f"{ATTENTION}.o_proj.{p}",), when="blocks.{i}.attention.qkv.weight"
        )
        for p in ("weight", "bias")
    ),
    Weight("blocks.{i}.attention.qk_norm.q_norm", (f"{ATTENTION}.q_norm.weight",)),
    Weight("blocks.{i}.attention.qk_norm.k_norm", (f"{ATTENTION}.k_norm.weight",)),
    Weight("blocks.{i}.attention.conv1d.conv.weight", (f"{LINEAR}.conv1d.weight",)),
    Weight("blocks.{i}.attention.A_log", (f"{LINEAR}.A_log",)),
    Weight("blocks.{i}.attention.dt_bias", (f"{LINEAR}.dt_bias",)),
    Weight("blocks.{i}.attention.o_norm.weight", (f"{LINEAR}.norm.weight",)),
    Weight(
        "blocks.{i}.attention.out_proj.weight",
        (f"{LINEAR}.out_proj.weight",),
        when="blocks.{i}.attention.q_proj.weight",
    ),
    *(
        Weight(f"blocks.{{i}}.feed_forward.{ours}.weight", (f"model.layers.{{i}}.mlp.{theirs}.weight",))
        for ours, theirs in (("gate_proj", "gate_proj"), ("up_proj", "up_proj"), ("out_proj", "down_proj"))
    ),
    Weight("final_norm.weight", ("model.norm.weight",)),
    Weight("head.weight", ("lm_head.weight",)),
)
# the experts, and the shared expert with its sigmoid gate
GATED_SHARED_EXPERT_WEIGHTS = (
    *expert_weights("model.layers.{i}.mlp", "gate_proj", "up_proj", "down_proj"),
    *(
        Weight(
            f"blocks.{{i}}.feed_forward.shared.{ours}.weight",
            (f"model.layers.{{i}}.mlp.shared_expert.{theirs}.weight",),
        )
        for ours, theirs in (("gate_proj", "gate_proj"), ("up_proj", "up_proj"), ("out_proj", "down_proj"))
    ),
    Weight("blocks.{i}.feed_forward.shared_gate.weight", ("model.layers.{i}.mlp.shared_expert_gate.weight",)),
)
GATED_QUERIES = tuple(
    Fused(
        f"{ATTENTION}.q_proj.{p}",
        (f"{ATTENTION}.q_proj.{p}[query]", f"{ATTENTION}.q_proj.{p}[gate]"),
        lambda model, i: model.n_heads,
    )
    for p in ("weight", "bias")
)
QWEN3_NEXT_WEIGHTS = (
    GATED_ATTENTION_WEIGHTS
    + (
        *(
            Weight(f"blocks.{{i}}.attention.{ours}.weight", (f"{LINEAR}.in_proj_qkvz.weight[{part}]",))
            for ours, part in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("g_proj", "z"))
        ),
        Weight("blocks.{i}.attention.b_proj.weight", (f"{LINEAR}.in_proj_ba.weight[b]",)),
        Weight("blocks.{i}.attention.a_proj.weight", (f"{LINEAR}.in_proj_ba.weight[a]",)),
    )
    + GATED_SHARED_EXPERT_WEIGHTS
)


def _mtp_block_mismatch(hf: dict) -> str | None:
    last = layer_types(hf)[-1]
    if last == "full_attention":
        return None
    return f"its MTP layer is a full_attention layer, which gptzoo builds as the model's last layer: {last} here"


def _read_mtp_embedding(hf: dict, table: dict) -> dict[str, Any]:
    """mtp_use_dedicated_embeddings: the module embeds the tokens ahead with a table of its own, mtp.embed_tokens (as
    the published loaders that read the key take it); every published config.json has false."""
    dedicated = hf.get("mtp_use_dedicated_embeddings", False)
    if dedicated not in (True, False):
        raise ValueError(f"mtp_use_dedicated_embeddings = {json.dumps(dedicated)} is not supported (true or false)")
    return {"own_embedding": dedicated}


MTP = replace(
    QWEN3_NEXT_MTP,
    block_mismatch=_mtp_block_mismatch,
    read=_read_mtp_embedding,
    write=lambda model: {"mtp_use_dedicated_embeddings": model["mtp"]["own_embedding"]},
    settings="`mtp_use_dedicated_embeddings` (false when absent) is `mtp.own_embedding`, the table `mtp.embed_tokens`",
)
# the MTP module's own embedding, with mtp_use_dedicated_embeddings
MTP_EMBEDDING = (Weight("mtp.token_embedding.weight", ("mtp.embed_tokens.weight",)),)
# the MTP module's decoder layer is mtp.layers.0, a gated attention layer with its q_proj fused as the model's
MTP_LAYER_WEIGHTS = tuple(w for w in QWEN3_NEXT_WEIGHTS if not any(t.startswith(LINEAR) for t in w.theirs))
MTP_QUERIES = tuple(
    Fused(
        f.name.replace("model.layers.", "mtp.layers."),
        tuple(p.replace("model.layers.", "mtp.layers.") for p in f.parts),
        f.groups,
    )
    for f in GATED_QUERIES
)

QWEN3_NEXT = Family(
    model_type="qwen3_next",
    architecture="Qwen3NextForCausalLM",
    fields=(
        Field("vocab_size", ("vocab_size",), 151936),
        Field("hidden_size", ("d_model",), 2048),
        Field("num_hidden_layers", ("n_layers",), 48),
        Field("num_attention_heads", ("n_heads",), 16),
        Field("num_key_value_heads", ("n_kv_heads",), 2),
        Field("head_dim", ("head_dim",), 256),
        Field("max_position_embeddings", ("context_length",), 32768),
        Field("rms_norm_eps", ("norm.eps", "attention.qk_norm_eps"), 1e-6),
        Field("rope_parameters.rope_theta", ("positional.base",), 10000.0),
        Field("rope_parameters.partial_rotary_factor", ("positional.fraction",), 0.25),
        Field("attention_bias", ("qkv_bias", "attn_out_bias"), False),
        Field("tie_word_embeddings", ("tied_head",), False),
    ),
    # Pre-norm layers whose RMSNorms (and per-head QK-norms) scale by 1 + weight; attention with rotary on
    # the first quarter of each head and a sigmoid gate per output feature; Gated DeltaNet without
    # positions, its output normed per head and gated by SiLU.
    assembly={
        "positional": {"name": "rope"},
        "attention": {
            "name": "sdpa",
            "qk_norm": "per_head",
            "qk_norm_unit_offset": True,
            "output_gate": "elementwise",
        },
        "norm": {"name": "rmsnorm", "unit_offset": True},
        "block": {"name": "pre_norm"},
        "head": {"name": "lm"},
    },
    requires=(SILU,),
    weights=QWEN3_NEXT_WEIGHTS + mtp_weights(MTP_LAYER_WEIGHTS, QWEN3_NEXT_OWN, "mtp.layers.{i}.") + MTP_EMBEDDING,
    conversions=(Conversion(_read_layers, _write_layers), ROPE_SCALING, mtp_conversion(MTP)),
    fused=(
        Fused(f"{LINEAR}.in_proj_qkvz.weight", tuple(f"{LINEAR}.in_proj_qkvz.weight[{p}]" for p in "qkvz"), key_heads),
        Fused(f"{LINEAR}.in_proj_ba.weight", tuple(f"{LINEAR}.in_proj_ba.weight[{p}]" for p in "ba"), key_heads),
        *GATED_QUERIES,
        *MTP_QUERIES,
    ),
    mtp=MTP,
)
