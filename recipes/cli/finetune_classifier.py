"""gptzoo finetune-classifier: replace a run's LM head by a classifier and fine-tune it on labelled texts."""

import argparse
from pathlib import Path
from typing import get_args

from gptzoo.core import GptzooError
from gptzoo.plugins.heads import ClassifierParams
from gptzoo.recipes.finetuning import common as finetune
from gptzoo.recipes.finetuning.classifier import (
    LABELS,
    QUOTING,
    balance,
    balance_like_the_book,
    classifier_config,
    classifier_from,
    encode_examples,
    evaluate,
    read_examples,
    split_like_the_book,
    train_classifier,
)
from gptzoo.recipes.runs.folder import Run, commit_files, load_run
from gptzoo.recipes.runs.metrics import append_metrics
from gptzoo.recipes.training.devices import resolve_device
from gptzoo.registry import default_registry

HELP = "fine-tune a run as a text classifier (label<TAB>text lines, or a CSV with text and label columns)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    finetune.add_arguments(
        parser,
        data_help="label<TAB>text per line, or a .csv file with a header (see --text-column, --label-column)",
        epochs=5,
        split="0.7,0.1,0.2",
        split_order_help="shuffled (default): Python's random.Random(--seed) shuffles, --balance keeps file order; "
        "book: numpy's RandomState(--seed) as the book's pandas df.sample(random_state=123), and --balance as its create_balanced_dataset",
        train_choices=finetune.TRAIN_CHOICES,
        train_help="what trains besides the new head: head (nothing else), last-block (with the final norm; the default), "
        "last-n (see --last-n), all. With --lora-rank the default is head: the adapters and the head train; "
        "none (with --lora-rank only) freezes the new head too, as the book's appendix E (target it with --lora-targets ...,head.out)",
    )
    parser.add_argument("--text-column", default="text", help="CSV column holding the text (default text)")
    parser.add_argument("--label-column", default="label", help="CSV column holding the label (default label)")
    parser.add_argument(
        "--balance", action="store_true", help="undersample every class to the size of the smallest before splitting"
    )
    parser.add_argument(
        "--quoting",
        choices=QUOTING,
        default="none",
        help="in a label<TAB>text file: none (default), every line is one example; csv, a text opening with a double quote runs "
        "to the closing quote across lines, as the book's pandas.read_csv(sep='\\t') reads it (SMS Spam Collection: 5,572 examples, not 5,574)",
    )
    pooling = ClassifierParams.model_fields["pooling"]
    parser.add_argument(
        "--pooling",
        choices=get_args(pooling.annotation),
        default=pooling.default,
        help=f"what the classifier head reads: {pooling.description}",
    )
    parser.add_argument(
        "--pad-to",
        choices=("batch", "train"),
        default="batch",
        help="pad each batch to its longest example (batch, the default) or every batch to the longest training example (train, the book's SpamDataset)",
    )


@finetune.holding_out_lock
def run(args: argparse.Namespace) -> int:
    fractions = finetune.check_arguments(args)
    base_dir, out, data = Path(args.base_dir), Path(args.out), Path(args.data)
    finetune.check_out_dir(out, base_dir)
    csv = data.suffix.lower() == ".csv"
    for option, value, default in (
        ("--text-column", args.text_column, "text"),
        ("--label-column", args.label_column, "label"),
    ):
        if value != default and not csv:
            raise GptzooError(
                f"{option} {value}: {data} is read as label<TAB>text lines, which have no columns; it applies to a .csv file with a header"
            )
    if args.quoting != "none" and csv:
        raise GptzooError(
            f"--quoting {args.quoting}: applies to a label<TAB>text file; {data} is read as CSV, with CSV's quoting"
        )
    examples = read_examples(data, args.text_column, args.label_column, args.quoting)
    book = args.split_order == "book"
    if args.balance:
        examples = (balance_like_the_book if book else balance)(examples, args.seed)
    labels = sorted({e.label for e in examples})
    train, val, test = (
        split_like_the_book(examples, fractions, args.seed)
        if book
        else finetune.split_data(examples, fractions, args.seed)
    )
    finetune.check_splits(data, {"train": train, "validation": val, "test": test})
    print(
        f"{len(examples)} examples, {len(labels)} classes ({', '.join(labels)}): train {len(train)}, validation {len(val)}, test {len(test)}"
    )

    base = load_run(base_dir)
    registry = default_registry()
    max_length = finetune.max_length(args.max_length, base.config.model.context_length, base_dir)
    device = resolve_device(args.device, "--device")
    model = classifier_from(base.model, classifier_config(base.config.model, len(labels), registry, args.pooling))
    lora = finetune.choose_trainable(model, args.train or ("head" if args.lora_rank else "last-block"), args)
    model.to(device)

    tokenizer, pad_id = base.tokenizer, base.tokenizer.eot_id
    train = encode_examples(train, tokenizer, labels, max_length)
    pad_to = max(len(ids) for ids, _ in train) if args.pad_to == "train" else None
    val, test = (encode_examples(split, tokenizer, labels, pad_to or max_length) for split in (val, test))
    config = finetune.fine_tuned_config(model.config, data, fractions, finetune.train_config(args, device))
    out.mkdir(parents=True, exist_ok=True)
    train_classifier(
        model, train, val, config.train, pad_id=pad_id, device=device, out=out, pad_to=pad_to, drop_last=args.drop_last
    )
    finetune.write_json(out / LABELS, {"labels": labels, "max_length": pad_to or max_length, "pad_to": pad_to})
    finetune.merge_and_save(out, Run(out, config, model, tokenizer), lora)
    test_loss, test_acc = evaluate(model, test, config.train.batch_size, pad_id, device, pad_to=pad_to)
    append_metrics(out, {"test_loss": test_loss, "test_acc": test_acc})
    commit_files(out, {})  # the manifest now covers the test record too
    print(f"test loss {test_loss:.3f}, accuracy {test_acc:.1%} on {len(test)} examples; saved the classifier to {out}")
    return 0
