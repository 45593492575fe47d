"""gptzoo describe: the resolved config, parameter counts by family and per-plugin cost estimates."""

import argparse
import json

import torch

from gptzoo.core import ComponentSpec, ConfigError
from gptzoo.core.config import PER_LAYER
from gptzoo.recipes.config.schema import RunConfig, load_run_config
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
    per_sequence = model.kv_cache_bytes(T, torch.float32)
    return {
        "config": config.model_dump(mode="json"),
        "parameters": model.param_counts(),
        "active_parameters_per_token": model.active_parameters_per_token(),
        "flops_per_token": model.flops_per_token(T),
        "kv_cache": {
            "bytes_per_token": per_sequence // T,
            "bytes_per_sequence": per_sequence,
            "dtype": "float32",
            "context_length": T,
        },
        "layers": [
            {
                "layer": layer.index,
                "kind": layer.kind,
                **{family: _short(getattr(layer, family)) for family in PER_LAYER},
                "parameters": sum(p.numel() for p in block.parameters()),
                "kv_cache_bytes_per_token": block.attention.cache_bytes(T, torch.float32) // T,
            }
            for layer, block in zip(model_config.layers(), model.blocks, strict=True)
        ],
    }


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
    kv = info["kv_cache"]
    print(
        f"  {'KV cache':<15} {kv['bytes_per_token']:>15,} bytes/token (fp32), {kv['bytes_per_sequence'] / 2**20:,.1f} MiB per full sequence"
    )
    print("layers")
    header = ["layer", "kind", *PER_LAYER, "parameters", "KV bytes/token"]
    rows = [
        [
            str(r["layer"]),
            r["kind"] or "-",
            *(r[f] for f in PER_LAYER),
            f"{r['parameters']:,}",
            f"{r['kv_cache_bytes_per_token']:,}",
        ]
        for r in info["layers"]
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0
