"""gptzoo's book modes against the book's own package (llms-from-scratch, the `reference`
extra): chapter 6's read, balance, split, batches and pooling; chapter 7's split; importing
the book's saved GPTModel."""

import json

import pytest
import torch
from torch import nn

from gptzoo.core import GPT
from gptzoo.recipes.book import from_book_state, import_book
from gptzoo.recipes.classify import (
    balance_like_the_book,
    batch_loss,
    classifier_config,
    classifier_from,
    collate,
    encode_examples,
    read_examples,
    split_like_the_book,
)
from gptzoo.recipes.cli import main
from gptzoo.recipes.instruct import read_entries, split_in_file_order
from gptzoo.recipes.run import load_run
from gptzoo.registry import make_registry

REGISTRY = make_registry(entry_points=False)
SMALL = {"vocab_size": 50257, "context_length": 64, "emb_dim": 48, "n_heads": 4, "n_layers": 2, "drop_rate": 0.0, "qkv_bias": True}


def book(module: str):
    return pytest.importorskip(f"llms_from_scratch.{module}", reason="the book's package (pip install llms-from-scratch, the reference extra) is absent")


def book_model(config: dict = SMALL, seed: int = 123) -> nn.Module:
    torch.manual_seed(seed)
    return book("ch04").GPTModel(config).eval()


def randomised(model: nn.Module) -> nn.Module:
    """The book's LayerNorms start at scale 1, shift 0; give every tensor other values so a
    swapped scale and shift, or a wrong q/k/v order, cannot go unseen."""
    torch.manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def gptzoo_twin(book_net: nn.Module, config: dict = SMALL, **changes) -> GPT:
    from gptzoo.recipes.book import model_config_data

    model = GPT(REGISTRY.model_config(model_config_data(config) | changes))
    model.load_state_dict(from_book_state(book_net.state_dict(), config["n_layers"]))
    return model.eval()


# ---- chapter 6 ----------------------------------------------------------------------------


def test_csv_quoting_reads_the_sms_collection_as_the_books_pandas_read(shared_data):
    pd = pytest.importorskip("pandas")
    path = shared_data("SMSSpamCollection")
    df = pd.read_csv(path, sep="\t", header=None, names=["Label", "Text"])  # the book's read
    examples = read_examples(path, quoting="csv")
    assert len(examples) == len(df) == 5572
    assert [(e.label, e.text) for e in examples] == list(zip(df["Label"], df["Text"]))
    assert len(read_examples(path)) == 5574  # one example per line


def test_book_balance_and_split_are_the_books(shared_data):
    pd = pytest.importorskip("pandas")
    ch06 = book("ch06")
    path = shared_data("SMSSpamCollection")
    df = pd.read_csv(path, sep="\t", header=None, names=["Label", "Text"])
    books = ch06.random_split(ch06.create_balanced_dataset(df), 0.7, 0.1)
    ours = split_like_the_book(balance_like_the_book(read_examples(path, quoting="csv"), seed=123), (0.7, 0.1, 0.2), seed=123)
    for theirs, mine in zip(books, ours):
        assert [(e.label, e.text) for e in mine] == list(zip(theirs["Label"], theirs["Text"]))
    assert [len(part) for part in ours] == [1045, 149, 300]


