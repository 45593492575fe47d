"""The two fine-tunings from start to finish: ``finetune_classifier`` and ``finetune_instruct``.

Each reads its config's data, splits it, loads the base, chooses what trains, runs the book's
loop and saves a new run folder whose config.json holds the whole fine-tuning config (and the
base), then scores the test split. ``gptzoo finetune-classifier`` and ``finetune-instruct``
are these functions behind a command line.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gptzoo.core import ConfigError, GptzooError
from gptzoo.recipes.config.finetune import ClassifierConfig, InstructConfig
from gptzoo.recipes.config.presets import find_preset
from gptzoo.recipes.config.schema import load_run_config
from gptzoo.recipes.finetuning import common
from gptzoo.recipes.finetuning.classifier import (
    LABELS,
    balance,
    balance_like_the_book,
    classifier_config,
    classifier_from,
    encode_examples,
    loss_and_accuracy,
    read_examples,
    split_like_the_book,
    train_classifier,
)
from gptzoo.recipes.finetuning.instruct import (
    RESPONSES,
    check_responses_fit,
    encode_entries,
    generate_responses,
    mean_loss,
    read_entries,
    split_in_file_order,
    train_instructions,
)
from gptzoo.recipes.runs.folder import Run, commit_files, load_run
from gptzoo.recipes.runs.metrics import append_metrics
from gptzoo.recipes.training.devices import resolve_device
from gptzoo.recipes.training.models import untrained_model
from gptzoo.registry import default_registry


def base_run(base: str | Path) -> Run:
    """The run fine-tuning starts from: a run folder, or a preset's model as initialised (``tiny``)."""
    path = Path(base)
    if not path.exists():
        try:
            preset = find_preset(str(base))
        except ConfigError:
            return load_run(path)  # says there is no such run folder
        config = load_run_config(preset)
        model, tokenizer = untrained_model(config)
        return Run(path, config.model_copy(update={"model": model.config}), model.eval(), tokenizer)
    return load_run(path)


def classifier_splits(config: ClassifierConfig) -> tuple[list, list, list]:
    """The labelled examples of ``config.data``, balanced and split as it says: (train, validation, test)."""
    data, seed, book = config.data, config.train.seed, config.data.split_order == "book"
    examples = read_examples(data.path, data.text_column, data.label_column, data.quoting)
    if data.balance:
        examples = (balance_like_the_book if book else balance)(examples, seed)
    splits = (split_like_the_book if book else common.split_data)(examples, data.split, seed)
    common.check_splits(Path(data.path), dict(zip(("train", "validation", "test"), splits, strict=True)))
    labels = sorted({e.label for e in examples})
    print(
        f"{len(examples)} examples, {len(labels)} classes ({', '.join(labels)}): "
        f"train {len(splits[0])}, validation {len(splits[1])}, test {len(splits[2])}"
    )
    return splits


def finetune_classifier(
    config: ClassifierConfig, base: str | Path, out: str | Path, resume: bool = False
) -> dict[str, float]:
    """Fine-tune ``base`` (a run folder, or a preset) as a text classifier into the new run folder ``out``.

    The LM head is replaced by a classifier over the data's labels (sorted: ham 0, spam 1), saved with the
    truncation length in labels.json; metrics.jsonl gets a record per epoch, then the test split's.
    Returns the test record: ``{"test_loss", "test_acc"}``. Raises GptzooError for bad data or an ``out``
    that holds anything; nothing is written then. ``resume`` continues the same fine-tuning stopped in
    ``out`` from its last finished epoch, to the run an uninterrupted one would have saved."""
    base, out = Path(base), Path(out)
    with common.writing_to(out, resume):
        common.check_out_dir(out, base, resume)
        made = common.made_by(config, base)
        resumed = common.resumed_state(out, made) if resume else None
        train, val, test = classifier_splits(config)
        labels = sorted({e.label for e in train + val + test})
        start = base_run(base)
        max_length = common.max_length(config.data.max_length, start.config.model.context_length, base)
        device = resolve_device(config.train.device, "train.device")
        head = classifier_config(start.config.model, len(labels), default_registry(), config.pooling)
        torch.manual_seed(config.train.seed)  # the new head's initialisation, and dropout after it, repeat
        model = classifier_from(start.model, head)
        lora = common.choose_trainable(model, config.train, config.lora)
        model.to(device)

        tokenizer, pad_id = start.tokenizer, start.tokenizer.eot_id
        train = encode_examples(train, tokenizer, labels, max_length)
        pad_to = max(len(ids) for ids, _ in train) if config.data.pad_to == "train" else None
        val, test = (encode_examples(split, tokenizer, labels, pad_to or max_length) for split in (val, test))
        run_config = common.fine_tuned_config(model.config, config, base, device)
        out.mkdir(parents=True, exist_ok=True)
        epoch_states = common.EpochStates(out, made, resumed)
        train_classifier(
            model,
            train,
            val,
            run_config.train,
            pad_id=pad_id,
            device=device,
            out=out,
            pad_to=pad_to,
            drop_last=config.train.drop_last,
            epoch_states=epoch_states,
        )
        common.write_json(out / LABELS, {"labels": labels, "max_length": pad_to or max_length, "pad_to": pad_to})
        common.merge_and_save(out, Run(out, run_config, model, tokenizer), lora)
        test_loss, test_acc = loss_and_accuracy(model, test, config.train.batch_size, pad_id, device, pad_to=pad_to)
        record = {"test_loss": test_loss, "test_acc": test_acc}
        append_metrics(out, record)
        commit_files(out, {})  # the manifest now covers the test record too
        epoch_states.finish()
    print(f"test loss {test_loss:.3f}, accuracy {test_acc:.1%} on {len(test)} examples; saved the classifier to {out}")
    return record


