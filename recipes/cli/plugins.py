"""gptzoo plugins: every registered component and task, its params and the plugin that provides it."""

import argparse
import json

from pydantic_core import PydanticUndefined

from gptzoo.registry import default_registry

HELP = "list every component family, name and task, and the plugin (distribution and version) that provides it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON list (its shape: docs/reference/commands.md)")


def _params(entry) -> dict:
    out = {}
    for name, field in entry.params_model.model_fields.items():
        if name == "name":  # a task's own name field (a component's params never have one: its spec holds the name)
            continue
        default = None if field.default is PydanticUndefined else field.default
        annotation = field.annotation
        shown = (
            annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")
        )  # int, not <class 'int'>
        out[name] = {"type": shown, "default": default, "required": field.is_required()}
    return out


def run(args: argparse.Namespace) -> int:
    registry = default_registry()
    entries = [*registry.entries(), *registry.tasks()]
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "family": e.family,
                        "name": e.name,
                        "plugin": e.plugin,
                        "distribution": e.distribution,
                        "version": e.version,
                        "params": _params(e),
                    }
                    for e in entries
                ],
                indent=2,
                default=str,
            )
        )
        return 0
    rows = [
        (e.family, e.name, ", ".join(f"{k}={v['default']!r}" for k, v in _params(e).items()) or "-", e.provider)
        for e in entries
    ]
    widths = [max(len(r[i]) for r in rows + [("family", "name", "params", "provided by")]) for i in range(4)]
    for row in [("family", "name", "params", "provided by")] + rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0
