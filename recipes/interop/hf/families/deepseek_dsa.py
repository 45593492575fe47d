"""DeepSeek-V3.2 (deepseek_v32) and GLM-5 (glm_moe_dsa): DeepSeek-V3's layers with DeepSeek Sparse Attention,
a lightning indexer in each attention layer choosing every query's ``index_topk`` keys (gptzoo's
``sparse_latent`` attention). V3.2's indexer rotates halves, GLM-5's interleaved pairs; both attentions
rotate interleaved pairs whatever ``rope_interleave`` says (transformers reads no such key for either).
GLM-5 can let a layer reuse the latest earlier one's choice (``indexer_types`` "shared"): the attention's
``shared_index_layers``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from gptzoo.recipes.interop.hf.families.base import Conversion, Family, Field, Weight
from gptzoo.recipes.interop.hf.families.deepseek import (
    DEEPSEEK_V3,
    DEEPSEEK_WEIGHTS,
    _read_deepseek_rope,
    _write_deepseek_rope,
    first_dense_layers,
    write_first_dense,
)
from gptzoo.recipes.interop.hf.families.moe import dense_layers
from gptzoo.recipes.interop.hf.families.mtp import DEEPSEEK_MTP, MTP_CONVERSION, mtp_weights

DSA_WEIGHTS = DEEPSEEK_WEIGHTS + tuple(
    Weight(f"blocks.{{i}}.attention.indexer.{name}", (f"model.layers.{{i}}.self_attn.indexer.{name}",))
    for name in ("wq_b.weight", "wk.weight", "k_norm.weight", "k_norm.bias", "weights_proj.weight")
)


def _dense_layers(hf: dict) -> list[int]:
    """``mlp_layer_types`` ("dense" or "sparse" per layer) where given, else the first_k_dense_replace first ones."""
    types = hf.get("mlp_layer_types")
    if types is None:
        return first_dense_layers(hf)
    if len(types) != hf["num_hidden_layers"] or set(types) - {"dense", "sparse"}:
        raise ValueError(
            f"mlp_layer_types = {types} is not supported: gptzoo reads {hf['num_hidden_layers']} entries of dense or sparse"
        )
    return [i for i, kind in enumerate(types) if kind == "dense"]


def _write_dense_layers(layers: list[int], n: int) -> dict[str, Any]:
    return write_first_dense(layers, n) | {"mlp_layer_types": ["dense" if i in layers else "sparse" for i in range(n)]}


def _read_rope(hf: dict) -> dict[str, Any]:
    return _read_deepseek_rope(hf | {"rope_interleave": True})


def _write_rope(model: dict) -> dict[str, Any]:
    return {k: v for k, v in _write_deepseek_rope(model).items() if k != "rope_interleave"}


ROPE = Conversion(_read_rope, _write_rope)


def _deepseek_fields(**defaults: Any) -> tuple[Field, ...]:
    """DeepSeek-V3's fields with this family's defaults, and the indexer's three."""
    fields = tuple(replace(f, default=defaults[f.hf]) if f.hf in defaults else f for f in DEEPSEEK_V3.fields)
    return fields + (
        Field("index_topk", ("attention.index_topk",), defaults.get("index_topk", 2048)),
        Field("index_n_heads", ("attention.index_heads",), defaults.get("index_n_heads", 64)),
        Field("index_head_dim", ("attention.index_head_dim",), defaults.get("index_head_dim", 128)),
    )


# DeepSeek-V3's options (the rope types, no attention bias, floating-point weights); V3.2's config
# keeps no scoring_func, topk_method or moe_layer_freq: it is always DeepSeek-V3's sigmoid noaux_tc
REQUIRES = tuple(
    r
    for r in DEEPSEEK_V3.requires
    if r.hf in ("hidden_act", "rope_parameters.rope_type", "attention_bias", "quantization_config")
)


