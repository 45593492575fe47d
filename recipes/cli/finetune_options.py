"""What ``gptzoo finetune-classifier`` and ``finetune-instruct`` share: BASE, ``--config`` (a TOML or a
preset), ``--set``, ``--data``, ``--out``, and the shorthand flags of gptzoo 0.1 (``--lr 1e-4`` for
``--set train.lr=1e-4``), each of which sets one config field; their help is the field's description."""

from __future__ import annotations

import argparse
import types
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from gptzoo.recipes.config.finetune import C
from gptzoo.recipes.config.finetune_files import load_finetune_config
from gptzoo.recipes.training.devices import resolve_device

# The shorthands both commands take: flag -> the config field it sets.
SHORTHANDS = {
    "--epochs": "train.epochs",
    "--batch-size": "train.batch_size",
    "--lr": "train.lr",
    "--weight-decay": "train.weight_decay",
    "--weight-decay-scope": "train.weight_decay_scope",
    "--betas": "train.betas",
    "--grad-clip": "train.grad_clip",
    "--drop-last": "train.drop_last",
    "--seed": "train.seed",
    "--split": "data.split",
    "--split-order": "data.split_order",
    "--max-length": "data.max_length",
    "--eval-batches": "train.eval_batches",
    "--train": "train.trainable",
    "--last-n": "train.last_n",
    "--lora-rank": "lora.rank",
    "--lora-alpha": "lora.alpha",
    "--lora-convention": "lora.convention",
    "--lora-targets": "lora.targets",
    "--device": "train.device",
}


def field_at(kind: type[BaseModel], dotted: str) -> FieldInfo:
    """The pydantic field at a dotted path of a config model."""
    *tables, name = dotted.split(".")
    for table in tables:
        kind = next(a for a in _alternatives(kind.model_fields[table].annotation) if isinstance(a, type))
    return kind.model_fields[name]


def _alternatives(annotation: Any) -> tuple:
    """``X | None`` -> (X,); anything else -> (itself,)."""
    if get_origin(annotation) in (Union, types.UnionType):
        return tuple(a for a in get_args(annotation) if a is not type(None))
    return (annotation,)


def add_shorthand(group: argparse._ArgumentGroup, flag: str, dotted: str, kind: type[BaseModel]) -> None:
    """``flag`` as an option that sets ``dotted``: its type, choices, default and help come from the field."""
    field = field_at(kind, dotted)
    annotation = _alternatives(field.annotation)[0]
    default = "" if field.is_required() or field.default is None else f" (default {_shown(field.default)})"
    help = f"{field.description}{default}; sets {dotted}"
    dest = dotted.replace(".", "__")
    if annotation is bool:
        group.add_argument(flag, dest=dest, action="store_true", default=None, help=help)
    elif get_origin(annotation) is Literal:
        group.add_argument(flag, dest=dest, choices=get_args(annotation), default=None, help=help)
    else:
        convert = annotation if annotation in (int, float) else str
        group.add_argument(
            flag, dest=dest, type=convert, default=None, metavar=dotted.rpartition(".")[2].upper(), help=help
        )


def _shown(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


def add_arguments(parser: argparse.ArgumentParser, kind: type[BaseModel], shorthands: dict[str, str]) -> None:
    """The options of a fine-tuning command whose config is ``kind``; ``shorthands`` are its own flags."""
    parser.add_argument(
        "base_dir",
        metavar="BASE",
        help="the run folder to start from (an imported GPT-2 or a model trained with gptzoo), or a preset as initialised",
    )
    parser.add_argument(
        "--config",
        metavar="TOML",
        help="the fine-tuning config: a TOML file, a preset name (book/ch06-spam) or a fine-tuned run to repeat",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="the new run folder (new, or an empty folder)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the fine-tuning stopped in --out from its last finished epoch (give the command that started it)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. train.lr=1e-4 (repeatable; applied after the config and the flags)",
    )
    parser.add_argument(
        "--data", dest="data__path", metavar="PATH", help=f"{field_at(kind, 'data.path').description}; sets data.path"
    )
    group = parser.add_argument_group(
        "shorthands", "gptzoo 0.1's options, kept for this release: each sets one config field, as --set does"
    )
    for flag, dotted in (SHORTHANDS | shorthands).items():
        add_shorthand(group, flag, dotted, kind)


def config_from_arguments(kind: type[C], args: argparse.Namespace, shorthands: dict[str, str]) -> C:
    """The validated config the command line describes: --config, then the flags given, then --set."""
    flags = {"--data": "data.path"} | SHORTHANDS | shorthands
    given = {
        dotted: (flag, value)
        for flag, dotted in flags.items()
        if (value := vars(args)[dotted.replace(".", "__")]) is not None
    }
    if "train.device" in given:  # checked here, so a bad device is refused before any data is read
        resolve_device(given["train.device"][1], "--device")
    names = {dotted: flag for flag, dotted in flags.items()}
    return load_finetune_config(kind, args.config, args.overrides, given, names)