def instruct_splits(config: InstructConfig) -> tuple[list[dict], list[dict], list[dict]]:
    """The entries of ``config.data``, split as it says: (train, validation, test)."""
    entries = read_entries(config.data.path)
    fractions = config.data.split
    splits = (
        split_in_file_order(entries, fractions)
        if config.data.split_order == "book"
        else common.split_data(entries, fractions, config.train.seed)
    )
    common.check_splits(Path(config.data.path), dict(zip(("train", "validation", "test"), splits, strict=True)))
    print(f"{len(entries)} entries: train {len(splits[0])}, validation {len(splits[1])}, test {len(splits[2])}")
    return splits


def language_model_run(base: Path) -> Run:
    start = base_run(base)
    if start.config.model.head.name != "lm":
        raise GptzooError(
            f"{base}: its '{start.config.model.head.name}' head does not predict tokens; instruction fine-tuning needs a language model"
        )
    return start


def finetune_instruct(
    config: InstructConfig, base: str | Path, out: str | Path, resume: bool = False
) -> dict[str, float]:
    """Fine-tune ``base`` (a run folder, or a preset; a language model) on instructions into the new run folder ``out``.

    metrics.jsonl gets a record per epoch, then the test loss; responses.json holds the model's greedy
    response to each test entry (the first ``config.test.limit``). Returns the test record: ``{"test_loss"}``.
    Raises GptzooError for bad data or an ``out`` that holds anything; nothing is written then. ``resume``
    continues the same fine-tuning stopped in ``out``, as ``finetune_classifier`` does."""
    base, out = Path(base), Path(out)
    with common.writing_to(out, resume):
        common.check_out_dir(out, base, resume)
        made = common.made_by(config, base)
        resumed = common.resumed_state(out, made) if resume else None
        train, val, test = instruct_splits(config)
        start = language_model_run(base)
        max_length = common.max_length(config.data.max_length, start.config.model.context_length, base)
        device = resolve_device(config.train.device, "train.device")
        model, tokenizer, pad_id = start.model, start.tokenizer, start.tokenizer.eot_id
        torch.manual_seed(config.train.seed)  # dropout repeats
        lora = common.choose_trainable(model, config.train, config.lora)
        model.to(device)

        train_ids, val_ids, test_ids = (encode_entries(split, tokenizer) for split in (train, val, test))
        limit = f"the context of {base}" if config.data.max_length is None else f"data.max_length = {max_length}"
        check_responses_fit({"train": train_ids, "validation": val_ids, "test": test_ids}, max_length, limit)
        run_config = common.fine_tuned_config(model.config, config, base, device)
        mask_prompt = config.data.mask_prompt
        out.mkdir(parents=True, exist_ok=True)
        epoch_states = common.EpochStates(out, made, resumed)
        train_instructions(
            model,
            train_ids,
            val_ids,
            run_config.train,
            pad_id=pad_id,
            max_length=max_length,
            mask_prompt=mask_prompt,
            device=device,
            out=out,
            drop_last=config.train.drop_last,
            epoch_states=epoch_states,
        )
        common.merge_and_save(out, Run(out, run_config, model, tokenizer), lora)
        batch_size = config.train.batch_size
        record = {"test_loss": mean_loss(model, test_ids, batch_size, pad_id, max_length, mask_prompt, device)}
        append_metrics(out, record)
        print(f"test loss {record['test_loss']:.3f} on {len(test)} entries; saved the model to {out}")

        answered = test[: config.test.limit] if config.test.limit is not None else test
        responses = generate_responses(model.eval(), tokenizer, answered, config.test.max_new_tokens)
        common.write_json(out / RESPONSES, responses)
        epoch_states.finish()
    print(f"wrote {len(answered)} test responses to {out / RESPONSES}")
    return record
