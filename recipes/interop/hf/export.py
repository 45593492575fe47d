"""A gptzoo run folder -> a Hugging Face checkpoint folder of the family its assembly matches
(see recipes/interop/hf/convert.py)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from gptzoo.core import CheckpointError
from gptzoo.recipes.config.schema import RunConfig
from gptzoo.recipes.interop.files import new_folder, open_safetensors, refuse_existing, weight_shapes
from gptzoo.recipes.interop.hf.convert import (
    GENERATION_CONFIG,
    INDEX,
    TOKENIZER_CONFIG,
    explicit,
    hf_config,
    match_family,
)
from gptzoo.recipes.interop.hf.families import (
    Family,
    constant_values,
    fuse_shapes,
    fusions,
    hf_shapes,
    interleave,
    row_axis,
    to_theirs,
    weight_plan,
)
from gptzoo.recipes.interop.hf.families.mtp import mtp_dims, shared_copies
from gptzoo.recipes.runs.files import CONFIG, TOKENIZER, WEIGHTS, atomic_path, write_text_atomic
from gptzoo.recipes.runs.folder import build_tokenizer, load_config, open_run
from gptzoo.recipes.runs.manifest import check_file
from gptzoo.recipes.runs.sharded import consolidated
from gptzoo.recipes.runs.weights import describe_mismatch, write_safetensors
from gptzoo.recipes.training.models import resolve_vocab
from gptzoo.registry import Registry, default_registry

MAX_SHARD_BYTES = 5 * 2**30  # transformers' own default shard size


def tokenizer_files(folder: Path, config: RunConfig, manifest) -> tuple[dict[str, str], dict]:
    """(file name -> text, generation_config.json) of a run's ``hf`` tokenizer; nothing for other tokenizers."""
    spec = config.model.tokenizer
    if spec.name != "hf":  # the weights' ids mean this tokenizer's tokens: only its end-of-text id carries over
        eot = build_tokenizer(config, folder, manifest).eot_id
        return {}, {"bos_token_id": eot, "eos_token_id": eot} if eot < (config.model.vocab_size or 0) else {}
    p = spec.params
    files = {TOKENIZER: (folder / TOKENIZER).read_text(encoding="utf-8")}
    if manifest is not None:
        check_file(folder, manifest, TOKENIZER)
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": p.bos_token,
        "eos_token": p.eos_token,
        "pad_token": p.pad_token,
    }
    if p.chat_template is not None:
        tokenizer_config["chat_template"] = p.chat_template
    files[TOKENIZER_CONFIG] = json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n"
    tokenizer = build_tokenizer(config, folder, manifest)
    generation = {
        "bos_token_id": tokenizer._id(p.bos_token),
        "eos_token_id": (p.eos_token_ids[0] if len(p.eos_token_ids) == 1 else p.eos_token_ids)
        or tokenizer._id(p.eos_token),
        "pad_token_id": tokenizer._id(p.pad_token),
    }
    return files, {k: v for k, v in generation.items() if v is not None}


