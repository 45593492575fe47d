"""Classification fine-tuning: reading and balancing labelled data, the seeded split, padded
batches, the new head, freezing, learning a separable task, and the two commands."""

import json
import random
from collections import Counter

import pytest
import torch

from gptzoo.core import GPT
from gptzoo.recipes.cli import main
from gptzoo.recipes.config.schema import RunConfig, TrainConfig
from gptzoo.recipes.finetuning.classifier import (
    Example,
    balance,
    balance_like_the_book,
    classifier_config,
    classifier_from,
    collate,
    encode_examples,
    loss_and_accuracy,
    read_examples,
    split_like_the_book,
    train_classifier,
)
from gptzoo.recipes.finetuning.common import set_trainable, split_data
from gptzoo.recipes.runs.folder import load_run, save_run
from gptzoo.recipes.runs.metrics import read_metrics
from gptzoo.registry import make_registry

REGISTRY = make_registry(entry_points=False)
EOT = 256  # the byte tokenizer's end-of-text id


def tiny_base(**changes) -> GPT:
    spec = {
        "vocab_size": 257,
        "context_length": 32,
        "d_model": 32,
        "n_layers": 2,
        "n_heads": 2,
        "tokenizer": "byte",
        "tied_head": True,
    } | changes
    torch.manual_seed(0)
    return GPT(REGISTRY.model_config(spec))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base")
    model = tiny_base()
    save_run(folder, RunConfig(model=model.config), model, model.config.tokenizer.build())
    return folder


# ---- data -------------------------------------------------------------------------------


def test_reads_tab_separated_and_csv_files(tmp_path):
    sms = tmp_path / "sms.tsv"
    sms.write_text("ham\tOk lar...\n\nspam\tFree entry\twith a tab\n", encoding="utf-8")
    assert read_examples(sms) == [Example("Ok lar...", "ham"), Example("Free entry\twith a tab", "spam")]

    table = tmp_path / "reviews.csv"
    table.write_text('id,review,sentiment\n1,"Great, really",pos\n2,Dull,neg\n', encoding="utf-8")
    assert read_examples(table, text_column="review", label_column="sentiment") == [
        Example("Great, really", "pos"),
        Example("Dull", "neg"),
    ]


def test_balance_undersamples_every_class_to_the_smallest():
    examples = [Example(f"a{i}", "a") for i in range(5)] + [Example("b0", "b"), Example("c0", "c"), Example("c1", "c")]
    balanced = balance(examples, seed=1)
    assert sorted(e.label for e in balanced) == ["a", "b", "c"]
    assert balanced == [e for e in examples if e in balanced]  # file order kept
    assert balance(examples, seed=1) == balanced  # seeded


def test_split_sizes_of_the_balanced_sms_collection_match_the_book(shared_data):
    examples = read_examples(shared_data("SMSSpamCollection"))
    assert (len(examples), sum(e.label == "spam" for e in examples)) == (5574, 747)  # 4,827 ham
    balanced = balance(examples, seed=123)
    assert len(balanced) == 2 * 747 and sum(e.label == "spam" for e in balanced) == 747
    train, val, test = split_data(balanced, (0.7, 0.1, 0.2), seed=123)
    # 1494 · 0.7 = 1045.8 -> 1045; 1494 · 0.1 = 149.4 -> 149; the rest: 300 (the book's sizes)
    assert (len(train), len(val), len(test)) == (1045, 149, 300)
    assert Counter(train + val + test) == Counter(balanced)  # a partition (the file holds duplicate messages)
    assert split_data(balanced, (0.7, 0.1, 0.2), seed=123)[0] == train
    assert split_data(balanced, (0.7, 0.1, 0.2), seed=124)[0] != train


def test_batches_are_right_padded_with_end_of_text_and_truncated():
    tokenizer = tiny_base().config.tokenizer.build()
    encoded = encode_examples(
        [Example("abcdef", "spam"), Example("hi", "ham")], tokenizer, ["ham", "spam"], max_length=4
    )
    assert encoded == [([97, 98, 99, 100], 1), ([104, 105], 0)]
    ids, pad_mask, labels = collate(encoded, pad_id=EOT)
    assert ids.tolist() == [[97, 98, 99, 100], [104, 105, EOT, EOT]]
    assert pad_mask.tolist() == [[True, True, True, True], [True, True, False, False]]
    assert labels.tolist() == [1, 0]


