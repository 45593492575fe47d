"""gptzoo export-hf: a GPT-2-shaped run folder -> a Hugging Face GPT2LMHeadModel folder."""

import argparse
import sys

from gptzoo.recipes.gpt2 import export_hf
from gptzoo.recipes.run import load_config

HELP = "write a GPT-2-shaped run as a Hugging Face GPT2LMHeadModel folder (config.json + model.safetensors)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="DIR", help="a run folder (trained, fine-tuned or imported)")
    parser.add_argument("--out", required=True, metavar="HF_DIR", help="the folder to create (must not exist, or be empty)")


def run(args: argparse.Namespace) -> int:
    export_hf(args.run_dir, args.out)
    tokenizer = load_config(args.run_dir).model.tokenizer
    print(f"{args.out}: GPT2LMHeadModel.from_pretrained({str(args.out)!r}) loads it")
    if (tokenizer.name, tokenizer.params.model_dump()) != ("tiktoken", {"encoding": "gpt2"}):
        # The weights are valid GPT-2 weights, but their token ids mean this run's tokens.
        print(f"note: this run's tokenizer is '{tokenizer.name}', not GPT-2's; encode text with it, not with GPT-2's tokenizer", file=sys.stderr)
    return 0