def export_hf(
    run_folder: str | Path, out: str | Path, registry: Registry | None = None, max_shard_bytes: int = MAX_SHARD_BYTES
) -> tuple[Family, dict]:
    """Write the run in ``run_folder`` as the Hugging Face family its assembly matches; returns (family, config.json)."""
    registry = registry or default_registry()
    run_folder, out = Path(run_folder), Path(out)
    refuse_existing(out)
    manifest = consolidated(run_folder, open_run(run_folder))  # an FSDP run stopped early: its weights file first
    config = load_config(run_folder, registry, manifest)
    if config.model.vocab_size is None:  # a config written by hand: the tokenizer's size, as training resolves it
        config = resolve_vocab(config, build_tokenizer(config, run_folder, manifest))
    weights = run_folder / WEIGHTS
    source_family = None  # the family import-hf read it from, kept in the weights' metadata
    if weights.is_file():
        with open_safetensors(weights) as f:
            source_family = (f.metadata() or {}).get("source")
    family = match_family(config.model, registry, f"{run_folder / CONFIG}: cannot export", source_family)
    data = hf_config(family, explicit(config.model))
    shapes = weight_shapes(config.model)
    plan = weight_plan(family, shapes)
    specs = hf_shapes(plan, shapes, config.model.dims(), config.model.dims, mtp_dims(config.model))
    if config.model.mtp is not None and family.mtp is not None and family.mtp.shared_copies:
        depth = config.model.mtp.params.depth  # type: ignore[attr-defined]
        specs |= shared_copies(specs, depth, config.model.n_layers, config.model.tied_head)
    fused = fusions(family, specs, config.model)
    if manifest is not None and weights.is_file():
        check_file(run_folder, manifest, WEIGHTS)
    with open_safetensors(weights) as f:
        stored = set(f.keys())
        missing, unexpected = sorted(set(shapes) - stored), sorted(stored - set(shapes))
        if missing or unexpected:
            raise CheckpointError(f"{weights} does not match its config: {describe_mismatch(missing, unexpected)}")
        dtype = f.get_slice(next(iter(shapes))).get_dtype()
        data["dtype"] = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}.get(dtype, "float32")
        tensor_dtype = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}.get(dtype, torch.float32)

        constants = constant_values(family, shapes, explicit(config.model))

        def read(hf: str) -> torch.Tensor:
            if hf in constants:
                return torch.tensor(constants[hf], dtype=tensor_dtype)
            if hf in fused:
                return fused[hf].join([read(part) for part in fused[hf].parts])
            parts, layout, shape = specs[hf]
            tensors = [f.get_slice(name)[rows] if rows is not None else f.get_tensor(name) for name, rows in parts]
            if layout in ("interleaved", "interleaved_transposed"):
                tensor = interleave(layout, tensors)
            elif layout == "shared":  # every layer's copy of one tensor
                if any(not torch.equal(t, tensors[0]) for t in tensors[1:]):
                    raise CheckpointError(
                        f"{weights}: {', '.join(name for name, _ in parts[:2])}, ... differ, but {family.model_type} "
                        f"keeps one {hf} for every layer: export a run whose copies are equal"
                    )
                tensor = tensors[0]
            elif layout == "stack_transposed":  # each part's matrices transposed, side by side
                tensor = torch.cat([t.transpose(1, 2) for t in tensors], dim=-1)
            elif len(tensors) > 1:  # a chunked tensor's parts, or each layer's columns
                tensor = torch.cat(tensors, dim=-1 if layout == "columns" else row_axis(tensors[0].shape))
            else:
                tensor = to_theirs(layout, tensors[0], config.model.dims())
            return tensor.reshape(shape)  # one expert of a stack: (1, ...) -> (...)

        shards = _shards(
            {hf: (tensor_dtype, shape) for hf, (_, _, shape) in fuse_shapes(specs, fused).items()}
            | {hf: (tensor_dtype, ()) for hf in constants},
            max_shard_bytes,
        )
        extra, generation = tokenizer_files(run_folder, config, manifest)
        data |= {
            "pad_token_id": None
        } | generation  # never a family's default pad id (Phi-3's 32000), which may lie outside this vocabulary
        _write_hf_folder(out, data, shards, read, extra, generation)
    return family, data


def _write_hf_folder(
    out: Path,
    data: dict,
    shards: list[dict],
    read: Callable[[str], torch.Tensor],
    extra: dict[str, str],
    generation: dict,
) -> None:
    """Write ``out`` whole: config.json, the weight shard(s) with their index, and the tokenizer files."""
    with new_folder(out) as tmp:
        write_text_atomic(tmp / CONFIG, json.dumps(data, indent=2) + "\n")
        weight_map = {}
        for number, shard in enumerate(shards, start=1):
            file = WEIGHTS if len(shards) == 1 else f"model-{number:05d}-of-{len(shards):05d}.safetensors"
            with atomic_path(tmp / file) as path, open(path, "wb") as handle:
                progress = functools.partial(tqdm, desc=f"export {file}", unit="tensor")
                write_safetensors(handle, shard, read, {"format": "pt"}, progress)
            weight_map |= {hf: file for hf in shard}
        if len(shards) > 1:
            total = sum(
                torch.empty((), dtype=d).element_size() * torch.Size(s).numel()
                for d, s in (v for shard in shards for v in shard.values())
            )
            write_text_atomic(
                tmp / INDEX,
                json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n",
            )
        if extra:
            write_text_atomic(tmp / GENERATION_CONFIG, json.dumps(generation, indent=2) + "\n")
        for name, text in extra.items():
            write_text_atomic(tmp / name, text)


def _shards(specs: dict[str, tuple[torch.dtype, tuple[int, ...]]], max_bytes: int) -> list[dict]:
    """Consecutive tensors grouped into files of at most ``max_bytes`` (a larger tensor alone)."""
    shards: list[dict] = [{}]
    size = 0
    for name, (dtype, shape) in specs.items():
        nbytes = torch.empty((), dtype=dtype).element_size() * torch.Size(shape).numel()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = (dtype, shape)
        size += nbytes
    return shards
