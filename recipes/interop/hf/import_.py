"""A Hugging Face checkpoint folder -> a gptzoo run folder (see recipes/interop/hf/convert.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from gptzoo.core import CheckpointError, GptzooError
from gptzoo.recipes.config.schema import RunConfig
from gptzoo.recipes.interop.files import new_folder, open_safetensors, read_hf_config, refuse_existing, weight_shapes
from gptzoo.recipes.interop.hf.convert import (
    GENERATION_CONFIG,
    INDEX,
    TOKENIZER_CONFIG,
    family_of,
    model_table,
    normalise,
)
from gptzoo.recipes.interop.hf.families import Family, all_families, hf_shapes, to_ours, weight_plan
from gptzoo.recipes.runs.files import CONFIG, TOKENIZER, WEIGHTS, read_json
from gptzoo.recipes.runs.folder import run_commit
from gptzoo.recipes.runs.weights import describe_mismatch, write_safetensors
from gptzoo.registry import Registry, default_registry

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@contextmanager
def open_checkpoint(folder: Path) -> Iterator[dict[str, Any]]:
    """Every tensor name in the folder's safetensors file(s) -> the open file holding it."""
    index = folder / INDEX
    if index.is_file():
        index_data = read_json(index, CheckpointError)
        try:
            files = sorted(set(index_data["weight_map"].values()))
        except (KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(f"{index}: not a safetensors index ({type(err).__name__}: {err})") from None
    elif (folder / WEIGHTS).is_file():
        files = [WEIGHTS]
    else:
        raise CheckpointError(
            f"{folder}: holds neither {WEIGHTS} nor {INDEX}; a Hugging Face checkpoint folder has one of them"
        )
    with ExitStack() as stack:
        stored = {}
        for file in files:
            handle = stack.enter_context(open_safetensors(folder / file))
            stored |= {key: handle for key in handle.keys()}
        yield stored


def _source_name(stored: dict, name: str, prefix: str) -> str | None:
    """``name`` as stored: checkpoints of the bare base model (LlamaModel, GPT2Model) lack its prefix."""
    if name in stored:
        return name
    bare = name.removeprefix(prefix)
    return bare if bare != name and bare in stored else None


# ---- tokenizer files -----------------------------------------------------------------------------


def _read_json(file: Path) -> dict:
    """An optional JSON file of the checkpoint's folder ({} when absent)."""
    return read_hf_config(file) if file.is_file() else {}


def _token(value: Any) -> str | None:
    """tokenizer_config.json writes a special token as its text or as {"content": text, ...}."""
    return value.get("content") if isinstance(value, dict) else value


def read_tokenizer_files(folder: Path, hf: dict) -> tuple[dict | None, str | None]:
    """The ``hf`` tokenizer spec and its state (tokenizer.json's text) from a checkpoint folder; (None, None) without tokenizer.json."""
    file = folder / TOKENIZER
    if not file.is_file():
        return None, None
    state = _read_json(file)
    config = _read_json(folder / TOKENIZER_CONFIG)
    generation = _read_json(folder / GENERATION_CONFIG)
    eos = generation.get("eos_token_id", hf.get("eos_token_id"))
    template = config.get("chat_template")
    chat_file = folder / "chat_template.jinja"  # transformers 5 saves the template beside tokenizer_config.json
    if template is None and chat_file.is_file():
        template = chat_file.read_text(encoding="utf-8")
    if isinstance(template, list):  # several named templates: the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    spec = {
        "name": "hf",
        "bos_token": _token(config.get("bos_token")),
        "eos_token": _token(config.get("eos_token")),
        "pad_token": _token(config.get("pad_token")),
        "eos_token_ids": [] if eos is None else [eos] if isinstance(eos, int) else list(eos),
        "chat_template": template,
    }
    return spec, json.dumps(state, ensure_ascii=False)


