"""gptzoo presets: the shipped configs by name, with their parameter counts."""

import argparse
import json

from gptzoo.core import ConfigError
from gptzoo.recipes.cli.describe import describe
from gptzoo.recipes.config.presets import find_preset, preset_names
from gptzoo.recipes.config.reading import read_toml
from gptzoo.recipes.config.schema import load_run_config

HELP = "list the shipped configs (presets) that train, describe and the other commands take by name"
SWEEPS = "ablations/"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", nargs="?", default="", help="only the presets whose names contain TEXT, e.g. hf/")
    parser.add_argument(
        "--json", action="store_true", help="print a JSON list of {name, kind, parameters, active_parameters_per_token}"
    )


def finetune_kind(name: str) -> str | None:
    """``finetune-classifier`` or ``finetune-instruct`` for a fine-tuning config (its ``kind``), else None."""
    kind = read_toml(find_preset(name), find_base=find_preset).get("kind")
    return f"finetune-{kind}" if kind in ("classifier", "instruct") else None


def preset_rows(text: str = "") -> list[dict]:
    """One row per preset: a run config with its parameters (as describe counts them), a sweep, or a fine-tuning."""
    rows = []
    for name in preset_names():
        if text not in name:
            continue
        kind = "sweep" if name.startswith(SWEEPS) else finetune_kind(name)
        if kind is not None:
            rows.append({"name": name, "kind": kind, "parameters": None, "active_parameters_per_token": None})
            continue
        config = load_run_config(name)
        try:
            info = describe(config)
        except ConfigError:  # a tokenizer that learns its vocabulary: the count waits for the corpus
            info = {"parameters": {"total": None}, "active_parameters_per_token": None}
        total, active = info["parameters"]["total"], info["active_parameters_per_token"]
        rows.append({"name": name, "kind": "run", "parameters": total, "active_parameters_per_token": active})
    if not rows:
        raise ConfigError(f"no preset name contains {text!r}; `gptzoo presets` lists them all")
    return rows


def run(args: argparse.Namespace) -> int:
    rows = preset_rows(args.text)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(row["name"]) for row in rows)
    print(f"{'preset':<{width}}  {'parameters':>17}  {'active/token':>17}")
    for row in rows:
        if row["kind"] == "sweep":
            counts = f"a sweep: gptzoo ablate {row['name']}"
        elif row["kind"].startswith("finetune-"):
            counts = f"a fine-tuning: gptzoo {row['kind']} BASE --config {row['name']}"
        elif row["parameters"] is None:
            counts = "counted once the tokenizer has learned its vocabulary from the corpus"
        else:
            total, active = row["parameters"], row["active_parameters_per_token"]
            counts = f"{total:>17,}  {active:>17,}" if active != total else f"{total:>17,}"
        print(f"{row['name']:<{width}}  {counts}".rstrip())
    return 0
