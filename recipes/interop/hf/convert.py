"""Hugging Face checkpoints in and out of gptzoo, for every family in gptzoo.recipes.interop.hf.families.

``import_hf`` reads a folder in the Hugging Face layout (config.json; model.safetensors or
shards listed in model.safetensors.index.json; tokenizer.json, tokenizer_config.json,
generation_config.json) and writes a run folder whose config.json is an ordinary gptzoo
config. ``export_hf`` finds the family a run's assembly matches and writes it back. Both
stream: tensors pass one at a time from the source files into the destination, so the peak
memory is about the largest tensor (stacked query/key/value rows: three tensors), not the model.
Everything is checked before the first byte is written, and the destination folder appears
only when complete.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from gptzoo.core import CheckpointError, ConfigError, GptzooError, ModelConfig
from gptzoo.recipes.config.schema import RunConfig
from gptzoo.recipes.interop.files import new_folder, open_safetensors, read_hf_config, refuse_existing, weight_shapes
from gptzoo.recipes.interop.hf.families import (
    FAMILIES,
    MISSING,
    Family,
    all_families,
    hf_shapes,
    lookup,
    to_ours,
    to_theirs,
    weight_plan,
)
from gptzoo.recipes.runs.files import CONFIG, TOKENIZER, WEIGHTS, atomic_path, read_json, write_text_atomic
from gptzoo.recipes.runs.folder import build_tokenizer, load_config, open_run, run_commit
from gptzoo.recipes.runs.manifest import check_file
from gptzoo.recipes.runs.weights import describe_mismatch, write_safetensors
from gptzoo.recipes.training.models import resolve_vocab
from gptzoo.registry import Registry, default_registry

INDEX = "model.safetensors.index.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
GENERATION_CONFIG = "generation_config.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MAX_SHARD_BYTES = 5 * 2**30  # transformers' own default shard size
NEUTRAL = ("tokenizer", "dropout", "init")  # settings every family takes as they are


# ---- configs ------------------------------------------------------------------------------------


def normalise(hf: dict, families: dict[str, Family] = FAMILIES) -> dict:
    """config.json as transformers 5 writes it: older files keep ``rope_theta`` and ``rope_scaling``
    at the top level, transformers 5 keeps both in ``rope_parameters``; a family may have older
    spellings of its own (``Family.legacy``)."""
    family = families.get(hf.get("model_type"))
    hf = family.legacy(hf) if family is not None and family.legacy is not None else dict(hf)
    if not isinstance(hf.get("rope_parameters"), dict):
        rope = dict(hf.get("rope_scaling") or {})
        if "type" in rope:
            rope.setdefault("rope_type", rope.pop("type"))
        rope.setdefault("rope_type", "default")
        for key in ("rope_theta", "partial_rotary_factor"):
            if hf.get(key) is not None:
                rope[key] = hf[key]
        hf["rope_parameters"] = rope
    return hf


def family_of(hf: dict, source: str, families: dict[str, Family] = FAMILIES) -> Family:
    model_type = hf.get("model_type")
    if model_type not in families:
        raise ConfigError(
            f"{source}: model_type = {json.dumps(model_type)} is not a family gptzoo imports; supported: {', '.join(families)}"
        )
    return families[model_type]


def _set(table: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        table = table.setdefault(key, {})
    table[last] = value


def model_table(
    family: Family, hf: dict, source: str, attention: str | None = None, tokenizer: dict | None = None
) -> dict:
    """A normalised Hugging Face config.json -> the gptzoo [model] table of the same model.

    ``attention`` replaces the family's ``sdpa`` by a variant computing the same function
    (fused, per_head); None keeps the family's. Raises ConfigError naming the key and value of
    an option gptzoo does not implement.
    """
    for require in family.requires:
        value = lookup(hf, require.hf)
        value = require.default if value is MISSING else value
        if value not in require.allowed:
            allowed = " or ".join(json.dumps(a) for a in require.allowed)
            raise ConfigError(
                f"{source}: {require.hf} = {json.dumps(value)} is not supported for {family.model_type} ({require.why}; gptzoo reads {allowed})"
            )
    table = copy.deepcopy(family.assembly) | {"dropout": 0.0}
    table.setdefault("attention", {"name": "sdpa"})
    if tokenizer is not None:
        table["tokenizer"] = tokenizer
    missing = []
    for field in family.fields:
        value = field.value(hf)
        if value is MISSING:
            missing.append(field.hf)
        for path in field.ours:
            _set(table, path, value)
    if missing:
        raise ConfigError(f"{source}: {', '.join(missing)} missing; a {family.model_type} config.json has them")
    for conversion in family.conversions:
        try:
            found = conversion.read(hf)
        except ValueError as err:
            raise ConfigError(f"{source}: {err}") from None
        for path, value in found.items():
            _set(table, path, value)
    name = table["attention"]["name"]
    if attention is not None and attention != name:
        if name != "sdpa":
            raise ConfigError(
                f"--attention {attention}: this checkpoint's attention is '{name}' (from {source}), which gptzoo computes one way only"
            )
        table["attention"]["name"] = attention
    return table


def hf_config(family: Family, model: dict) -> dict:
    """The config.json of ``family`` for an explicit gptzoo [model] table (see ``explicit``)."""
    hf: dict = {"architectures": [family.architecture], "model_type": family.model_type}
    for require in family.requires:
        _set(hf, require.hf, require.allowed[0])
    for field in family.fields:
        value = lookup(model, field.ours[0])
        if value is not MISSING:
            _set(hf, field.hf, value)
    for conversion in family.conversions:
        for key, value in conversion.write(model).items():
            _set(hf, key, value)
    return hf


def explicit(config: ModelConfig) -> dict:
    """The [model] table with the sizes that default to others written out (kv heads, head size,
    feed-forward width), so two configs of the same model compare equal."""
    table = config.model_dump(mode="json")
    dims = config.dims()
    table["n_kv_heads"], table["head_dim"] = dims.n_kv_heads, dims.head_size
    dense = "blocks.0.feed_forward.out_proj.weight"
    if table["feed_forward"].get("hidden", MISSING) is None and dense in (shapes := weight_shapes(config)):
        table["feed_forward"]["hidden"] = shapes[dense][1]
    return table


def _flat(table: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in table.items():
        if isinstance(value, dict) and value:
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _same_attention(spec) -> bool:
    return spec.name == "sdpa" or getattr(spec.impl, "equivalent_to", None) == "sdpa"


def mismatches(family: Family, config: ModelConfig, registry: Registry) -> list[str]:
    """Each setting of ``config`` that ``family`` cannot express, as a sentence; empty when it matches."""
    ours = explicit(config)
    if _same_attention(config.attention):
        ours["attention"]["name"] = "sdpa"
    try:
        theirs = explicit(
            registry.model_config(
                model_table(
                    family, normalise(hf_config(family, ours), {family.model_type: family}), "", None, ours["tokenizer"]
                )
            )
        )
    except (ConfigError, ValueError) as err:  # ValueError: a conversion that cannot write this assembly
        return [str(err).lstrip(": ")]
    ours, theirs = _flat(ours), _flat(theirs)
    problems = []
    names = {path.removesuffix(".name") for path in ours if path.endswith(".name")}
    for path in sorted(set(ours) | set(theirs)):
        if path.split(".")[0] in NEUTRAL or ours.get(path, MISSING) == theirs.get(path, MISSING):
            continue
        component = path.rsplit(".", 1)[0]
        if path.endswith(".name"):
            problems.append(
                f"{component} '{ours.get(path)}' has no {family.model_type} counterpart ({family.model_type}: '{theirs.get(path)}')"
            )
        elif component in names and ours.get(f"{component}.name") != theirs.get(f"{component}.name"):
            continue  # another plugin altogether: its params are not the point
        elif path not in ours:
            problems.append(f"{path} is unset; {family.model_type} has {json.dumps(theirs[path])}")
        else:
            value = (
                f"{component} '{ours[component + '.name']}' with {path.rsplit('.', 1)[1]}"
                if component in names
                else path
            )
            problems.append(
                f"{value} = {json.dumps(ours[path])} has no {family.model_type} counterpart ({family.model_type}: {json.dumps(theirs.get(path))})"
            )
    return problems


def match_family(config: ModelConfig, registry: Registry, source: str, prefer: str | None = None) -> Family:
    """The family whose assembly ``config`` is (``prefer`` among several: a Phi-3 with full
    rotary is also a Llama); else ConfigError naming what the nearest ones lack."""
    families = all_families(registry)
    found = {name: mismatches(family, config, registry) for name, family in families.items()}
    matching = [name for name, problems in found.items() if not problems]
    if matching:
        return families[prefer if prefer in matching else matching[0]]
    fewest = min(len(p) for p in found.values())
    nearest = [name for name, problems in found.items() if len(problems) == fewest]
    raise ConfigError(
        f"{source}: no Hugging Face family has this assembly; "
        + " | ".join(f"as {name}: " + "; ".join(found[name]) for name in nearest)
    )


# ---- weights ------------------------------------------------------------------------------------


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


# ---- the two directions -------------------------------------------------------------------------


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
    families = all_families(registry)
    hf = normalise(read_hf_config(source), families)
    family = family_of(hf, str(source), families)
    tokenizer, tokenizer_state = read_tokenizer_files(src, hf)
    if tokenizer is None:
        tokenizer = {"name": "integers", "vocab_size": hf.get("vocab_size")}
    config = RunConfig(
        model=registry.model_config(model_table(family, hf, str(source), attention, tokenizer), str(source))
    )
    shapes = weight_shapes(config.model)
    plan = weight_plan(family, shapes)
    dims = config.model.dims()
    to_read = hf_shapes(plan, shapes, dims)
    with open_checkpoint(src) as stored:
        found = {hf: _source_name(stored, hf, family.prefix) for hf in to_read}
        # A tied head is the embedding: some checkpoints store it anyway.
        tied = (
            {t for w in family.weights if w.ours == "head.weight" for t in w.theirs}
            if config.model.tied_head
            else set()
        )
        used = set(found.values())
        missing = sorted(hf for hf, key in found.items() if key is None)
        unexpected = sorted(
            k for k in stored if k not in used and not re.fullmatch(family.ignored, k) and k not in tied
        )
        wrong = [
            f"{key} {shape} vs {to_read[hf][2]} for this config"
            for hf, key in found.items()
            if key is not None and (shape := tuple(stored[key].get_slice(key).get_shape())) != to_read[hf][2]
        ]
        if missing or unexpected or wrong:
            raise CheckpointError(f"{src} does not match its {CONFIG}: {describe_mismatch(missing, unexpected, wrong)}")

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
    return config


def export_hf(
    run_folder: str | Path, out: str | Path, registry: Registry | None = None, max_shard_bytes: int = MAX_SHARD_BYTES
) -> tuple[Family, dict]:
    """Write the run in ``run_folder`` as the Hugging Face family its assembly matches; returns (family, config.json)."""
    registry = registry or default_registry()
    run_folder, out = Path(run_folder), Path(out)
    refuse_existing(out)
    manifest = open_run(run_folder)
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
    specs = hf_shapes(plan, shapes, config.model.dims())
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

        def read(hf: str) -> torch.Tensor:
            parts, layout, shape = specs[hf]
            tensors = [f.get_slice(name)[rows] if rows is not None else f.get_tensor(name) for name, rows in parts]
            tensor = torch.cat(tensors) if len(tensors) > 1 else to_theirs(layout, tensors[0], config.model.dims())
            return tensor.reshape(shape)  # one expert of a stack: (1, ...) -> (...)

        shards = _shards({hf: (tensor_dtype, shape) for hf, (_, _, shape) in specs.items()}, max_shard_bytes)
        extra, generation = tokenizer_files(run_folder, config, manifest)
        data |= {
            "pad_token_id": None
        } | generation  # never a family's default pad id (Phi-3's 32000), which may lie outside this vocabulary
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
    return family, data


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
