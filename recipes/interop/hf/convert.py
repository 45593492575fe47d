"""Hugging Face config.json files and gptzoo [model] tables, both ways, for every family in
gptzoo.recipes.interop.hf.families; and the family a gptzoo assembly matches.

``import_hf`` (recipes/interop/hf/import_.py) reads a folder in the Hugging Face layout
(config.json; model.safetensors or shards listed in model.safetensors.index.json; tokenizer.json,
tokenizer_config.json, generation_config.json) and writes a run folder whose config.json is an
ordinary gptzoo config. ``export_hf`` (recipes/interop/hf/export.py) finds the family a run's
assembly matches and writes it back. Both stream: tensors pass one at a time from the source
files into the destination, so the peak memory is about the largest tensor (stacked
query/key/value rows: three tensors), not the model. Everything is checked before the first byte
is written, and the destination folder appears only when complete.
"""

from __future__ import annotations

import copy
import json

from gptzoo.core import ConfigError, ModelConfig
from gptzoo.recipes.config import keys
from gptzoo.recipes.interop.files import weight_shapes
from gptzoo.recipes.interop.hf.families import FAMILIES, MISSING, Family, all_families
from gptzoo.recipes.interop.hf.families.mtp import add_mtp
from gptzoo.registry import Registry

INDEX = "model.safetensors.index.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
GENERATION_CONFIG = "generation_config.json"
NEUTRAL = ("tokenizer", "dropout", "init", "mtp")  # settings every family takes as they are (mtp: as its weights)


# model_type -> the family whose layout and config.json it is, under a name of its own: Kimi K2 ships
# DeepSeek-V3's (Moonshot's deployment notes tell frameworks without kimi_k2 to read it as deepseek_v3);
# export-hf writes the family's own name, which transformers loads.
ALIASES = {"kimi_k2": "deepseek_v3"}


def normalise(hf: dict, families: dict[str, Family] = FAMILIES) -> dict:
    """config.json as transformers 5 writes it: older files keep ``rope_theta`` and ``rope_scaling``
    at the top level, transformers 5 keeps both in ``rope_parameters``; a family may have older
    spellings of its own (``Family.legacy``); an alias's model_type is its family's (``ALIASES``)."""
    if hf.get("model_type") in ALIASES:
        hf = hf | {"model_type": ALIASES[hf["model_type"]]}
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


def readable_types(families: dict[str, Family]) -> list[str]:
    """Every config.json model_type import-hf reads with ``families``: the built-in ones, the aliases and the
    multimodal wrappers whose language model is one of them, then those plugins add."""
    from gptzoo.recipes.interop.hf.families.qwen3_5 import MULTIMODAL

    built_in = [model_type for model_type in families if model_type in FAMILIES]
    aliases = [alias for alias, family in ALIASES.items() if family in families]
    wrappers = [wrapper for wrapper, family in MULTIMODAL.items() if family.model_type in families]
    return [*built_in, *aliases, *wrappers, *(model_type for model_type in families if model_type not in FAMILIES)]


def family_of(hf: dict, source: str, families: dict[str, Family] = FAMILIES) -> Family:
    model_type = hf.get("model_type")
    if model_type not in families:
        raise ConfigError(
            f"{source}: model_type = {json.dumps(model_type)} is not a family gptzoo imports; supported: {', '.join(readable_types(families))}"
        )
    return families[model_type]


def model_table(
    family: Family, hf: dict, source: str, attention: str | None = None, tokenizer: dict | None = None
) -> dict:
    """A normalised Hugging Face config.json -> the gptzoo [model] table of the same model.

    ``attention`` replaces the family's ``sdpa`` by a variant computing the same function
    (fused, per_head); None keeps the family's. Raises ConfigError naming the key and value of
    an option gptzoo does not implement.
    """
    for require in family.requires:
        value = keys.get(hf, require.hf)
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
            keys.set(table, path, value, components=False)
    if missing:
        raise ConfigError(f"{source}: {', '.join(missing)} missing; a {family.model_type} config.json has them")
    for conversion in family.conversions:
        try:
            found = conversion.read(hf)
        except ValueError as err:
            raise ConfigError(f"{source}: {err}") from None
        for path, value in found.items():
            keys.set(table, path, value, components=False)
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
        keys.set(hf, require.hf, require.allowed[0], components=False)
    for field in family.fields:
        value = keys.get(model, field.ours[0])
        if value is not MISSING:
            keys.set(hf, field.hf, value, components=False)
    for conversion in family.conversions:
        for key, value in conversion.write(model).items():
            keys.set(hf, key, value, components=False)
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


def _same_attention(spec) -> bool:
    return spec.name == "sdpa" or getattr(spec.impl, "equivalent_to", None) == "sdpa"


def mismatches(family: Family, config: ModelConfig, registry: Registry) -> list[str]:
    """Each setting of ``config`` that ``family`` cannot express, as a sentence; empty when it matches."""
    ours = explicit(config)
    if _same_attention(config.attention):
        ours["attention"]["name"] = "sdpa"
    try:
        hf = normalise(hf_config(family, ours), {family.model_type: family})
        table = model_table(family, hf, "", None, ours["tokenizer"])
        if family.mtp is not None and ours.get("mtp") is not None:  # as import reads it when the weights hold it
            add_mtp(table, hf, family.mtp)
        theirs = explicit(registry.model_config(table))
    except (ConfigError, ValueError) as err:  # ValueError: a conversion that cannot write this assembly
        return [str(err).lstrip(": ")]
    ours, theirs = keys.flatten(ours), keys.flatten(theirs)
    problems = []
    names = {path.removesuffix(".name") for path in ours if path.endswith(".name")}
    # a family with MTP layers in its checkpoints expresses the modules' settings, all but the training's loss weight
    neutral = NEUTRAL if family.mtp is None else tuple(n for n in NEUTRAL if n != "mtp")
    for path in sorted(set(ours) | set(theirs)):
        if path.split(".")[0] in neutral or path == "mtp.loss_weight":
            continue
        if ours.get(path, MISSING) == theirs.get(path, MISSING):
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
