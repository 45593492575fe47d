"""gptzoo's book modes against the book's own package (llms-from-scratch, the `reference`
extra): chapter 6's read, balance, split, batches and pooling; chapter 7's split; importing
the book's saved GPTModel."""

import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gptzoo.core import GPT
from gptzoo.recipes.cli import main
from gptzoo.recipes.finetuning.classifier import (
    balance_like_the_book,
    batch_loss,
    classifier_config,
    classifier_from,
    collate,
    encode_examples,
    read_examples,
    split_like_the_book,
)
from gptzoo.recipes.finetuning.instruct import read_entries, split_in_file_order
from gptzoo.recipes.interop.book import from_book_state, import_book
from gptzoo.recipes.runs.folder import load_run
from gptzoo.registry import make_registry

REGISTRY = make_registry(entry_points=False)
SMALL = {
    "vocab_size": 50257,
    "context_length": 64,
    "emb_dim": 48,
    "n_heads": 4,
    "n_layers": 2,
    "drop_rate": 0.0,
    "qkv_bias": True,
}


def book(module: str):
    return pytest.importorskip(
        f"llms_from_scratch.{module}",
        reason="the book's package (pip install llms-from-scratch, the reference extra) is absent",
    )


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
    from gptzoo.recipes.interop.book import model_config_data

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
    assert [(e.label, e.text) for e in examples] == list(zip(df["Label"], df["Text"], strict=True))
    assert len(read_examples(path)) == 5574  # one example per line


def test_book_balance_and_split_are_the_books(shared_data):
    pd = pytest.importorskip("pandas")
    ch06 = book("ch06")
    path = shared_data("SMSSpamCollection")
    df = pd.read_csv(path, sep="\t", header=None, names=["Label", "Text"])
    books = ch06.random_split(ch06.create_balanced_dataset(df), 0.7, 0.1)
    ours = split_like_the_book(
        balance_like_the_book(read_examples(path, quoting="csv"), seed=123), (0.7, 0.1, 0.2), seed=123
    )
    for theirs, mine in zip(books, ours, strict=True):
        assert [(e.label, e.text) for e in mine] == list(zip(theirs["Label"], theirs["Text"], strict=True))
    assert [len(part) for part in ours] == [1045, 149, 300]


def test_book_batches_and_last_position_pooling_are_the_books(tmp_path, shared_data):
    pd = pytest.importorskip("pandas")
    import tiktoken

    ch06 = book("ch06")
    examples = read_examples(shared_data("SMSSpamCollection"), quoting="csv")[:24]
    labels = ["ham", "spam"]
    pd.DataFrame({"Text": [e.text for e in examples], "Label": [labels.index(e.label) for e in examples]}).to_csv(
        tmp_path / "train.csv", index=None
    )
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
    assert (
        main(
            [
                "import-book",
                str(tmp_path / "model.pth"),
                "--out",
                str(tmp_path / "run"),
                "--n-heads",
                "4",
                "--attention",
                attention,
            ]
        )
        == 0
    )
    assert "2 layers, d_model 48, 4 heads, context 64" in capsys.readouterr().out
    run = load_run(tmp_path / "run")
    ids = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(run.model.eval()(ids), net(ids), rtol=1e-5, atol=1e-5)
    assert run.config.model.dropout == 0.1 and run.tokenizer.encode("Every effort moves you") == [6109, 3626, 6100, 345]


def test_import_book_reads_model_and_optimizer_pth_and_defaults_heads_to_gpt2s(tmp_path):
    config = SMALL | {
        "emb_dim": 768,
        "n_heads": 12,
        "n_layers": 1,
        "context_length": 8,
        "vocab_size": 50257,
        "qkv_bias": False,
    }
    net = book_model(config)
    optimizer = torch.optim.AdamW(net.parameters())
    torch.save(
        {"model_state_dict": net.state_dict(), "optimizer_state_dict": optimizer.state_dict()},
        tmp_path / "model_and_optimizer.pth",
    )
    imported = import_book(tmp_path / "model_and_optimizer.pth", tmp_path / "run")
    assert imported.model.n_heads == 12 and imported.model.qkv_bias is False
    state = load_run(tmp_path / "run").model.state_dict()
    assert torch.equal(state["head.weight"], net.out_head.weight)
    assert torch.equal(state["blocks.0.attention.qkv.weight"][768:1536], net.trf_blocks[0].att.W_key.weight)