def _assembly(layout: str) -> dict[str, Any]:
    return DEEPSEEK_V3.assembly | {
        "positional": {"name": "rope", "layout": "interleaved"},
        "attention": {"name": "sparse_latent", "index_rope_layout": layout},
    }


DEEPSEEK_V32 = Family(
    model_type="deepseek_v32",
    architecture="DeepseekV32ForCausalLM",
    fields=_deepseek_fields(q_lora_rank=1536),
    assembly=_assembly("halves"),
    requires=REQUIRES,
    weights=DSA_WEIGHTS + mtp_weights(DSA_WEIGHTS),
    conversions=(dense_layers(_dense_layers, _write_dense_layers), ROPE, MTP_CONVERSION),
    ignored=DEEPSEEK_V3.ignored,
    mtp=DEEPSEEK_MTP,
)


def _indexer_types(hf: dict) -> list[str]:
    """GLM-5's per-layer indexer modes as transformers derives them: ``indexer_types``, else from
    ``index_topk_pattern`` ("F"/"S" per layer), else every ``index_topk_freq``-th layer after
    ``index_skip_topk_offset`` runs its own ("full"), the others reuse the last one's choice ("shared")."""
    if hf.get("indexer_types") is not None:
        return list(hf["indexer_types"])
    pattern = hf.get("index_topk_pattern")
    if pattern is not None:
        return [{"F": "full", "S": "shared"}.get(c, c) for c in pattern] if isinstance(pattern, str) else list(pattern)
    freq, offset = max(hf.get("index_topk_freq", 1), 1), hf.get("index_skip_topk_offset", 2)
    return ["full" if max(i - offset + 1, 0) % freq == 0 else "shared" for i in range(hf["num_hidden_layers"])]


def _read_indexer_types(hf: dict) -> dict[str, Any]:
    """The "shared" layers, which run no indexer and reuse the latest earlier "full" layer's choice."""
    types, n = _indexer_types(hf), hf["num_hidden_layers"]
    if len(types) != n or set(types) - {"full", "shared"} or types[:1] != ["full"]:
        key = next(k for k in ("indexer_types", "index_topk_pattern", "index_topk_freq") if hf.get(k) is not None)
        raise ValueError(
            f"{key} = {json.dumps(hf[key])} is not supported for glm_moe_dsa (gptzoo reads {n} layers of "
            '"full" or "shared", the first "full": a "shared" layer reuses an earlier layer\'s chosen keys)'
        )
    shared = [i for i, kind in enumerate(types) if kind == "shared"]
    return {"attention.shared_index_layers": shared} if shared else {}


def _write_indexer_types(model: dict) -> dict[str, Any]:
    shared = set(model["attention"].get("shared_index_layers") or ())
    return {"indexer_types": ["shared" if i in shared else "full" for i in range(model["n_layers"])]}


def _mtp_block_mismatch(hf: dict) -> str | None:
    if _indexer_types(hf)[-1:] != ["shared"]:
        return None
    return (
        "gptzoo builds its MTP layer as the model's last layer, which reuses an earlier layer's chosen keys here "
        '(indexer_types "shared"), where an MTP layer has none before it'
    )


GLM_MOE_DSA = Family(
    model_type="glm_moe_dsa",
    architecture="GlmMoeDsaForCausalLM",
    fields=_deepseek_fields(
        q_lora_rank=2048,
        qk_nope_head_dim=192,
        v_head_dim=256,
        rms_norm_eps=1e-5,
        n_group=1,
        topk_group=1,
        index_n_heads=32,
    ),
    assembly=_assembly("interleaved"),
    requires=REQUIRES,
    weights=DEEPSEEK_V32.weights,
    conversions=DEEPSEEK_V32.conversions + (Conversion(_read_indexer_types, _write_indexer_types),),
    ignored=DEEPSEEK_V3.ignored,
    mtp=replace(DEEPSEEK_MTP, block_mismatch=_mtp_block_mismatch),
)
