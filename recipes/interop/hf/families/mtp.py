"""DeepSeek-V3's multi-token prediction layers in checkpoints (``num_nextn_predict_layers``).

MTP module k is stored as layer ``num_hidden_layers + k`` of ``model.layers``: a decoder layer of
the model's last kind plus ``enorm``, ``hnorm``, ``eh_proj``, ``shared_head.norm``, and copies of
the embedding (``embed_tokens``) and of the head (``shared_head.head``), which gptzoo shares with
the model as the paper does (import reads the model's; export writes the copies back). transformers
skips these tensors when it loads the model; import keeps them as ``model.mtp`` whenever the
checkpoint holds them, so a config alone (a preset) describes the model without them.
"""

from __future__ import annotations

import re
from typing import Any

from gptzoo.recipes.interop.hf.families.base import Conversion, Weight

# The copies of the embedding and the head each MTP layer stores.
SHARED_COPIES = r"model\.layers\.\d+\.(embed_tokens|shared_head\.head)\.weight"


def mtp_weights(weights: tuple[Weight, ...]) -> tuple[Weight, ...]:
    """The rows of MTP module i (layer {m} = n_layers + i): its own tensors and the block's, named as the layers'."""
    own = tuple(
        Weight(f"mtp.layers.{{i}}.{ours}", (f"model.layers.{{m}}.{theirs}",))
        for ours, theirs in (
            ("enorm.weight", "enorm.weight"),
            ("hnorm.weight", "hnorm.weight"),
            ("eh_proj.weight", "eh_proj.weight"),
            ("norm.weight", "shared_head.norm.weight"),
        )
    )
    block = tuple(
        Weight(
            w.ours.replace("blocks.{i}.", "mtp.layers.{i}.block.", 1),
            tuple(t.replace("model.layers.{i}.", "model.layers.{m}.") for t in w.theirs),
            w.layout,
            w.rows,
            w.chunk,
            w.when.replace("blocks.{i}.", "mtp.layers.{i}.block.") if w.when else None,
        )
        for w in weights
        if w.ours.startswith("blocks.{i}.")
    )
    return own + block


def _write(model: dict) -> dict[str, Any]:
    return {"num_nextn_predict_layers": model["mtp"]["depth"]} if model.get("mtp") else {}


# Read from the weights, not config.json (see add_held_mtp); written as the module's depth.
MTP_CONVERSION = Conversion(lambda hf: {}, _write)


def add_held_mtp(table: dict, hf: dict, stored: dict, prefix: str) -> None:
    """Give ``table`` config.json's num_nextn_predict_layers MTP modules when the ``stored`` tensors hold them."""
    depth, n = hf.get("num_nextn_predict_layers") or 0, hf["num_hidden_layers"]
    layer = re.compile(rf"({re.escape(prefix)})?layers\.{n}\.")
    if depth and any(layer.match(key) and not re.fullmatch(SHARED_COPIES, key) for key in stored):
        table["mtp"] = {"name": "sequential", "depth": depth}


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
