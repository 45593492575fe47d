"""gptzoo finetune-classifier: replace a run's LM head by a classifier and fine-tune it on labelled texts."""

import argparse
from pathlib import Path

from gptzoo.recipes import finetune
from gptzoo.recipes.classify import LABELS, balance, classifier_config, classifier_from, encode_examples, evaluate, read_examples, train_classifier
from gptzoo.recipes.run import Run, append_metrics, load_run
from gptzoo.recipes.train import resolve_device
from gptzoo.registry import default_registry

HELP = "fine-tune a run as a text classifier (label<TAB>text lines, or a CSV with text and label columns)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    finetune.add_arguments(
        parser, data_help="label<TAB>text per line, or a .csv file with a header (see --text-column, --label-column)", epochs=5, split="0.7,0.1,0.2", train_choices=finetune.TRAIN_CHOICES[1:],
        train_help="what trains besides the new head: head (nothing else), last-block (with the final norm; the default), "
        "last-n (see --last-n), all. With --lora-rank the default is head: the adapters and the head train",
    )
    parser.add_argument("--text-column", default="text", help="CSV column holding the text (default text)")
    parser.add_argument("--label-column", default="label", help="CSV column holding the label (default label)")
    parser.add_argument("--balance", action="store_true", help="undersample every class to the size of the smallest before splitting")


def run(args: argparse.Namespace) -> int:
    fractions = finetune.check_arguments(args)
    base_dir, out, data = Path(args.base_dir), Path(args.out), Path(args.data)
    finetune.check_out_dir(out, base_dir)
    examples = read_examples(data, args.text_column, args.label_column)
    if args.balance:
        examples = balance(examples, args.seed)
    labels = sorted({e.label for e in examples})
    train, val, test = finetune.split_data(examples, fractions, args.seed)
    finetune.check_splits(data, {"train": train, "validation": val, "test": test})
    print(f"{len(examples)} examples, {len(labels)} classes ({', '.join(labels)}): train {len(train)}, validation {len(val)}, test {len(test)}")

    base = load_run(base_dir)
    registry = default_registry()
    max_length = finetune.max_length(args.max_length, base.config.model.context_length, base_dir)
    device = resolve_device(args.device)
    model = classifier_from(base.model, classifier_config(base.config.model, len(labels), registry))
    lora = finetune.choose_trainable(model, args.train or ("head" if args.lora_rank else "last-block"), args)
    model.to(device)

    tokenizer, pad_id = base.tokenizer, base.tokenizer.eot_id
    train, val, test = (encode_examples(split, tokenizer, labels, max_length) for split in (train, val, test))
    config = finetune.fine_tuned_config(model.config, data, fractions, finetune.train_config(args, device))
    out.mkdir(parents=True, exist_ok=True)
    train_classifier(model, train, val, config.train, pad_id=pad_id, device=device, out=out)
    finetune.write_json(out / LABELS, {"labels": labels, "max_length": max_length})
    finetune.merge_and_save(out, Run(out, config, model, tokenizer), lora)
    test_loss, test_acc = evaluate(model, test, config.train.batch_size, pad_id, device)
    append_metrics(out, {"test_loss": test_loss, "test_acc": test_acc})
    print(f"test loss {test_loss:.3f}, accuracy {test_acc:.1%} on {len(test)} examples; saved the classifier to {out}")
    return 0