# ---- the model ----------------------------------------------------------------------------


def test_the_classifier_keeps_every_base_weight_but_the_head():
    base = tiny_base()
    config = classifier_config(base.config, 3, REGISTRY)
    assert config.head.name == "classifier" and config.head.params.n_classes == 3 and not config.tied_head
    model = classifier_from(base, config)
    base_state = base.state_dict()
    for name, tensor in model.state_dict().items():
        if name.startswith("head."):
            assert name in ("head.out.weight", "head.out.bias")
        else:
            assert torch.equal(tensor, base_state[name]), name
    assert model(torch.tensor([[1, 2, 3]])).shape == (1, 3)


@pytest.mark.parametrize(
    "train, trained_blocks", [("head", []), ("last-block", [1]), ("last-n", [0, 1]), ("all", [0, 1])]
)
def test_frozen_tensors_stay_bit_identical(train, trained_blocks):
    base = tiny_base(n_layers=3)
    model = classifier_from(base, classifier_config(base.config, 2, REGISTRY))
    set_trainable(model, train, last_n=2)
    before = {name: t.clone() for name, t in model.state_dict().items()}
    data = [([1, 2, 3, 4], 0), ([5, 6], 1), ([7, 8, 9], 1), ([10], 0)]
    train_classifier(
        model, data, data, TrainConfig(epochs=1, batch_size=2, lr=1e-2), pad_id=EOT, device=torch.device("cpu")
    )

    # the last block is blocks.2; last-n with 2 trains blocks.1 and blocks.2
    trained = {"head."} | {f"blocks.{2 - i}." for i in range(len(trained_blocks))}
    if train != "head":
        trained.add("final_norm.")
    if train == "all":
        trained = {""}
    for name, tensor in model.state_dict().items():
        if any(name.startswith(prefix) for prefix in trained):
            assert not torch.equal(tensor, before[name]), f"{name} should have trained"
        else:
            assert torch.equal(tensor, before[name]), f"{name} should be frozen"


def test_accuracy_rises_above_chance_on_a_separable_task():
    # The class is the first character; the last token, which the head pools, is noise,
    # so the model must learn to carry the first token forward.
    rng = random.Random(0)

    def text(first: str) -> str:
        return first + "".join(rng.choice("mnop") for _ in range(rng.randint(2, 6)))

    examples = [Example(text("a"), "low") for _ in range(24)] + [Example(text("Z"), "high") for _ in range(24)]
    train, val, _ = split_data(examples, (0.75, 0.25, 0.0), seed=0)
    tokenizer = tiny_base().config.tokenizer.build()
    train, val = (encode_examples(split, tokenizer, ["high", "low"], 32) for split in (train, val))
    model = classifier_from(tiny_base(), classifier_config(tiny_base().config, 2, REGISTRY))
    set_trainable(model, "all")
    loss_before, accuracy_before = loss_and_accuracy(model, val, 8, EOT, torch.device("cpu"))
    # lr 3e-3 reaches full validation accuracy within two epochs from every seed tried (0-4);
    # 1e-2 overshoots from some initialisations and stalls near chance.
    records = train_classifier(
        model, train, val, TrainConfig(epochs=3, batch_size=8, lr=3e-3), pad_id=EOT, device=torch.device("cpu")
    )
    assert [r["step"] for r in records] == [5, 10, 15]  # 36 training examples in batches of 8
    loss, accuracy = loss_and_accuracy(model, val, 8, EOT, torch.device("cpu"))
    assert accuracy_before <= 0.6 and accuracy >= 0.9, records
    assert loss < loss_before


# ---- the commands -------------------------------------------------------------------------


