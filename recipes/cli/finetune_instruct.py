"""gptzoo finetune-instruct: fine-tune a run to follow instructions (Alpaca format), then answer the test entries."""

import argparse
from pathlib import Path

from gptzoo.core import GptzooError
from gptzoo.recipes.finetuning import common as finetune
from gptzoo.recipes.finetuning.instruct import (
    RESPONSES,
    encode_entries,
    evaluate,
    generate_responses,
    read_entries,
    split_in_file_order,
    train_instructions,
)
from gptzoo.recipes.runs.folder import Run, load_run
from gptzoo.recipes.runs.metrics import append_metrics
from gptzoo.recipes.training.devices import resolve_device

HELP = "fine-tune a run on instructions (a JSON list of {instruction, input, output}); writes the test responses"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    finetune.add_arguments(
        parser,
        data_help='a JSON list of {"instruction", "input", "output"} entries (input may be empty)',
        epochs=2,
        split="0.85,0.05,0.1",
        split_order_help="shuffled (default): Python's random.Random(--seed) shuffles, then train, validation, test are cut; "
        "book: file order, cut as the book's chapter 7: train first, then test, then validation",
        train_choices=finetune.TRAIN_CHOICES,
        train_help="what trains: all (the default), none (with --lora-rank: the adapters only, its default), head, "
        "last-block (with the final norm and the head), last-n (see --last-n). A head tied to the embedding trains it too",
    )
    parser.add_argument(
        "--mask-prompt", action="store_true", help="train on the responses only: the prompt tokens are not targets"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=256, help="longest test response, in tokens (default 256)"
    )
    parser.add_argument(
        "--limit-test", type=int, default=None, metavar="N", help="generate responses for the first N test entries only"
    )


@finetune.holding_out_lock
def run(args: argparse.Namespace) -> int:
    fractions = finetune.check_arguments(args)
    if args.max_new_tokens < 1:
        raise GptzooError(f"--max-new-tokens {args.max_new_tokens}: give at least 1")
    if args.limit_test is not None and args.limit_test < 0:
        raise GptzooError(f"--limit-test {args.limit_test}: give 0 or more test entries")
    train_mode = args.train or ("none" if args.lora_rank else "all")
    base_dir, out, data = Path(args.base_dir), Path(args.out), Path(args.data)
    finetune.check_out_dir(out, base_dir)
    entries = read_entries(data)
    train, val, test = (
        split_in_file_order(entries, fractions)
        if args.split_order == "book"
        else finetune.split_data(entries, fractions, args.seed)
    )
    finetune.check_splits(data, {"train": train, "validation": val, "test": test})
    print(f"{len(entries)} entries: train {len(train)}, validation {len(val)}, test {len(test)}")

    base = load_run(base_dir)
    if base.config.model.head.name != "lm":
        raise GptzooError(
            f"{base_dir}: its '{base.config.model.head.name}' head does not predict tokens; instruction fine-tuning needs a language model"
        )
    max_length = finetune.max_length(args.max_length, base.config.model.context_length, base_dir)
    device = resolve_device(args.device, "--device")
    model, tokenizer, pad_id = base.model, base.tokenizer, base.tokenizer.eot_id
    lora = finetune.choose_trainable(model, train_mode, args)
    model.to(device)

    train_ids, val_ids, test_ids = (encode_entries(split, tokenizer) for split in (train, val, test))
    config = finetune.fine_tuned_config(model.config, data, fractions, finetune.train_config(args, device))
    out.mkdir(parents=True, exist_ok=True)
    train_instructions(
        model,
        train_ids,
        val_ids,
        config.train,
        pad_id=pad_id,
        max_length=max_length,
        mask_prompt=args.mask_prompt,
        device=device,
        out=out,
        drop_last=args.drop_last,
    )
    finetune.merge_and_save(out, Run(out, config, model, tokenizer), lora)
    test_loss = evaluate(model, test_ids, config.train.batch_size, pad_id, max_length, args.mask_prompt, device)
    append_metrics(out, {"test_loss": test_loss})
    print(f"test loss {test_loss:.3f} on {len(test)} entries; saved the model to {out}")

    answered = test[: args.limit_test] if args.limit_test is not None else test
    finetune.write_json(out / RESPONSES, generate_responses(model.eval(), tokenizer, answered, args.max_new_tokens))
    print(f"wrote {len(answered)} test responses to {out / RESPONSES}")
    return 0
