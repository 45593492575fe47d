"""The ``gptzoo`` command. Each subcommand lives in its own module with ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int`` (and ``description_for(registry)`` where its
description names what installed plugins add); errors a person can act on (GptzooError) print
one message and exit with 2, never a traceback."""

from __future__ import annotations

import argparse
import errno
import importlib
import shlex
import sys
from collections.abc import Callable
from typing import Any

COMMANDS = {
    "plugins": "gptzoo.recipes.cli.plugins",
    "presets": "gptzoo.recipes.cli.presets",
    "describe": "gptzoo.recipes.cli.describe",
    "tokenize": "gptzoo.recipes.cli.tokenize_corpus",
    "gradients": "gptzoo.recipes.cli.gradients",
    "train": "gptzoo.recipes.cli.train",
    "eval": "gptzoo.recipes.cli.eval",
    "evaluate": "gptzoo.recipes.cli.evaluate",
    "finetune-classifier": "gptzoo.recipes.cli.finetune_classifier",
    "classify": "gptzoo.recipes.cli.classify",
    "finetune-instruct": "gptzoo.recipes.cli.finetune_instruct",
    "chat": "gptzoo.recipes.cli.chat",
    "ablate": "gptzoo.recipes.cli.ablate",
    "import-gpt2": "gptzoo.recipes.cli.import_gpt2",
    "import-hf": "gptzoo.recipes.cli.import_hf",
    "import-book": "gptzoo.recipes.cli.import_book",
    "export-hf": "gptzoo.recipes.cli.export_hf",
    "generate": "gptzoo.recipes.cli.generate",
    "inspect": "gptzoo.recipes.cli.inspect_run",
    "new-plugin": "gptzoo.recipes.cli.new_plugin",
}


class Parser(argparse.ArgumentParser):
    """``@FILE`` anywhere on the command line stands for the options in FILE: shell-quoted words,
    several per line allowed, ``#`` starts a comment."""

    # A description naming what the installed plugins add (import-hf's families), written only when
    # the help is printed: the registry loads plugins, which no other use of the parser needs.
    description_for: Callable[[Any], str] | None = None

    def convert_arg_line_to_args(self, line: str) -> list[str]:
        try:
            return shlex.split(line, comments=True)
        except ValueError as err:  # an unclosed quote: a quoted value must end on its own line
            from gptzoo.core import GptzooError

            raise GptzooError(
                f"@FILE line {line.strip()[:60]!r}: {str(err).lower()}; a quoted value ends on the line it starts on"
            ) from None

    def format_help(self) -> str:
        if self.description_for is not None:
            from gptzoo.registry import default_registry

            self.description = self.description_for(default_registry())
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="gptzoo", description="A plugin-based zoo of GPT architectures.", fromfile_prefix_chars="@")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        p.description_for = getattr(module, "description_for", None)
        module.add_arguments(p)
        p.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:  # importing torch and the commands takes seconds: Ctrl-C then quits quietly too
        from gptzoo.core import GptzooError

        parser = build_parser()
    except KeyboardInterrupt:
        return 130
    try:
        args = parser.parse_args(argv)
    except GptzooError as err:  # --help reads the installed plugins, and one of them failed to load
        print(f"gptzoo: error: {err}", file=sys.stderr)
        return 2
    try:
        return args.handler(args) or 0
    except GptzooError as err:
        print(f"gptzoo {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the file system refused (permissions, a full disk): say what and where, no traceback
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            # A failed write names no file: the command's output folder is where it was writing.
            where = err.filename or getattr(args, "out", None)
            err = f"{where}: " * bool(where) + "no space left on the device; free some space and run again"
        print(f"gptzoo {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gptzoo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
