"""A Hugging Face checkpoint folder -> a gptzoo run folder (see recipes/interop/hf/convert.py)."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from gptzoo.core import CheckpointError, ConfigError, GptzooError
from gptzoo.recipes.config.schema import RunConfig
from gptzoo.recipes.interop.files import (
    checkpoint_file,
    new_folder,
    not_floating_point,
    open_safetensors,
    read_hf_config,
    refuse_existing,
    weight_shapes,
)
from gptzoo.recipes.interop.hf.convert import (
    GENERATION_CONFIG,
    INDEX,
    TOKENIZER_CONFIG,
    explicit,
    family_of,
    model_table,
    normalise,
)
from gptzoo.recipes.interop.hf.families import (
    Family,
    all_families,
    constant_values,
    deinterleave,
    fuse_shapes,
    fusions,
    hf_shapes,
    layer_of,
    row_axis,
    to_ours,
    weight_plan,
)
from gptzoo.recipes.interop.hf.families.mtp import add_held_mtp, mtp_dims
from gptzoo.recipes.interop.hf.families.qwen3_5 import MULTIMODAL, VISION_TENSORS, text_part
from gptzoo.recipes.interop.hf.hub import FOLDER_HINT, checkpoint_folder
from gptzoo.recipes.runs.files import CONFIG, TOKENIZER, WEIGHTS, read_json
from gptzoo.recipes.runs.folder import run_commit
from gptzoo.recipes.runs.memory import check_fits
from gptzoo.recipes.runs.weights import describe_mismatch, few, write_safetensors
from gptzoo.registry import Registry, default_registry

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
CHAT_TEMPLATE = "chat_template.jinja"  # transformers 5 saves the template beside tokenizer_config.json


@contextmanager
def open_checkpoint(folder: Path) -> Iterator[dict[str, Any]]:
    """Every tensor name in the folder's safetensors file(s) -> the open file holding it.

    With an index, each tensor must be in exactly the shard the index names: a name stored twice,
    or where the index does not say, is refused rather than one copy chosen silently.
    """
    index = checkpoint_file(folder, INDEX)
    if index.is_file():
        weight_map = _weight_map(index)
        files = sorted(set(weight_map.values()))
    elif checkpoint_file(folder, WEIGHTS).is_file():
        weight_map, files = None, [WEIGHTS]
    else:
        raise CheckpointError(
            f"{folder}: holds neither {WEIGHTS} nor {INDEX}; a Hugging Face checkpoint folder has one of them"
        )
    with ExitStack() as stack:
        stored: dict[str, Any] = {}
        shard_of: dict[str, str] = {}
        for file in files:
            handle = stack.enter_context(open_safetensors(folder / file))
            for key in handle.keys():
                if key in shard_of:
                    raise CheckpointError(
                        f"{folder}: tensor {key} is stored twice, in {shard_of[key]} and in {file}; keep one copy (the index names {weight_map and weight_map.get(key)})"
                    )
                stored[key], shard_of[key] = handle, file
        if weight_map is not None:
            _check_index(index, weight_map, shard_of)
        yield stored


def _weight_map(index: Path) -> dict[str, str]:
    """The index's tensor name -> shard file, each shard a plain file name inside the index's folder."""
    data = read_json(index, CheckpointError)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f'{index}: not a safetensors index (no "weight_map" object naming each tensor\'s shard)')
    for key, file in weight_map.items():
        if not isinstance(file, str):
            raise CheckpointError(
                f"{index}: weight_map[{json.dumps(key)}] = {json.dumps(file)} is not a shard file name (a string)"
            )
        checkpoint_file(index.parent, file, f"{INDEX} names the shard")
    return weight_map


def _check_index(index: Path, weight_map: dict[str, str], shard_of: dict[str, str]) -> None:
    """CheckpointError unless every tensor is in the shard the index names, and every stored one is named."""
    wrong = [
        f"{key} in {weight_map[key]} (found {shard_of.get(key, 'in no shard')})"
        for key in weight_map
        if shard_of.get(key) != weight_map[key]
    ]
    unlisted = sorted(set(shard_of) - set(weight_map))
    if wrong or unlisted:
        problems = ([f"it places {', '.join(wrong[:3])}"] if wrong else []) + (
            [f"it does not list {', '.join(unlisted[:3])} (in {shard_of[unlisted[0]]})"] if unlisted else []
        )
        more = len(wrong) + len(unlisted) - len(wrong[:3]) - len(unlisted[:3])
        raise CheckpointError(
            f"{index} does not match the shards: {'; '.join(problems)}{f' (and {more} more)' if more else ''}"
        )


# What each index in a family's tensor names counts, and the gptzoo field that declares how many.
COUNTED = {"i": ("n_layers", "layer(s)"), "e": ("n_experts", "expert(s)")}


def check_layers(stored: dict, family: Family, table: dict, source: Path) -> None:
    """CheckpointError when the config declares more layers, or experts, than the stored tensors hold:
    the model built from it would make a module for each before any shape could be compared."""
    for index, (field, what) in COUNTED.items():
        names = [name for weight in family.weights for name in weight.theirs if f"{{{index}}}" in name]
        if not names:
            continue
        patterns = [re.compile(_pattern(name, index)) for name in names]
        held = {
            int(m.group(1))
            for key in stored
            for pattern in patterns
            if (m := pattern.fullmatch(key) or pattern.fullmatch(family.prefix + key))
        }
        declared = max((n for n in _values(table, field) if isinstance(n, int)), default=0)
        if declared > len(held):
            key = next((f.hf for f in family.fields if any(o.endswith(field) for o in f.ours)), field)
            bare = not any(name.startswith(family.prefix) for name in stored)  # a bare base model's names
            first = sorted(
                (name.removeprefix(family.prefix) if bare else name).format(
                    **dict.fromkeys(COUNTED, 0) | {index: len(held)}
                )
                for name in names
            )
            raise CheckpointError(
                f"{source}: {key} = {declared} but the weights hold {len(held)} {what} (missing {few(first)}); "
                "the config does not describe these weights"
            )


def _pattern(name: str, index: str) -> str:
    """A regular expression for ``name`` capturing its ``{index}``, any number for its other indices."""
    pattern = re.escape(name)
    for other in COUNTED:
        pattern = pattern.replace(rf"\{{{other}\}}", r"(\d+)" if other == index else r"\d+")
    return pattern


def _values(table: Any, field: str) -> Iterator[Any]:
    """Every value of ``field`` in a nested model table (the top level's and each layer kind's)."""
    if isinstance(table, dict):
        for key, value in table.items():
            if key == field:
                yield value
            else:
                yield from _values(value, field)


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


def _check_tokenizer(file: Path, state: dict) -> None:
    """CheckpointError unless the tokenizers library reads ``state``: a run must not keep a tokenizer every later command fails on."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return  # the hf extra is absent: the run's first use says what to install
    try:
        Tokenizer.from_str(json.dumps(state))
    except Exception as err:  # the library's own error type is a bare Exception
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{file}: not a tokenizer the tokenizers library reads ({reason})") from None


