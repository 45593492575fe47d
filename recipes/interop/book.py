"""The book's GPTModel ("Build a Large Language Model from Scratch", chapter 4) in gptzoo.

The book saves its model with ``torch.save(model.state_dict(), "model.pth")`` (chapter 5;
``model_and_optimizer.pth`` holds it under "model_state_dict"). Its modules map one to one
onto a GPT-2-shaped gptzoo model: learned positions, LayerNorm (``scale``/``shift`` are
``weight``/``bias``), tanh-GELU MLP of 4 × emb_dim, pre-norm, an untied ``out_head`` without
bias. Only the query/key/value projections differ in form: three ``nn.Linear`` (W_query,
W_key, W_value) that gptzoo stacks into one ``qkv`` (rows: query heads, key heads, value
heads, the same layout every attention variant loads). The state dict does not say how many
heads there are (they change no shape), so GPT-2's sizes give the default.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from gptzoo.core import CheckpointError, GptzooError
from gptzoo.recipes.config.schema import RunConfig
from gptzoo.recipes.interop.files import new_folder, refuse_existing, weight_shapes, write_imported_run
from gptzoo.recipes.runs.files import refused_global
from gptzoo.recipes.runs.weights import describe_mismatch
from gptzoo.registry import Registry, default_registry

GPT2_HEADS = {768: 12, 1024: 16, 1280: 20, 1600: 25}  # emb_dim -> n_heads of GPT-2 small, medium, large, xl
BOOK_DROPOUT = 0.1  # drop_rate of the book's GPT_CONFIG_124M

TOP_NAMES = {
    "tok_emb.weight": "token_embedding.weight",
    "pos_emb.weight": "positional.table.weight",
    "final_norm.scale": "final_norm.weight",
    "final_norm.shift": "final_norm.bias",
    "out_head.weight": "head.weight",
}
BLOCK_NAMES = {
    "att.out_proj.weight": "attention.out_proj.weight",
    "att.out_proj.bias": "attention.out_proj.bias",
    "ff.layers.0.weight": "feed_forward.in_proj.weight",
    "ff.layers.0.bias": "feed_forward.in_proj.bias",
    "ff.layers.2.weight": "feed_forward.out_proj.weight",
    "ff.layers.2.bias": "feed_forward.out_proj.bias",
    "norm1.scale": "attn_norm.weight",
    "norm1.shift": "attn_norm.bias",
    "norm2.scale": "ffn_norm.weight",
    "norm2.shift": "ffn_norm.bias",
}
QKV = ("W_query", "W_key", "W_value")
BOOK_BLOCK = re.compile(r"trf_blocks\.(\d+)\.(.+)")


def model_config_data(book_config: dict, attention: str = "sdpa") -> dict:
    """A gptzoo [model] table for one of the book's config dicts (GPT_CONFIG_124M and its kin)."""
    return {
        "vocab_size": book_config["vocab_size"],
        "context_length": book_config["context_length"],
        "d_model": book_config["emb_dim"],
        "n_layers": book_config["n_layers"],
        "n_heads": book_config["n_heads"],
        "dropout": book_config["drop_rate"],
        "qkv_bias": book_config["qkv_bias"],
        "tied_head": False,
        "tokenizer": {"name": "tiktoken", "encoding": "gpt2"},
        "positional": {"name": "learned"},
        "attention": {"name": attention},
        "feed_forward": {"name": "gelu"},
        "norm": {"name": "layernorm", "eps": 1e-5},
        "head": {"name": "lm"},
    }


def book_config_of(state: dict[str, torch.Tensor], n_heads: int | None, dropout: float, source: str) -> dict:
    """The book's config dict a GPTModel state dict was made with (n_heads given or GPT-2's)."""
    for name in ("tok_emb.weight", "pos_emb.weight", "out_head.weight"):
        if name not in state:
            raise CheckpointError(
                f"{source}: not a state dict of the book's GPTModel (no '{name}'); save one with torch.save(model.state_dict(), PATH)"
            )
    if "out_head.bias" in state:
        raise CheckpointError(
            f"{source}: its out_head has a bias, as the book's chapter 6 classifier; import-book reads the language model (chapter 5's model.pth)"
        )
    for name in ("tok_emb.weight", "pos_emb.weight", "out_head.weight"):
        if state[name].dim() != 2:
            raise CheckpointError(
                f"{source}: '{name}' has shape {tuple(state[name].shape)}, not (rows, emb_dim); not the book's GPTModel"
            )
    vocab_size, emb_dim = state["tok_emb.weight"].shape
    blocks = {int(m.group(1)) for name in state if (m := BOOK_BLOCK.fullmatch(name))}
    if n_heads is None:
        if emb_dim not in GPT2_HEADS:
            raise GptzooError(
                f"{source}: emb_dim {emb_dim} is none of GPT-2's sizes, so the number of heads is unknown; give --n-heads"
            )
        n_heads = GPT2_HEADS[emb_dim]
    return {
        "vocab_size": vocab_size,
        "context_length": state["pos_emb.weight"].shape[0],
        "emb_dim": emb_dim,
        "n_heads": n_heads,
        "n_layers": len(blocks),
        "drop_rate": dropout,
        "qkv_bias": "trf_blocks.0.att.W_query.bias" in state,
    }