def import_hf(
    src: str | Path,
    out: str | Path,
    attention: str | None = None,
    dtype: str = "float32",
    registry: Registry | None = None,
) -> RunConfig:
    """Convert the Hugging Face checkpoint folder ``src`` into the run folder ``out``."""
    registry = registry or default_registry()
    src, out = Path(src), Path(out)
    refuse_existing(out)
    source = _checked_source(src, dtype)
    family, config, tokenizer_state = _read_config(src, source, attention, registry)
    shapes = weight_shapes(config.model)
    plan = weight_plan(family, shapes)
    dims = config.model.dims()
    to_read = hf_shapes(plan, shapes, dims)
    with open_checkpoint(src) as stored:
        found = _find_weights(src, stored, family, config, to_read)

        def read(name: str) -> torch.Tensor:
            weight, theirs = plan[name]
            if weight.layout == "chunk":
                k, key = weight.chunk[0], found[theirs[0]]
                rows = shapes[name][0]
                return stored[key].get_slice(key)[k * rows : (k + 1) * rows]
            parts = [stored[found[hf]].get_tensor(found[hf]) for hf in theirs]
            if weight.layout == "experts":
                return torch.stack(parts)
            return torch.cat(parts) if len(parts) > 1 else to_ours(weight.layout, parts[0], dims)

        _write_run(src, out, family, config, registry, tokenizer_state, shapes, dtype, read)
    return config


def _checked_source(src: Path, dtype: str) -> Path:
    """``src``'s config.json, once ``src`` is a folder that has one and ``dtype`` is one gptzoo writes."""
    if not src.is_dir():
        raise GptzooError(
            f"{src}: {'a file, not a folder' if src.exists() else 'no such folder'}; give a folder in the Hugging Face layout (config.json, model.safetensors, tokenizer.json)"
        )
    source = src / CONFIG
    if not source.is_file():
        raise CheckpointError(
            f"{src}: missing {CONFIG}; a Hugging Face checkpoint folder has config.json beside its safetensors"
        )
    if dtype not in DTYPES:
        raise GptzooError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    return source


def _read_config(
    src: Path, source: Path, attention: str | None, registry: Registry
) -> tuple[Family, RunConfig, str | None]:
    """The checkpoint's family, its gptzoo config, and its tokenizer.json's text (None without one)."""
    families = all_families(registry)
    hf = normalise(read_hf_config(source), families)
    family = family_of(hf, str(source), families)
    tokenizer, tokenizer_state = read_tokenizer_files(src, hf)
    if tokenizer is None:
        tokenizer = {"name": "integers", "vocab_size": hf.get("vocab_size")}
    config = RunConfig(
        model=registry.model_config(model_table(family, hf, str(source), attention, tokenizer), str(source))
    )
    return family, config, tokenizer_state


def _find_weights(src: Path, stored: dict, family: Family, config: RunConfig, to_read: dict) -> dict[str, str | None]:
    """Each Hugging Face tensor name -> its name as stored; CheckpointError unless the stored tensors are exactly those."""
    found = {hf: _source_name(stored, hf, family.prefix) for hf in to_read}
    # A tied head is the embedding: some checkpoints store it anyway.
    tied = {t for w in family.weights if w.ours == "head.weight" for t in w.theirs} if config.model.tied_head else set()
    used = set(found.values())
    missing = sorted(hf for hf, key in found.items() if key is None)
    unexpected = sorted(k for k in stored if k not in used and not re.fullmatch(family.ignored, k) and k not in tied)
    wrong = [
        f"{key} {shape} vs {to_read[hf][2]} for this config"
        for hf, key in found.items()
        if key is not None and (shape := tuple(stored[key].get_slice(key).get_shape())) != to_read[hf][2]
    ]
    if missing or unexpected or wrong:
        raise CheckpointError(f"{src} does not match its {CONFIG}: {describe_mismatch(missing, unexpected, wrong)}")
    return found


def _write_run(
    src: Path,
    out: Path,
    family: Family,
    config: RunConfig,
    registry: Registry,
    tokenizer_state: str | None,
    shapes: dict[str, tuple[int, ...]],
    dtype: str,
    read: Callable[[str], torch.Tensor],
) -> None:
    """Commit the run folder ``out``: config, tokenizer and the weights ``read`` gives one at a time."""
    with new_folder(out) as tmp:
        commit = run_commit(tmp, config, registry=registry)
        commit.stage_text(CONFIG, config.model_dump_json(indent=2) + "\n")
        if tokenizer_state is not None:
            commit.stage_text(TOKENIZER, tokenizer_state)
        with commit.stage(WEIGHTS) as f:
            specs = {name: (DTYPES[dtype], shape) for name, shape in shapes.items()}
            progress = lambda names: tqdm(names, desc=f"import {src.name}", unit="tensor")  # noqa: E731
            write_safetensors(
                f, specs, read, {"format": "pt", "producer": "gptzoo", "source": family.model_type}, progress
            )
        commit.commit()
