"""gptzoo classify: the label a fine-tuned classifier gives a text, with its probability."""

import argparse

from gptzoo.core import GptzooError
from gptzoo.recipes.finetuning.classifier import LABELS, predict
from gptzoo.recipes.runs.files import read_json
from gptzoo.recipes.runs.folder import load_run
from gptzoo.recipes.runs.manifest import check_file

HELP = "print the label a classifier run (from finetune-classifier) predicts for a text, and its probability"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="DIR", help="a run folder written by gptzoo finetune-classifier")
    parser.add_argument("--text", required=True, help="the text to classify")


def run(args: argparse.Namespace) -> int:
    loaded = load_run(args.run_dir)
    file = loaded.folder / LABELS
    if loaded.config.model.head.name != "classifier" or not file.is_file():
        raise GptzooError(
            f"{loaded.folder}: not a classifier run (no {LABELS} or no classifier head); make one with gptzoo finetune-classifier"
        )
    if loaded.manifest is not None:
        check_file(loaded.folder, loaded.manifest, LABELS)
    saved = read_json(file, GptzooError)
    try:
        labels, max_length = list(saved["labels"]), int(saved["max_length"])
        pad_to = None if saved.get("pad_to") is None else int(saved["pad_to"])  # absent in runs from before --pad-to
    except (KeyError, TypeError, ValueError) as err:
        raise GptzooError(f'{file}: unreadable ({err}); it should hold {{"labels": [...], "max_length": N}}') from None
    if len(labels) != loaded.config.model.head.params.n_classes:
        raise GptzooError(
            f"{file}: {len(labels)} labels but the head has {loaded.config.model.head.params.n_classes} classes"
        )
    label, probability = predict(loaded.model, loaded.tokenizer, args.text, labels, max_length, pad_to)
    print(f"{label}\t{probability:.4f}")
    return 0