def read_tokenizer_files(folder: Path, hf: dict) -> tuple[dict | None, str | None]:
    """The ``hf`` tokenizer spec and its state (tokenizer.json's text) from a checkpoint folder; (None, None) without tokenizer.json."""
    file = checkpoint_file(folder, TOKENIZER)
    if not file.is_file():
        return None, None
    state = _read_json(file)
    _check_tokenizer(file, state)
    config = _read_json(checkpoint_file(folder, TOKENIZER_CONFIG))
    generation = _read_json(checkpoint_file(folder, GENERATION_CONFIG))
    eos = generation.get("eos_token_id", hf.get("eos_token_id"))
    template = config.get("chat_template")
    chat_file = checkpoint_file(folder, CHAT_TEMPLATE)
    if template is None and chat_file.is_file():
        try:
            template = chat_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{chat_file}: cannot be read as UTF-8 text ({err})") from None
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
    """Convert the Hugging Face checkpoint folder ``src``, or the Hub id ``src`` (ORG/NAME[@REVISION]), into the run folder ``out``."""
    registry = registry or default_registry()
    out = Path(out)
    refuse_existing(out)
    src = checkpoint_folder(src)
    source = _checked_source(src, dtype)
    with open_checkpoint(src) as stored:
        family, config, tokenizer_state = _read_config(src, source, attention, registry, stored)
        check_fits(config.model, str(source), weights=False)  # weights stream; tables (rope's) would be built whole
        shapes = weight_shapes(config.model)
        plan = weight_plan(family, shapes)
        dims = config.model.dims()
        to_read = hf_shapes(plan, shapes, dims, config.model.dims, mtp_dims(config.model))
        fused = fusions(family, to_read, config.model)
        found = _find_weights(src, stored, family, config, fuse_shapes(to_read, fused))
        _check_constants(src, stored, family, constant_values(family, shapes, explicit(config.model)))
        part_of = {part: (whole, k) for whole, fusion in fused.items() for k, part in enumerate(fusion.parts)}

        def load(hf: str) -> torch.Tensor:
            whole, k = part_of.get(hf, (hf, None))
            tensor = stored[found[whole]].get_tensor(found[whole])
            return tensor if k is None else fused[whole].split(tensor, k)

        def read(name: str) -> torch.Tensor:
            weight, theirs = plan[name]
            if weight.layout == "chunk":
                k, key = weight.chunk[0], found[theirs[0]]
                axis = row_axis(shapes[name])
                rows = shapes[name][axis]
                return stored[key].get_slice(key)[(slice(None),) * axis + (slice(k * rows, (k + 1) * rows),)]
            if weight.layout in ("interleaved", "interleaved_transposed"):
                return deinterleave(weight.layout, load(theirs[0]), weight.chunk)
            if weight.layout in ("layer_rows", "layer_columns"):  # layer i's rows or columns
                key, axis, i = found[theirs[0]], 0 if weight.layout == "layer_rows" else 1, layer_of(name)
                size = shapes[name][axis]
                return stored[key].get_slice(key)[(slice(None),) * axis + (slice(i * size, (i + 1) * size),)]
            if weight.layout == "stack_transposed":  # part k of the last axis, each matrix transposed
                key, k, size = found[theirs[0]], weight.chunk[0], shapes[name][1]
                return stored[key].get_slice(key)[:, :, k * size : (k + 1) * size].transpose(1, 2).contiguous()
            parts = [load(hf) for hf in theirs if hf in to_read]  # a rows entry may leave out what a layer lacks
            if weight.layout == "experts":
                return torch.stack(parts)
            if weight.layout == "reshaped":
                return parts[0].reshape(shapes[name])
            return torch.cat(parts) if len(parts) > 1 else to_ours(weight.layout, parts[0], dims)

        _write_run(src, out, family, config, registry, tokenizer_state, shapes, dtype, read)
    return config


