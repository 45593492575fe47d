"""gptzoo describe: the resolved config, parameter counts by family and per-plugin cost estimates,
and what each layer keeps while decoding.

The model is built on the meta device (shapes only, nothing allocated), so a plugin's
``__init__``, ``flops_per_token`` and ``cache_bytes`` must not read tensor values; the
conformance kit checks that a plugin builds there."""

import argparse
import json

import torch

from gptzoo.core import GPT, Attention, ComponentSpec, ConfigError
from gptzoo.core.config import PER_LAYER
from gptzoo.recipes.config.schema import RunConfig, load_run_config
from gptzoo.recipes.training import costs
from gptzoo.recipes.training.models import meta_model, resolve_vocab

HELP = "print a config resolved, its parameter count (total and by family) and cost estimates"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="a TOML config, a preset name (gptzoo presets) or a run folder")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. model.attention.name=sdpa (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON (its shape: docs/reference/commands.md)")


def describe(config: RunConfig) -> dict:
    if config.model.vocab_size is None:
        tokenizer = config.model.tokenizer.build()
        if not tokenizer.is_fitted:
            raise ConfigError(
                f"model.vocab_size is not set and the '{config.model.tokenizer.name}' tokenizer learns its vocabulary "
                "from the corpus: set model.vocab_size, or describe a trained run folder"
            )
        config = resolve_vocab(config, tokenizer)
    model_config = config.model
    model = meta_model(model_config)
    T = model_config.context_length
    caches = [layer_cache(mixer, T) for mixer in model.mixers()]
    return {
        "config": config.model_dump(mode="json"),
        "parameters": costs.param_counts(model),
        "active_parameters_per_token": costs.active_parameters_per_token(model),
        "flops_per_token": costs.flops_per_token(model, T),
        "kv_cache": model_cache(model, caches, T) | {"mtp_bytes_per_sequence": mtp_cache_bytes(model, T)},
        "layers": [
            {
                "layer": layer.index,
                "kind": layer.kind,
                **{family: _short(getattr(layer, family)) for family in PER_LAYER},
                "head_size": model_config.dims(layer.index).head_size,
                "n_kv_heads": model_config.dims(layer.index).n_kv_heads,
                "kv_from": model_config.kv_source(layer.index),
                "parameters": sum(p.numel() for p in block.parameters()),
                **cache,
            }
            for layer, block, cache in zip(model_config.layers(), model.blocks, caches, strict=True)
        ],
    }


def layer_cache(mixer: Attention, T: int, dtype: torch.dtype = torch.float32) -> dict:
    """What one layer's mixer keeps while decoding (its ``cache_kind``), exactly, in bytes for one sequence.

    ``cache_bytes`` is the cache at the context; ``kv_cache_bytes_per_token`` what each token adds
    to a cache of keys and values (a window's while it fills; None for a state, which does not
    grow); ``state_bytes`` a state's size, the same at any length (also the states a composite
    mixer keeps beside its keys and values); ``window`` the tokens a window keeps;
    ``max_cache_bytes`` the most the cache ever holds (None: it grows with the text)."""
    kind = type(mixer).declared_cache_kind(mixer.params)
    at_context = mixer.cache_bytes(T, dtype)
    row: dict = {
        "cache_kind": kind,
        "cache_bytes": at_context,
        "kv_cache_bytes_per_token": None,
        "state_bytes": None,
        "window": None,
        "max_cache_bytes": None,
    }
    if kind == "state":
        row["state_bytes"] = row["max_cache_bytes"] = at_context
    elif kind == "window":
        window = type(mixer).cache_window(mixer.params)
        row["window"] = window
        row["kv_cache_bytes_per_token"] = mixer.cache_bytes(1, dtype) - mixer.cache_bytes(0, dtype)
        row["max_cache_bytes"] = at_context if window is None else mixer.cache_bytes(window, dtype)
    else:
        per_token = mixer.cache_bytes(T + 1, dtype) - at_context
        row["kv_cache_bytes_per_token"] = per_token
        row["state_bytes"] = at_context - per_token * T or None  # a composite's states beside its keys and values
    return row


def model_cache(model: GPT, caches: list[dict], T: int) -> dict:
    """The whole decoding cache of one sequence: ``bytes_per_token`` is what each further token adds
    (the layers that keep every key and value), ``state_bytes`` and ``window_bytes`` what the
    bounded layers hold at most, ``bytes_per_sequence`` all of it at the context; and whether
    generation decodes past the context (else ``extension_refusal`` says why, naming the layer)."""
    refusal = model.extension_refusal()
    return {
        "bytes_per_token": sum(c["kv_cache_bytes_per_token"] for c in caches if c["cache_kind"] == "keys_values"),
        "bytes_per_sequence": sum(c["cache_bytes"] for c in caches),
        "state_bytes": sum(c["state_bytes"] or 0 for c in caches),
        "window_bytes": sum(c["max_cache_bytes"] for c in caches if c["cache_kind"] == "window"),
        "dtype": "float32",
        "context_length": T,
        "decodes_past_context": refusal is None,
        "extension_refusal": refusal,
    }


def mtp_cache_bytes(model: GPT, T: int) -> int:
    """What self-speculative decoding (generate --speculative) adds to the cache at the context: the
    multi-token prediction modules' blocks keep caches of their own (0 without ``model.mtp``)."""
    if model.mtp is None:
        return 0
    return sum(block.attention.cache_bytes(T) for block in model.mtp.blocks)


def _short(spec: ComponentSpec) -> str:
    """'rope' or 'rope(base=1000000.0)': the name and the params that differ from the plugin's defaults."""
    changed = {
        k: v
        for k, v in spec.params.model_dump(mode="json").items()
        if k not in spec.impl.Params.model_fields or v != spec.impl.Params.model_fields[k].default
    }
    return spec.name + (f"({', '.join(f'{k}={v}' for k, v in changed.items())})" if changed else "")


def run(args: argparse.Namespace) -> int:
    info = describe(load_run_config(args.config, args.overrides))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    m = info["config"]["model"]
    print(f"{args.config}")
    for key, value in m.items():
        shown = ", ".join(f"{k}={v!r}" for k, v in value.items()) if isinstance(value, dict) else value
        print(f"  {key:<15} {shown}")
    print("parameters")
    for family, n in info["parameters"].items():
        print(f"  {family:<15} {n:>15,}")
    print(f"  {'active/token':<15} {info['active_parameters_per_token']:>15,}")
    print(f"cost per token at context {m['context_length']}")
    flops = info["flops_per_token"]
    print(f"  {'forward FLOPs':<15} {flops['forward']:>15,}")
    print(f"  {'training FLOPs':<15} {flops['training']:>15,}")
    print("\n".join(cache_lines(info["kv_cache"], info["layers"])))
    print("layers")
    header = ["layer", "kind", *PER_LAYER, "parameters", "cache (fp32)"]
    rows = [
        [
            str(r["layer"]),
            r["kind"] or "-",
            *(r[f] for f in PER_LAYER),
            f"{r['parameters']:,}",
            _layer_cache_text(r),
        ]
        for r in info["layers"]
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def byte_size(n: int) -> str:
    """'18,432 bytes (18.0 KiB)': exact, with a readable size beside it from 1 KiB on."""
    exact = f"{n:,} bytes"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{exact} ({n / size:,.1f} {unit})"
    return exact


def cache_lines(kv: dict, layers: list[dict]) -> list[str]:
    """The decoding cache of one sequence by what the layers keep, at the context and past it."""
    own = [r for r in layers if r["kv_from"] is None]  # the others keep no cache: they read an earlier layer's
    count = {kind: sum(r["cache_kind"] == kind for r in own) for kind in ("keys_values", "window")}
    count["state"] = sum(bool(r["state_bytes"]) for r in layers)  # not the layers without a mixer (0 bytes)
    lines = [f"decoding cache of one sequence ({kv['dtype']})"]
    if count["keys_values"]:
        lines.append(
            f"  {'keys, values':<15} {kv['bytes_per_token']:,} bytes per token in {_layers(count['keys_values'])}"
        )
    if count["window"]:
        lines.append(f"  {'windows':<15} at most {byte_size(kv['window_bytes'])} in {_layers(count['window'])}")
    if count["state"]:
        lines.append(
            f"  {'states':<15} {byte_size(kv['state_bytes'])}, the same at any length, in {_layers(count['state'])}"
        )
    lines.append(f"  {'at context':<15} {byte_size(kv['bytes_per_sequence'])} at {kv['context_length']:,} tokens")
    if kv["mtp_bytes_per_sequence"]:
        lines.append(f"  {'mtp':<15} {byte_size(kv['mtp_bytes_per_sequence'])} more at the context with --speculative")
    if kv["decodes_past_context"]:
        grows = (
            f"keys and values grow by {kv['bytes_per_token']:,} bytes per token"
            if kv["bytes_per_token"]
            else "the cache stays as it is"
        )
        lines.append(f"  {'past context':<15} generation decodes past the context: {grows}")
    else:
        lines.append(f"  {'past context':<15} generation crops to the context: {kv['extension_refusal']}")
    return lines


def _layers(n: int) -> str:
    return f"{n} layer" if n == 1 else f"{n} layers"


def _layer_cache_text(r: dict) -> str:
    if r["kv_from"] is not None:
        return f"none: layer {r['kv_from']}'s keys and values"
    if r["cache_kind"] == "state":
        return f"state {byte_size(r['state_bytes'])}" if r["state_bytes"] else "nothing"
    if r["cache_kind"] == "window":
        return f"window {r['window']}: {r['kv_cache_bytes_per_token']:,} bytes/token, at most {r['max_cache_bytes']:,}"
    states = f" + state {byte_size(r['state_bytes'])}" if r["state_bytes"] else ""
    return f"{r['kv_cache_bytes_per_token']:,} bytes/token{states}"
