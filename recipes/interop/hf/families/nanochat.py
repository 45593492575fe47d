"""nanochat (Karpathy's): Llama's attention with weightless norms everywhere, the token embeddings
normalised too, rotary turned the other way, a squared-ReLU MLP and soft-capped logits."""

from __future__ import annotations

from typing import Any

from gptzoo.recipes.interop.hf.families.base import Conversion, Family, Field, Require, Weight
from gptzoo.recipes.interop.hf.families.llama import LLAMA_FIELDS, LLAMA_WEIGHTS


def _read_softcap(hf: dict) -> dict[str, Any]:
    # NanoChatConfig's default is 15 when the key is absent; a null in config.json means no cap
    return {"head.softcap": hf.get("final_logit_softcapping", 15.0)}


def _write_softcap(model: dict) -> dict[str, Any]:
    return {"final_logit_softcapping": model["head"].get("softcap")}


NANOCHAT = Family(
    model_type="nanochat",
    architecture="NanoChatForCausalLM",
    fields=tuple(f for f in LLAMA_FIELDS if f.hf != "rms_norm_eps")
    + (
        Field("rms_norm_eps", ("norm.eps", "attention.qk_norm_eps"), 1e-6),
        Field("attention_bias", ("qkv_bias", "attn_out_bias"), False),
    ),
    # One weightless RMSNorm (NanoChatRMSNorm) on the embeddings, before each sublayer, at the end, and on
    # each head's queries and keys. nanochat normalises queries and keys after rotary, gptzoo before: the same,
    # since a rotation keeps each head's RMS. Its rotate_half is Llama's negated: rotary turned the other way.
    assembly={
        "positional": {"name": "rope", "reverse": True},
        "attention": {"name": "sdpa", "qk_norm": "per_head", "qk_norm_weight": False},
        "feed_forward": {"name": "squared_relu", "bias": False},
        "norm": {"name": "rmsnorm", "scale": False},
        "block": {"name": "pre_norm"},
        "head": {"name": "lm"},
        "embedding_norm": True,
    },
    requires=(
        Require("hidden_act", ("relu2",), "relu2", "the MLP is gptzoo's squared_relu"),
        Require(
            "rope_parameters.rope_type",
            ("default",),
            "default",
            "nanochat normalises queries and keys after rotary and gptzoo before, the same only for a plain "
            "rotation (a scaled one, as YaRN's, changes their size)",
        ),
    ),
    weights=tuple(w for w in LLAMA_WEIGHTS if "norm" not in w.ours and ".feed_forward." not in w.ours)
    + (
        Weight("blocks.{i}.feed_forward.in_proj.weight", ("model.layers.{i}.mlp.fc1.weight",)),
        Weight("blocks.{i}.feed_forward.out_proj.weight", ("model.layers.{i}.mlp.fc2.weight",)),
    ),
    conversions=(Conversion(_read_softcap, _write_softcap),),
)
