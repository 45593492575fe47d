"""gptzoo finetune-instruct: fine-tune a run to follow instructions (Alpaca format), then answer the test entries."""

import argparse

from gptzoo.recipes.cli import finetune_options
from gptzoo.recipes.config.finetune import InstructConfig
from gptzoo.recipes.finetuning.pipelines import finetune_instruct

HELP = "fine-tune a run on instructions (a JSON list of {instruction, input, output}); writes the test responses"
SHORTHANDS = {
    "--mask-prompt": "data.mask_prompt",
    "--max-new-tokens": "test.max_new_tokens",
    "--limit-test": "test.limit",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    finetune_options.add_arguments(parser, InstructConfig, SHORTHANDS)


def run(args: argparse.Namespace) -> int:
    config = finetune_options.config_from_arguments(InstructConfig, args, SHORTHANDS)
    finetune_instruct(config, args.base_dir, args.out, resume=args.resume)
    return 0
