"""gptzoo export-hf: a run folder -> a Hugging Face checkpoint folder of the family its assembly matches."""

import argparse
import math
import sys
from pathlib import Path

from gptzoo.core import GptzooError
from gptzoo.recipes.interop.hf.export import MAX_SHARD_BYTES, export_hf
from gptzoo.recipes.interop.hf.families import all_families
from gptzoo.registry import Registry

HELP = "write a run as a Hugging Face checkpoint folder of the family its assembly matches"


def description_for(registry: Registry) -> str:
    """What ``--help`` prints: HELP naming the families, the built-in ones and then those the registry's plugins add."""
    return f"{HELP} ({', '.join(all_families(registry))})"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="DIR", help="a run folder (trained, fine-tuned or imported)")
    parser.add_argument(
        "--out", required=True, metavar="HF_DIR", help="the folder to create (must not exist, or be empty)"
    )
    parser.add_argument(
        "--max-shard-gb",
        type=float,
        default=MAX_SHARD_BYTES / 2**30,
        help=f"split the weights into files of at most this many GiB (default {MAX_SHARD_BYTES / 2**30:g}, as transformers)",
    )


def run(args: argparse.Namespace) -> int:
    if not args.max_shard_gb > 0 or math.isinf(args.max_shard_gb):  # also nan
        raise GptzooError(f"--max-shard-gb {args.max_shard_gb}: give a positive size in GiB, e.g. 5")
    family, _ = export_hf(args.run_dir, args.out, max_shard_bytes=int(args.max_shard_gb * 2**30))
    print(
        f"{args.out}: {family.architecture}; transformers.AutoModelForCausalLM.from_pretrained({str(args.out)!r}) loads it"
    )
    from gptzoo.recipes.runs.folder import load_config
    from gptzoo.recipes.runs.manifest import read_manifest

    tokenizer = load_config(
        args.run_dir, manifest=read_manifest(Path(args.run_dir))
    ).model.tokenizer  # export_hf gave any note
    if tokenizer.name != "hf" and (tokenizer.name, tokenizer.params.model_dump()) != ("tiktoken", {"encoding": "gpt2"}):
        # The weights are valid, but their token ids mean this run's tokens.
        print(
            f"note: this run's tokenizer is '{tokenizer.name}', which has no Hugging Face tokenizer.json; encode text with it",
            file=sys.stderr,
        )
    return 0
