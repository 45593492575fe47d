"""DeepSeek-V3's multi-token prediction layers in checkpoints (``num_nextn_predict_layers``).

MTP module k is stored as layer ``num_hidden_layers + k`` of ``model.layers``: a decoder layer of
the model's last kind plus ``enorm``, ``hnorm``, ``eh_proj``, ``shared_head.norm``, and copies of
the embedding (``embed_tokens``) and of the head (``shared_head.head``), which gptzoo shares with
the model as the paper does (import reads the model's; export writes the copies back). transformers
skips these tensors when it loads the model; import keeps them as ``model.mtp`` whenever the
checkpoint holds them, so a config alone (a preset) describes the model without them.

Qwen3-Next keeps its module under names of its own (``mtp.*``, counted by ``mtp_num_hidden_layers``):
``fc``, ``pre_fc_norm_embedding``, ``pre_fc_norm_hidden``, ``layers.0`` and ``norm``, without copies.
Each family's ``MtpLayout`` says which layout its checkpoints use.
"""

from __future__ import annotations

import re
from typing import Any

from gptzoo.core import Dims, ModelConfig
from gptzoo.recipes.interop.hf.families.base import Conversion, MtpLayout, Weight

# The copies of the embedding and the head each MTP layer stores.
SHARED_COPIES = r"model\.layers\.\d+\.(embed_tokens|shared_head\.head)\.weight"
DEEPSEEK_MTP = MtpLayout("num_nextn_predict_layers", r"({prefix})?layers\.{n}\.", shared_copies=True)
# One fc and pair of norms before all of Qwen3-Next's MTP layers: one module of gptzoo's, so depth 1 only.
QWEN3_NEXT_MTP = MtpLayout("mtp_num_hidden_layers", r"mtp\.", shared_copies=False, max_depth=1)

# gptzoo's names in an MTP module -> DeepSeek-V3's in layer {m} = n_layers + i
DEEPSEEK_OWN = (
    ("enorm.weight", "model.layers.{m}.enorm.weight"),
    ("hnorm.weight", "model.layers.{m}.hnorm.weight"),
    ("eh_proj.weight", "model.layers.{m}.eh_proj.weight"),
    ("norm.weight", "model.layers.{m}.shared_head.norm.weight"),
)
QWEN3_NEXT_OWN = (
    ("enorm.weight", "mtp.pre_fc_norm_embedding.weight"),
    ("hnorm.weight", "mtp.pre_fc_norm_hidden.weight"),
    ("eh_proj.weight", "mtp.fc.weight"),
    ("norm.weight", "mtp.norm.weight"),
)


def mtp_weights(
    weights: tuple[Weight, ...], own: tuple[tuple[str, str], ...] = DEEPSEEK_OWN, layer: str = "model.layers.{m}."
) -> tuple[Weight, ...]:
    """The rows of MTP module i: its ``own`` tensors, and its block's as the family's layer i's with
    ``model.layers.{i}.`` replaced by ``layer`` (DeepSeek-V3's: layer {m} = n_layers + i)."""
    mine = tuple(Weight(f"mtp.layers.{{i}}.{ours}", (theirs,)) for ours, theirs in own)
    block = tuple(
        Weight(
            w.ours.replace("blocks.{i}.", "mtp.layers.{i}.block.", 1),
            tuple(t.replace("model.layers.{i}.", layer) for t in w.theirs),
            w.layout,
            w.rows,
            w.chunk,
            w.when.replace("blocks.{i}.", "mtp.layers.{i}.block.") if w.when else None,
        )
        for w in weights
        if w.ours.startswith("blocks.{i}.")
    )
    return mine + block


def mtp_conversion(layout: MtpLayout) -> Conversion:
    """Read from the weights, not config.json (see add_held_mtp); written as the module's depth."""

    def write(model: dict) -> dict[str, Any]:
        depth = model["mtp"]["depth"] if model.get("mtp") else 0
        if layout.max_depth is not None and depth > layout.max_depth:
            raise ValueError(f"mtp depth {depth} has no counterpart (the family's checkpoints hold {layout.max_depth})")
        if not depth:
            return {}
        return {layout.depth_key: depth} | (layout.write(model) if layout.write is not None else {})

    return Conversion(lambda hf: {}, write)


MTP_CONVERSION = mtp_conversion(DEEPSEEK_MTP)


def add_held_mtp(table: dict, hf: dict, stored: dict, prefix: str, layout: MtpLayout) -> None:
    """Give ``table`` config.json's count of MTP modules when the ``stored`` tensors hold them (``layout``:
    where); ValueError for more than the layout's modules express."""
    depth, n = hf.get(layout.depth_key) or 0, hf["num_hidden_layers"]
    held = re.compile(layout.held.replace("{prefix}", re.escape(prefix)).replace("{n}", str(n)))
    if depth and any(held.match(key) and not re.fullmatch(SHARED_COPIES, key) for key in stored):
        add_mtp(table, hf, layout)


def add_mtp(table: dict, hf: dict, layout: MtpLayout) -> None:
    """Give ``table`` the MTP modules config.json describes (``layout``: how); ValueError for more than the
    layout's modules express or for settings gptzoo does not implement."""
    depth = hf.get(layout.depth_key) or 0
    if layout.max_depth is not None and depth > layout.max_depth:
        raise ValueError(
            f"{layout.depth_key} = {depth} is not supported for {hf['model_type']} (its MTP layers share one fc "
            f"and norms, which gptzoo's sequential modules do not; gptzoo reads {layout.max_depth})"
        )
    why = layout.block_mismatch(hf) if layout.block_mismatch is not None else None
    if why is not None:
        raise ValueError(f"the checkpoint's MTP layers are not supported for {hf['model_type']} ({why})")
    table["mtp"] = {"name": "sequential", "depth": depth} | (layout.read(hf, table) if layout.read is not None else {})


def mtp_dims(model: ModelConfig) -> Dims | None:
    """The dimensions of ``model``'s multi-token prediction blocks (their layer kind's), None without them."""
    return model.kind_dims(model.mtp_layer().kind) if model.mtp is not None else None


def shared_copies(specs: dict, depth: int, n_layers: int, tied: bool) -> dict:
    """Export's specs for the copies of the embedding and head each of ``depth`` MTP layers stores."""
    embedding, head = (
        specs["model.embed_tokens.weight"],
        specs["model.embed_tokens.weight" if tied else "lm_head.weight"],
    )
    return {
        f"model.layers.{n_layers + k}.{name}": spec
        for k in range(depth)
        for name, spec in (("embed_tokens.weight", embedding), ("shared_head.head.weight", head))
    }