def test_finetune_classifier_and_classify_end_to_end(base_dir, shared_data, tmp_path, capsys):
    data = tmp_path / "sms.tsv"
    data.write_text(
        "".join(shared_data("SMSSpamCollection").read_text(encoding="utf-8").splitlines(keepends=True)[:40]),
        encoding="utf-8",
    )
    out = tmp_path / "spam"
    code = main(
        [
            "finetune-classifier",
            str(base_dir),
            "--data",
            str(data),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--eval-batches",
            "1",
            "--max-length",
            "24",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "train 28, validation 4, test 8" in printed  # 40 · 0.7, 40 · 0.1, the rest

    config = json.loads((out / "config.json").read_text())
    assert (
        config["model"]["head"] == {"name": "classifier", "n_classes": 2, "pooling": "last"}
        and config["model"]["tied_head"] is False
    )
    assert json.loads((out / "labels.json").read_text()) == {
        "labels": ["ham", "spam"],
        "max_length": 24,
        "pad_to": None,
    }
    epoch, final = read_metrics(out)
    assert (
        set(epoch) == {"epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc"} and epoch["step"] == 4
    )  # ceil(28 / 8)
    assert set(final) == {"test_loss", "test_acc"} and final["test_acc"] in {i / 8 for i in range(9)}

    # The frozen first block is the base's, bit for bit.
    tuned, base = load_run(out).model.state_dict(), load_run(base_dir).model.state_dict()
    assert all(
        torch.equal(tuned[n], base[n]) for n in base if n.startswith(("blocks.0.", "token_embedding", "positional"))
    )

    assert main(["classify", str(out), "--text", "Free entry! Text WIN to 80082"]) == 0
    label, probability = capsys.readouterr().out.split()
    assert label in ("ham", "spam") and 0.5 <= float(probability) <= 1.0

    # Everything the command wrote is committed, the test record included; a changed label is caught.
    committed = json.loads((out / "manifest.json").read_text())["files"]
    assert {"config.json", "model.safetensors", "labels.json", "metrics.jsonl"} <= set(committed)
    assert committed["metrics.jsonl"]["size"] == (out / "metrics.jsonl").stat().st_size
    (out / "labels.json").write_text((out / "labels.json").read_text().replace('"ham"', '"hmm"'))
    assert main(["classify", str(out), "--text", "Free entry!"]) == 2
    assert "labels.json: its sha256 differs from the one in manifest.json" in capsys.readouterr().err


def test_the_books_settings_by_name_end_to_end(base_dir, tmp_path, capsys):
    # 10 ham, 10 spam and a stray quote that joins lines 2-4 under CSV quoting: 18 examples, 9 + 9.
    lines = (
        ['ham\t"Hi there', "ham\tjoined", 'ham\tup to here"']
        + [f"ham\tham number {i}" for i in range(8)]
        + [f"spam\tWIN {'x' * i}" for i in range(10)]
    )
    data = tmp_path / "sms.tsv"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "spam"
    argv = [
        "finetune-classifier",
        str(base_dir),
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "5",
        "--eval-batches",
        "1",
        "--quoting",
        "csv",
        "--balance",
        "--split-order",
        "book",
        "--pooling",
        "last_position",
        "--pad-to",
        "train",
        "--drop-last",
        "--betas",
        "0.9,0.999",
        "--grad-clip",
        "0",
        "--weight-decay-scope",
        "all",
        "--lora-rank",
        "2",
        "--lora-alpha",
        "2",
        "--lora-convention",
        "book",
    ]
    assert main(argv) == 0
    assert (
        "18 examples, 2 classes (ham, spam): train 12, validation 1, test 5" in capsys.readouterr().out
    )  # 18 · 0.7, 18 · 0.1
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["head"]["pooling"] == "last_position"
    assert {k: config["train"][k] for k in ("betas", "grad_clip", "weight_decay_scope")} == {
        "betas": [0.9, 0.999],
        "grad_clip": None,
        "weight_decay_scope": "all",
    }
    assert json.loads((out / "lora.json").read_text())["convention"] == "book"
    saved = json.loads((out / "labels.json").read_text())
    train = split_like_the_book(balance_like_the_book(read_examples(data, quoting="csv"), 123), (0.7, 0.1, 0.2), 123)[
        0
    ]  # both checked against the book in test_book.py
    assert (
        saved["pad_to"] == saved["max_length"] == min(32, max(len(e.text.encode("utf-8")) for e in train))
    )  # the base's context is 32
    assert read_metrics(out)[0]["step"] == 2  # 12 examples in batches of 5: the last 2 dropped
    assert main(["classify", str(out), "--text", "WIN xx"]) == 0


@pytest.mark.parametrize("preset, trainable", [("book/ch06-spam", "last-block"), ("book/appendix-e-lora", "none")])
def test_the_books_configs_by_name_end_to_end(base_dir, tmp_path, capsys, preset, trainable):
    """configs/book/ch06-spam.toml and appendix-e-lora.toml (which extends it), shortened with --set."""
    lines = ['ham\t"Hi there', "ham\tjoined", 'ham\tup to here"'] + [f"ham\tham number {i}" for i in range(8)]
    data = tmp_path / "sms.tsv"
    data.write_text("\n".join(lines + [f"spam\tWIN {'x' * i}" for i in range(10)]) + "\n", encoding="utf-8")
    out = tmp_path / "spam"
    shorter = ["--set", "train.epochs=1", "--set", "train.batch_size=5", "--set", "train.eval_batches=1"]
    argv = ["finetune-classifier", base_dir, "--config", preset, "--data", data, "--out", out, *shorter]
    assert main([str(a) for a in argv]) == 0
    # the stray quote joins three lines under the book's CSV quoting: 18 examples, 9 + 9 balanced
    assert "18 examples, 2 classes (ham, spam): train 12, validation 1, test 5" in capsys.readouterr().out
    saved = json.loads((out / "config.json").read_text())["finetune"]["config"]
    assert saved["pooling"] == "last_position" and saved["train"]["trainable"] == trainable
    assert read_metrics(out)[0]["step"] == 2  # 12 examples in batches of 5: the last 2 dropped
    assert (out / "lora.json").exists() == (trainable == "none")


def test_classify_refuses_a_language_model(base_dir, capsys):
    assert main(["classify", str(base_dir), "--text", "hello"]) == 2
    assert "not a classifier run" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.tsv", "", "empty.tsv: the file is empty"),
        ("one.tsv", "ham\thello\nham\tthere\n", "one.tsv: every example has the label 'ham'"),
        ("bad.tsv", "ham\thello\nspam without a tab\n", "bad.tsv, line 2: expected 'label<TAB>text'"),
        (
            "cols.csv",
            "message,label\nhello,ham\n",
            "cols.csv, line 1: no column 'text' in the header (columns: message, label)",
        ),
        ("blank.csv", "text,label\nhello,ham\n,spam\n", "blank.csv, line 3: empty 'text' or 'label'"),
    ],
)
def test_bad_data_is_a_clear_error_with_exit_code_2(base_dir, tmp_path, capsys, name, content, message):
    data = tmp_path / name
    data.write_text(content, encoding="utf-8")
    assert main(["finetune-classifier", str(base_dir), "--data", str(data), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "option, message",
    [
        (["--betas", "0.9"], "--betas '0.9': give two numbers in [0, 1), e.g. 0.9,0.999"),
        (["--betas", "0.9,1.5"], "--betas '0.9,1.5': give two numbers in [0, 1)"),
        (["--grad-clip", "-1"], "--grad-clip -1.0: give 0 or a positive number"),
        (["--lr", "0"], "--lr 0.0: give a positive learning rate"),
        (["--lr", "nan"], "--lr nan: give a positive learning rate"),
        (["--weight-decay", "-0.1"], "--weight-decay -0.1: give 0 or a positive number"),
        (["--train", "none"], "--train none trains nothing without --lora-rank"),
    ],
)
def test_bad_optimizer_options_are_clear_errors(base_dir, tmp_path, capsys, option, message):
    data = tmp_path / "d.tsv"
    data.write_text("ham\ta\nspam\tb\n" * 10, encoding="utf-8")
    assert (
        main(["finetune-classifier", str(base_dir), "--data", str(data), "--out", str(tmp_path / "out"), *option]) == 2
    )
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_an_existing_run_is_never_overwritten(base_dir, tmp_path, capsys):
    data = tmp_path / "d.tsv"
    data.write_text("ham\ta\nspam\tb\n" * 10, encoding="utf-8")
    before = (base_dir / "model.safetensors").read_bytes()
    assert main(["finetune-classifier", str(base_dir), "--data", str(data), "--out", str(base_dir)]) == 2
    assert "is the base run itself" in capsys.readouterr().err
    assert (base_dir / "model.safetensors").read_bytes() == before

    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    assert main(["finetune-classifier", str(base_dir), "--data", str(data), "--out", str(tmp_path / "used")]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "used").iterdir()] == ["notes.txt"]
