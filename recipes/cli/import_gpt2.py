"""gptzoo import-gpt2: OpenAI's GPT-2 weights (Hugging Face layout) -> a gptzoo run folder."""

import argparse

from gptzoo.recipes.interop.gpt2 import ATTENTION, SIZES, import_gpt2

HELP = "convert a GPT-2 checkpoint (a Hugging Face folder, or a size name to download) into a run folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src",
        metavar="SRC",
        help=f"a folder holding config.json and model.safetensors, or one of {', '.join(SIZES)} (downloaded once into $GPTZOO_CACHE/hf or ~/.cache/gptzoo/hf)",
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="the run folder to create (must not exist, or be empty)"
    )
    parser.add_argument(
        "--attention",
        choices=ATTENTION,
        default="sdpa",
        help="attention variant of the imported model (default sdpa; all load the same weights)",
    )


def run(args: argparse.Namespace) -> int:
    config = import_gpt2(args.src, args.out, attention=args.attention)
    m = config.model
    print(
        f"{args.out}: GPT-2 with {m.n_layers} layers, d_model {m.d_model}, {m.n_heads} heads, context {m.context_length}, attention {m.attention.name}"
    )
    return 0