class RunsCode:
    """Unpickled, it would call os.system (torch's weights-only loader refuses it)."""

    def __reduce__(self):
        return (os.system, ("echo this must never run",))


@pytest.mark.parametrize(
    "content, message",
    [
        ("missing", "model.pth: no such file"),
        (
            "garbage",
            "model.pth: not a torch checkpoint torch.load(weights_only=True) can read (RuntimeError); expected the book's model.pth, saved with torch.save(model.state_dict(), 'model.pth')",
        ),
        (
            "pickled-object",
            "model.pth: holds Python objects other than tensors; gptzoo does not unpickle those (it may run code); expected the book's model.pth",
        ),
        (
            "code",
            "model.pth: holds Python objects other than tensors; gptzoo does not unpickle those (it may run code); expected the book's model.pth, saved with torch.save(model.state_dict(), 'model.pth') (this one holds posix.system",
        ),
        ("not-gptmodel", "model.pth: not a state dict of the book's GPTModel (no 'tok_emb.weight')"),
        ("odd-width", "emb_dim 48 is none of GPT-2's sizes, so the number of heads is unknown; give --n-heads"),
    ],
)
def test_import_book_errors_are_one_line_with_exit_code_2(tmp_path, capsys, content, message):
    path = tmp_path / "model.pth"
    if content == "garbage":
        path.write_bytes(b"not a checkpoint")
    elif content == "pickled-object":
        torch.save(
            {"tok_emb.weight": torch.zeros(2), "note": Path("anything")}, path
        )  # unpickling it would import and call code
    elif content == "code":  # torch 2.13 words this refusal differently from a class it does not know
        torch.save({"tok_emb.weight": torch.zeros(2), "payload": RunsCode()}, path)
    elif content == "not-gptmodel":
        torch.save({"weight": torch.zeros(2)}, path)
    elif content == "odd-width":
        torch.save(book_model().state_dict(), path)
    assert main(["import-book", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert (
        message in err
        and "Traceback" not in err
        and "weights_only=False" not in err
        and len(err.strip().splitlines()) == 1
    )
    assert not (tmp_path / "run").exists()


# ---- chapter 4's initial weights ----------------------------------------------------------


def torch_default_twin(config: dict = SMALL, seed: int = 123) -> GPT:
    from gptzoo.recipes.interop.book import model_config_data

    torch.manual_seed(seed)
    return GPT(REGISTRY.model_config(model_config_data(config) | {"init": "torch_default"})).eval()


def test_torch_default_init_draws_the_books_initial_weights():
    ours = torch_default_twin().state_dict()
    theirs = from_book_state(book_model().state_dict(), SMALL["n_layers"])
    assert set(ours) == set(theirs)
    for name, tensor in ours.items():
        reference = theirs[name]
        assert tensor.shape == reference.shape, name
        if name.endswith(("norm.weight", "norm.bias")):
            assert torch.equal(tensor, reference), name  # ones and zeros
        elif tensor.numel() >= 2000:  # embeddings N(0, 1); linears uniform(±1/sqrt(fan_in))
            assert tensor.std().item() == pytest.approx(reference.std().item(), rel=0.05), name
            assert tensor.abs().max().item() == pytest.approx(
                reference.abs().max().item(), rel=0.15 if "embedding" in name or "table" in name else 0.01
            ), name
        else:  # a linear's bias: uniform(±1/sqrt(fan_in)), fan_in = its weight's columns
            fan_in = ours[name.removesuffix("bias") + "weight"].shape[1]
            assert tensor.abs().max().item() <= fan_in**-0.5 and reference.abs().max().item() <= fan_in**-0.5, name


def test_torch_default_draws_exactly_the_books_weights_for_gpt_config_124m_shapes():
    """Without q/k/v biases (GPT_CONFIG_124M has none) the random draws come in the book's order:
    the same seed gives the very same tensors."""
    config = SMALL | {"qkv_bias": False, "vocab_size": 500}
    ours = torch_default_twin(config).state_dict()
    theirs = from_book_state(book_model(config).state_dict(), config["n_layers"])
    assert set(ours) == set(theirs) and all(torch.equal(ours[name], theirs[name]) for name in ours)


def test_torch_default_starts_at_the_books_untrained_loss():
    ids = torch.randint(0, 50257, (4, 65), generator=torch.Generator().manual_seed(0))
    ours, theirs = [], []
    with torch.no_grad():
        for seed in (1, 2, 3):
            ours.append(
                F.cross_entropy(torch_default_twin(seed=seed)(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten()).item()
            )
            theirs.append(
                F.cross_entropy(book_model(seed=seed)(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten()).item()
            )
    assert sum(ours) / 3 == pytest.approx(sum(theirs) / 3, rel=0.02)
    assert (
        sum(ours) / 3 > math.log(50257) + 0.1
    )  # about the book's 10.99, above uniform (10.82): N(0, 1) embeddings give confident random logits


# ---- chapter 3.3 and 4.4: the teaching variants -------------------------------------------


def test_no_weights_attention_is_the_books_simplified_self_attention_made_causal(registry):
    from gptzoo.core import AttentionContext

    # The book's section 3.3.1 inputs: "Your journey starts with one step", 3-d embeddings.
    inputs = torch.tensor(
        [
            [0.43, 0.15, 0.89],
            [0.55, 0.87, 0.66],
            [0.57, 0.85, 0.64],
            [0.22, 0.58, 0.33],
            [0.77, 0.25, 0.10],
            [0.05, 0.80, 0.55],
        ]
    )
    attn_scores = inputs @ inputs.T  # the book's code, then chapter 3.5's causal mask
    attn_scores = attn_scores.masked_fill(torch.triu(torch.ones(6, 6, dtype=torch.bool), diagonal=1), -torch.inf)
    expected = torch.softmax(attn_scores, dim=-1) @ inputs
    model = GPT(
        registry.model_config(
            {
                "vocab_size": 8,
                "context_length": 8,
                "d_model": 3,
                "n_layers": 1,
                "n_heads": 1,
                "positional": "none",
                "attention": "no_weights",
                "tokenizer": "byte",
            }
        )
    )
    attention = model.blocks[0].attention
    positions = torch.arange(6)[None]
    torch.testing.assert_close(
        attention(inputs[None], AttentionContext(model.positional, positions, positions))[0], expected
    )
    assert sum(p.numel() for p in attention.parameters()) == 0
    # The last token sees every token: the book's own (non-causal) context vector for "step".
    book_all = torch.softmax(inputs @ inputs.T, dim=-1) @ inputs
    torch.testing.assert_close(expected[-1], book_all[-1])


@pytest.mark.parametrize("seed", [0, 1])
def test_without_shortcuts_the_early_layers_gradients_vanish(registry, seed):
    """The book's section 4.4: with shortcut connections the gradient reaches every layer about
    equally; without them (and without norms, as the book's network) it shrinks toward the input."""
    from gptzoo.recipes.cli.gradients import layer_gradients

    ratios = {}
    for block in ("pre_norm", "no_shortcut"):
        torch.manual_seed(seed)
        spec = {
            "vocab_size": 257,
            "context_length": 16,
            "d_model": 32,
            "n_layers": 6,
            "n_heads": 2,
            "tokenizer": "byte",
            "norm": "none",
            "init": "torch_default",
            "block": block,
        }
        means = layer_gradients(GPT(registry.model_config(spec)), list(b"shortcut connections")[:17])
        ratios[block] = means[0] / means[-1]
    assert 0.5 < ratios["pre_norm"] < 2
    assert ratios["no_shortcut"] < 1e-4
