"""The Hugging Face model families gptzoo reads and writes, each as data.

A family is four tables:

- ``fields``: a Hugging Face config.json key <-> the gptzoo [model] path(s) holding the same
  number (``hidden_size`` <-> ``d_model``), with the value transformers assumes when the key is
  absent. Both directions read the same table.
- ``assembly``: what the family always is in gptzoo terms (the plugins and their fixed
  settings: ``positional.name = "rope"``, ``feed_forward.name = "swiglu"``, ...).
- ``requires``: Hugging Face options gptzoo implements at some values only (``hidden_act``
  must be ``silu``); another value is refused, naming the key, the value and why.
- ``weights``: gptzoo tensor names <-> Hugging Face tensor names, ``{i}`` standing for the
  layer; several Hugging Face tensors may be stacked into one of gptzoo's (query, key and
  value rows into ``qkv``), and GPT-2 stores its Conv1D weights transposed.

gptzoo.recipes.interop.hf.convert, .import_ and .export do the rest for every family alike: checks, streaming, run folders, export.

One module per family group (a family and those built from its rows), the types and shared
helpers in ``base``; this module assembles ``FAMILIES``. How to add one: ../README.md.
"""

from gptzoo.recipes.interop.hf.families.afmoe import AFMOE
from gptzoo.recipes.interop.hf.families.base import (
    MISSING,
    REQUIRED,
    Constant,
    Conversion,
    Family,
    Field,
    Fused,
    Require,
    Weight,
    constant_values,
    deinterleave,
    fuse_shapes,
    fusions,
    hf_shapes,
    interleave,
    layer_of,
    qkv_rows,
    row_axis,
    to_ours,
    to_theirs,
    weight_plan,
)
from gptzoo.recipes.interop.hf.families.cohere import COHERE2
from gptzoo.recipes.interop.hf.families.deepseek import DEEPSEEK_V3
from gptzoo.recipes.interop.hf.families.deepseek_dsa import DEEPSEEK_V32, GLM_MOE_DSA
from gptzoo.recipes.interop.hf.families.falcon_h1 import FALCON_H1
from gptzoo.recipes.interop.hf.families.gemma import GEMMA2, GEMMA3_TEXT
from gptzoo.recipes.interop.hf.families.gemma4 import GEMMA4_TEXT
from gptzoo.recipes.interop.hf.families.glm import GLM4_MOE
from gptzoo.recipes.interop.hf.families.gpt2 import GPT2
from gptzoo.recipes.interop.hf.families.gpt_oss import GPT_OSS
from gptzoo.recipes.interop.hf.families.granite import GRANITEMOEHYBRID
from gptzoo.recipes.interop.hf.families.kimi_linear import KIMI_LINEAR
from gptzoo.recipes.interop.hf.families.lfm2 import LFM2, LFM2_MOE
from gptzoo.recipes.interop.hf.families.llama import APERTUS, LLAMA, MISTRAL, PHI3, QWEN2, QWEN3, SEED_OSS, SMOLLM3
from gptzoo.recipes.interop.hf.families.llama4 import LLAMA4_TEXT
from gptzoo.recipes.interop.hf.families.mamba import BAMBA, MAMBA2
from gptzoo.recipes.interop.hf.families.mimo import MIMO_V2_FLASH
from gptzoo.recipes.interop.hf.families.minimax import MINIMAX, MINIMAX_M2
from gptzoo.recipes.interop.hf.families.moe import MIXTRAL, QWEN3_MOE
from gptzoo.recipes.interop.hf.families.nanochat import NANOCHAT
from gptzoo.recipes.interop.hf.families.nemotron_h import NEMOTRON_H
from gptzoo.recipes.interop.hf.families.neox import GPT_NEOX
from gptzoo.recipes.interop.hf.families.olmo import EXAONE4, OLMO2, OLMO3
from gptzoo.recipes.interop.hf.families.olmo_hybrid import OLMO_HYBRID
from gptzoo.recipes.interop.hf.families.qwen3_5 import QWEN3_5_MOE_TEXT, QWEN3_5_TEXT
from gptzoo.recipes.interop.hf.families.qwen3_next import QWEN3_NEXT
from gptzoo.registry import PluginError, Registry

__all__ = [
    "FAMILIES",
    "MISSING",
    "REQUIRED",
    "all_families",
    "Conversion",
    "Family",
    "Field",
    "Fused",
    "Require",
    "Weight",
    "fuse_shapes",
    "fusions",
    "hf_shapes",
    "layer_of",
    "qkv_rows",
    "row_axis",
    "to_ours",
    "to_theirs",
    "weight_plan",
    "Constant",
    "constant_values",
    "deinterleave",
    "interleave",
]

# model_type -> family; the order is the one export-hf tries a trained run's assembly against
FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        GPT2,
        LLAMA,
        MISTRAL,
        QWEN2,
        QWEN3,
        OLMO2,
        OLMO3,
        EXAONE4,
        PHI3,
        SMOLLM3,
        SEED_OSS,
        APERTUS,
        GEMMA2,
        GEMMA3_TEXT,
        GEMMA4_TEXT,
        GPT_NEOX,
        COHERE2,
        MIXTRAL,
        QWEN3_MOE,
        DEEPSEEK_V3,
        DEEPSEEK_V32,
        LLAMA4_TEXT,
        GLM4_MOE,
        GLM_MOE_DSA,
        MINIMAX_M2,
        MINIMAX,
        GPT_OSS,
        MIMO_V2_FLASH,
        MAMBA2,
        LFM2,
        LFM2_MOE,
        NEMOTRON_H,
        BAMBA,
        FALCON_H1,
        QWEN3_NEXT,
        KIMI_LINEAR,
        GRANITEMOEHYBRID,
        QWEN3_5_TEXT,
        QWEN3_5_MOE_TEXT,
        AFMOE,
        OLMO_HYBRID,
        NANOCHAT,
    )
}


def all_families(registry: Registry) -> dict[str, Family]:
    """The built-in families, then those the registry's plugins add (the ``register_hf_families`` hook)."""
    added = registry.hf_families()
    for model_type, family in added.items():
        if not isinstance(family, Family):
            raise PluginError(
                f"Hugging Face family '{model_type}' from a plugin is a {type(family).__name__}; "
                "register a gptzoo.recipes.interop.hf.families.Family"
            )
        if model_type in FAMILIES:
            raise PluginError(
                f"Hugging Face family '{model_type}' from a plugin is built into gptzoo already; "
                "give the plugin's family another model_type or leave it out"
            )
    return FAMILIES | added
