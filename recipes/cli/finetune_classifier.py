"""gptzoo finetune-classifier: replace a run's LM head by a classifier and fine-tune it on labelled texts."""

import argparse

from gptzoo.recipes.cli import finetune_options
from gptzoo.recipes.config.finetune import ClassifierConfig
from gptzoo.recipes.finetuning.pipelines import finetune_classifier

HELP = "fine-tune a run as a text classifier (label<TAB>text lines, or a CSV with text and label columns)"
SHORTHANDS = {
    "--text-column": "data.text_column",
    "--label-column": "data.label_column",
    "--balance": "data.balance",
    "--quoting": "data.quoting",
    "--pooling": "pooling",
    "--pad-to": "data.pad_to",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    finetune_options.add_arguments(parser, ClassifierConfig, SHORTHANDS)


def run(args: argparse.Namespace) -> int:
    config = finetune_options.config_from_arguments(ClassifierConfig, args, SHORTHANDS)
    finetune_classifier(config, args.base_dir, args.out, resume=args.resume)
    return 0
