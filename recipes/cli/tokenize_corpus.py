"""gptzoo tokenize: a text's token ids and the piece of text each stands for, side by side
(the tables of the book's chapter 2)."""

import argparse
from pathlib import Path

from gptzoo.core import Tokenizer
from gptzoo.recipes.config.schema import RunConfig, load_run_config
from gptzoo.recipes.data.tokens import fit_tokenizer
from gptzoo.recipes.runs.folder import build_tokenizer

HELP = "show the token ids of a text and the piece each stands for, with a run's or a config's tokenizer"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        metavar="RUN_OR_CONFIG",
        help="a run folder (its saved tokenizer) or a TOML config or preset name (a tokenizer that learns its vocabulary is fitted on data.source)",
    )
    parser.add_argument("--text", required=True, help="the text to tokenize")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. model.tokenizer.name=word (repeatable)",
    )


def load_tokenizer(source: Path, overrides: list[str]) -> tuple[RunConfig, Tokenizer, str]:
    """The tokenizer ``source`` names and where its vocabulary came from, for the heading."""
    config = load_run_config(source, overrides)
    if source.is_dir():
        return config, build_tokenizer(config, source), f"saved in {source}"
    tokenizer = config.model.tokenizer.build()
    fitted = fit_tokenizer(config.data, tokenizer)
    return config, tokenizer, f"fitted on {config.data.source}" if fitted else "fixed vocabulary"


def table(tokenizer: Tokenizer, ids: list[int]) -> list[str]:
    """One line per token: its position, id and the text it decodes to alone (repr, so spaces
    and newlines show); a byte-level token holding part of a character decodes to '\ufffd'."""
    width = max(len(str(i)) for i in ids)
    lines = []
    for position, token in enumerate(ids):
        piece = tokenizer.decode([token])
        note = "  (part of a character)" if "\ufffd" in piece else ""
        lines.append(f"{position:>5}  {token:>{width}}  {piece!r}{note}")
    return lines


def run(args: argparse.Namespace) -> int:
    source = Path(args.source)
    config, tokenizer, origin = load_tokenizer(source, args.overrides)
    spec = config.model.tokenizer
    params = ", ".join(f"{k}={v!r}" for k, v in spec.params.model_dump().items())
    ids = tokenizer.encode(args.text)
    print(f"'{spec.name}' tokenizer{f' ({params})' if params else ''}, {tokenizer.vocab_size:,} ids, {origin}")
    print(f"{len(args.text)} characters -> {len(ids)} tokens: {ids}")
    if ids:
        print(f"{'pos':>5}  {'id':>{max(2, len(str(max(ids))))}}  piece")
        print("\n".join(table(tokenizer, ids)))
    print(f"decodes back to: {tokenizer.decode(ids)!r}")
    return 0