def gptzoo_name(book_name: str) -> str | None:
    """The gptzoo name of a book tensor (None for the causal-mask buffer and the q/k/v parts,
    which ``from_book_state`` stacks)."""
    if book_name in TOP_NAMES:
        return TOP_NAMES[book_name]
    m = BOOK_BLOCK.fullmatch(book_name)
    if m and m.group(2) in BLOCK_NAMES:
        return f"blocks.{m.group(1)}.{BLOCK_NAMES[m.group(2)]}"
    return None


def from_book_state(state: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """A book GPTModel state dict -> gptzoo's names; W_query, W_key, W_value stacked into qkv."""
    out = {}
    for name, tensor in state.items():
        if (ours := gptzoo_name(name)) is not None:
            out[ours] = tensor
    for i in range(n_layers):
        for kind in ("weight", "bias"):
            parts = [state.get(f"trf_blocks.{i}.att.{w}.{kind}") for w in QKV]
            if all(p is not None for p in parts):
                out[f"blocks.{i}.attention.qkv.{kind}"] = torch.cat(parts, dim=0)  # (3C, C) or (3C,)
    return out


def read_book_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(
            f"{path}: {'a folder, not a file' if path.is_dir() else 'no such file'}; the book saves its model with torch.save(model.state_dict(), 'model.pth')"
        )
    expected = "expected the book's model.pth, saved with torch.save(model.state_dict(), 'model.pth')"
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (
        pickle.UnpicklingError
    ) as err:  # torch's text advises weights_only=False, unsafe for a file from elsewhere: never shown
        if (name := refused_global(err)) is not None:
            raise CheckpointError(
                f"{path}: holds Python objects other than tensors; gptzoo does not unpickle those (it may run code); {expected} "
                f"(this one holds {name}, which unpickling would import and call)"
            ) from None
        raise CheckpointError(
            f"{path}: not a torch checkpoint torch.load(weights_only=True) can read (UnpicklingError); {expected}"
        ) from None
    except Exception as err:  # noqa: BLE001 -- zip and IO failures all mean a file that is no checkpoint
        raise CheckpointError(
            f"{path}: not a torch checkpoint torch.load(weights_only=True) can read ({type(err).__name__}); {expected}"
        ) from None
    if isinstance(loaded, dict) and isinstance(loaded.get("model_state_dict"), dict):
        loaded = loaded["model_state_dict"]  # the book's model_and_optimizer.pth
    if not isinstance(loaded, dict) or not all(isinstance(t, torch.Tensor) for t in loaded.values()):
        raise CheckpointError(
            f"{path}: not a state dict (a dict of tensors); the book saves one with torch.save(model.state_dict(), 'model.pth')"
        )
    return loaded


def import_book(
    src: str | Path,
    out: str | Path,
    *,
    n_heads: int | None = None,
    dropout: float = BOOK_DROPOUT,
    attention: str = "sdpa",
    registry: Registry | None = None,
) -> RunConfig:
    """Convert the book's saved GPTModel (``model.pth``) into the run folder ``out``."""
    src, out = Path(src), Path(out)
    refuse_existing(out)
    state = read_book_state(src)
    book_config = book_config_of(state, n_heads, dropout, str(src))
    config = RunConfig(
        model=(registry or default_registry()).model_config(model_config_data(book_config, attention), str(src))
    )
    ours = from_book_state(state, book_config["n_layers"])
    shapes = weight_shapes(config.model)
    known = {
        f"trf_blocks.{i}.att.{w}.{kind}"
        for i in range(book_config["n_layers"])
        for w in QKV
        for kind in ("weight", "bias")
    }
    unexpected = sorted(
        n
        for n in state
        if gptzoo_name(n) is None and n not in known and not re.fullmatch(r"trf_blocks\.\d+\.att\.mask", n)
    )
    missing = sorted(set(shapes) - set(ours))
    wrong = [
        f"{n} {tuple(ours[n].shape)} vs {shapes[n]}"
        for n in sorted(set(shapes) & set(ours))
        if tuple(ours[n].shape) != shapes[n]
    ]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{src} is not the book's GPTModel as gptzoo reads it: {describe_mismatch(missing, unexpected, wrong)}"
        )
    with new_folder(out) as tmp:
        write_imported_run(tmp, config, shapes, ours.__getitem__, f"import {src.name}", registry)
    return config
