"""gptzoo import-hf: a Hugging Face checkpoint folder of a supported family -> a gptzoo run folder."""

import argparse

from gptzoo.recipes.interop.hf.convert import readable_types
from gptzoo.recipes.interop.hf.families import all_families
from gptzoo.recipes.interop.hf.import_ import DTYPES, import_hf
from gptzoo.registry import Registry

HELP = "convert a Hugging Face checkpoint folder, or a model's Hub id (ORG/NAME[@REVISION]), of a supported family into a run folder"


def description_for(registry: Registry) -> str:
    """What ``--help`` prints: HELP naming the families, the built-in ones and then those the registry's plugins add."""
    return f"convert a Hugging Face checkpoint folder or Hub id ({', '.join(readable_types(all_families(registry)))}) into a run folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src",
        metavar="SRC",
        help="a folder holding config.json, model.safetensors (or shards with model.safetensors.index.json) and tokenizer.json; or a model's Hub id ORG/NAME[@REVISION], downloaded (only those files) into the Hugging Face cache, which honours HF_HOME, HF_HUB_OFFLINE and HF_TOKEN",
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="the run folder to create (must not exist, or be empty)"
    )
    parser.add_argument(
        "--attention",
        default=None,
        help="attention variant of the imported model: sdpa (the default for full attention), fused or per_head, which compute the same function from the same weights",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="weights in the run folder: float32 (default) or bfloat16 (keeps a bf16 checkpoint as it is)",
    )


def run(args: argparse.Namespace) -> int:
    config = import_hf(args.src, args.out, attention=args.attention, dtype=args.dtype)
    m = config.model
    print(
        f"{args.out}: {m.n_layers} layers, d_model {m.d_model}, {m.n_heads} heads ({m.n_kv_heads or m.n_heads} key/value), context {m.context_length}, tokenizer {m.tokenizer.name}; gptzoo describe {args.out} shows its assembly"
    )
    return 0