def test_book_batches_and_last_position_pooling_are_the_books(tmp_path, shared_data):
    pd = pytest.importorskip("pandas")
    import tiktoken

    ch06 = book("ch06")
    examples = read_examples(shared_data("SMSSpamCollection"), quoting="csv")[:24]
    labels = ["ham", "spam"]
    pd.DataFrame({"Text": [e.text for e in examples], "Label": [labels.index(e.label) for e in examples]}).to_csv(tmp_path / "train.csv", index=None)
    dataset = ch06.SpamDataset(tmp_path / "train.csv", tokenizer=tiktoken.get_encoding("gpt2"), max_length=None)
    book_inputs, book_labels = next(iter(torch.utils.data.DataLoader(dataset, batch_size=8, shuffle=False)))

    base = gptzoo_twin(randomised(book_model()))
    tokenizer = base.config.tokenizer.build()
    encoded = encode_examples(examples, tokenizer, labels, max_length=64)
    pad_to = max(len(ids) for ids, _ in encoded)  # the book pads to the longest training example
    ids, _, ours_labels = collate(encoded[:8], tokenizer.eot_id, pad_to)
    assert torch.equal(ids, book_inputs) and torch.equal(ours_labels, book_labels)

    # The book's chapter 6 model: out_head replaced by Linear(emb_dim, 2), the loss read at the last position.
    book_net = randomised(book_model())
    twin = gptzoo_twin(book_net)
    torch.manual_seed(0)
    book_net.out_head = nn.Linear(SMALL["emb_dim"], 2)
    classifier = classifier_from(twin, classifier_config(base.config, 2, REGISTRY, pooling="last_position"))
    classifier.head.out.load_state_dict(book_net.out_head.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(classifier(ids), book_net(book_inputs)[:, -1, :], rtol=1e-5, atol=1e-5)
        book_loss = ch06.calc_loss_batch(book_inputs, book_labels, book_net, "cpu")
        ours_loss, _ = batch_loss(classifier, encoded[:8], tokenizer.eot_id, torch.device("cpu"), pad_to)
    torch.testing.assert_close(ours_loss, book_loss, rtol=1e-5, atol=1e-5)


# ---- chapter 7 ----------------------------------------------------------------------------


def test_book_split_of_the_instruction_data_is_the_books(shared_data):
    data = read_entries(shared_data("instruction-data.json"))
    # The book's chapter 7, section 7.2:
    train_portion = int(len(data) * 0.85)
    test_portion = int(len(data) * 0.1)
    train_data = data[:train_portion]
    test_data = data[train_portion : train_portion + test_portion]
    val_data = data[train_portion + test_portion :]
    assert split_in_file_order(data, (0.85, 0.05, 0.1)) == (train_data, val_data, test_data)
    assert (len(train_data), len(val_data), len(test_data)) == (935, 55, 110)


# ---- the book's saved model ---------------------------------------------------------------


@pytest.mark.parametrize("attention", ["sdpa", "fused", "per_head"])
def test_import_book_gives_the_books_logits(tmp_path, capsys, attention):
    net = randomised(book_model())
    torch.save(net.state_dict(), tmp_path / "model.pth")
    assert main(["import-book", str(tmp_path / "model.pth"), "--out", str(tmp_path / "run"), "--n-heads", "4", "--attention", attention]) == 0
    assert "2 layers, d_model 48, 4 heads, context 64" in capsys.readouterr().out
    run = load_run(tmp_path / "run")
    ids = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(run.model.eval()(ids), net(ids), rtol=1e-5, atol=1e-5)
    assert run.config.model.dropout == 0.1 and run.tokenizer.encode("Every effort moves you") == [6109, 3626, 6100, 345]


def test_import_book_reads_model_and_optimizer_pth_and_defaults_heads_to_gpt2s(tmp_path):
    config = SMALL | {"emb_dim": 768, "n_heads": 12, "n_layers": 1, "context_length": 8, "vocab_size": 50257, "qkv_bias": False}
    net = book_model(config)
    optimizer = torch.optim.AdamW(net.parameters())
    torch.save({"model_state_dict": net.state_dict(), "optimizer_state_dict": optimizer.state_dict()}, tmp_path / "model_and_optimizer.pth")
    imported = import_book(tmp_path / "model_and_optimizer.pth", tmp_path / "run")
    assert imported.model.n_heads == 12 and imported.model.qkv_bias is False
    state = load_run(tmp_path / "run").model.state_dict()
    assert torch.equal(state["head.weight"], net.out_head.weight)
    assert torch.equal(state["blocks.0.attention.qkv.weight"][768:1536], net.trf_blocks[0].att.W_key.weight)


@pytest.mark.parametrize(
    "content, message",
    [
        ("missing", "model.pth: no such file"),
        ("garbage", "model.pth: cannot read it with torch.load(weights_only=True)"),
        ("not-gptmodel", "model.pth: not a state dict of the book's GPTModel (no 'tok_emb.weight')"),
        ("odd-width", "emb_dim 48 is none of GPT-2's sizes, so the number of heads is unknown; give --n-heads"),
    ],
)
def test_import_book_errors_are_one_line_with_exit_code_2(tmp_path, capsys, content, message):
    path = tmp_path / "model.pth"
    if content == "garbage":
        path.write_bytes(b"not a checkpoint")
    elif content == "not-gptmodel":
        torch.save({"weight": torch.zeros(2)}, path)
    elif content == "odd-width":
        torch.save(book_model().state_dict(), path)
    assert main(["import-book", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