def _checked_source(src: Path, dtype: str) -> Path:
    """``src``'s config.json, once ``src`` is a folder that has one and ``dtype`` is one gptzoo writes."""
    if not src.is_dir():  # checkpoint_folder has refused what does not exist
        raise GptzooError(f"{src}: a file, not a folder; {FOLDER_HINT}")
    source = checkpoint_file(src, CONFIG)
    if not source.is_file():
        raise CheckpointError(
            f"{src}: missing {CONFIG}; a Hugging Face checkpoint folder has config.json beside its safetensors"
        )
    if dtype not in DTYPES:
        raise GptzooError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    return source


def _read_config(
    src: Path, source: Path, attention: str | None, registry: Registry, stored: dict
) -> tuple[Family, RunConfig, str | None]:
    """The checkpoint's family, its gptzoo config, and its tokenizer.json's text (None without one).

    The layers the config declares are counted against the ``stored`` tensors before the config is
    validated or the model built: both take time for every layer, hours for 10^6 of them."""
    families = all_families(registry)
    hf = read_hf_config(source)
    try:
        text = text_part(hf)
    except ValueError as err:
        raise ConfigError(f"{source}: {err}") from None
    multimodal = MULTIMODAL.get(hf.get("model_type"))
    hf = normalise(hf if text is None else text, families)
    family = multimodal or family_of(hf, str(source), families)
    if multimodal is not None:
        vision = sum(bool(re.fullmatch(VISION_TENSORS, key)) for key in stored)
        print(
            f"{source}: left out the vision encoder's {vision} tensors (model.visual.*); gptzoo imports the "
            "language model",
            file=sys.stderr,
        )
    tokenizer, tokenizer_state = read_tokenizer_files(src, hf)
    if tokenizer is None:
        tokenizer = {"name": "integers", "vocab_size": hf.get("vocab_size")}
    table = model_table(family, hf, str(source), attention, tokenizer)
    if family.mtp is not None:
        try:
            add_held_mtp(table, hf, stored, family.prefix, family.mtp)
        except ValueError as err:
            raise ConfigError(f"{source}: {err}") from None
    check_layers(stored, family, table, source)
    config = RunConfig(model=registry.model_config(table, str(source)))
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
    integers = [bad for key in found.values() if key is not None for bad in not_floating_point(stored[key], [key])]
    if integers:
        raise CheckpointError(
            f"{src}: {', '.join(integers[:3])}{f' and {len(integers) - 3} more' if len(integers) > 3 else ''} not floating point; "
            f"every {family.model_type} weight is (F16, BF16, F32 or F64), so the file's header is wrong or the checkpoint is quantized"
        )
    return found


def _check_constants(src: Path, stored: dict, family: Family, expected: dict[str, float]) -> None:
    """CheckpointError naming a one-number tensor whose stored value is not the one gptzoo's setting gives."""
    for hf, value in expected.items():
        key = _source_name(stored, hf, family.prefix)
        if key is None:
            continue
        tensor = stored[key].get_tensor(key)
        if not torch.equal(tensor, torch.tensor(value, dtype=tensor.dtype).reshape(tensor.shape)):
            raise CheckpointError(
                f"{src}: {key} = {tensor.flatten()[0].item()} is not supported for {family.model_type} "
                f"(gptzoo reads {value}, transformers' default)"
            )


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
