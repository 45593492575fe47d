"""Classification fine-tuning (the book's chapter 6): a GPT's LM head replaced by a classifier.

Data is a labelled text file, either the UCI SMS Spam Collection format (``label<TAB>text``
per line) or a CSV with a header naming a text and a label column. Labels become class ids
in sorted order (ham 0, spam 1). Batches are padded on the right with the end-of-text id to
their longest example, and the pad mask lets the head pool the last real token.
"""

from __future__ import annotations

import csv
import io
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gptzoo.core import GPT, GptzooError, ModelConfig, Tokenizer
from gptzoo.recipes.config.schema import TrainConfig
from gptzoo.recipes.data.tokens import leading_ids
from gptzoo.recipes.finetuning.common import EpochStates, batches, cut, read_data_file
from gptzoo.recipes.finetuning.loop import epoch_records
from gptzoo.registry import Registry

LABELS = "labels.json"


@dataclass(frozen=True)
class Example:
    text: str
    label: str


# ---- reading ------------------------------------------------------------------------------


QUOTING = ("none", "csv")  # how a label<TAB>text file treats double quotes


def read_examples(
    path: str | Path, text_column: str = "text", label_column: str = "label", quoting: str = "none"
) -> list[Example]:
    """Labelled texts from a ``.csv`` file (with a header) or a ``label<TAB>text`` file.

    In a ``label<TAB>text`` file every line is one example (``quoting="none"``); with
    ``quoting="csv"`` a text that starts with a double quote runs to the closing quote, across
    lines, as ``pandas.read_csv(path, sep="\\t", header=None)`` reads it in the book (the SMS
    Spam Collection then has 5,572 examples instead of 5,574: a stray quote joins three lines).
    Raises GptzooError naming the file and line of the first problem, and when the data has
    fewer than two classes.
    """
    path, text = read_data_file(path, "one labelled example per line")
    if path.suffix.lower() == ".csv":
        examples = _read_csv(path, text, text_column, label_column)
    else:
        examples = _read_tab_separated(path, text.splitlines() if quoting == "none" else _quoted_rows(text))
    classes = Counter(e.label for e in examples)
    if len(classes) < 2:
        raise GptzooError(
            f"{path}: every example has the label {next(iter(classes))!r}; classification needs at least two classes"
        )
    return examples


def _quoted_rows(text: str) -> list[str]:
    """Tab-separated rows read with CSV quoting (a field opening with '"' may span lines), each
    joined back as 'label<TAB>text'."""
    return ["\t".join(row) for row in csv.reader(io.StringIO(text, newline=""), delimiter="\t")]


def _read_tab_separated(path: Path, lines: list[str]) -> list[Example]:
    examples = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        label, tab, message = line.partition("\t")
        if not tab or not label.strip() or not message.strip():
            raise GptzooError(f"{path}, line {number}: expected 'label<TAB>text', got {line[:60]!r}")
        examples.append(Example(message, label.strip()))
    return examples


def _read_csv(path: Path, text: str, text_column: str, label_column: str) -> list[Example]:
    reader = csv.DictReader(text.splitlines())
    columns = reader.fieldnames or []
    missing = [c for c in (text_column, label_column) if c not in columns]
    if missing:
        raise GptzooError(
            f"{path}, line 1: no column {' or '.join(repr(c) for c in missing)} in the header (columns: {', '.join(columns)}); "
            "name the columns with --text-column and --label-column"
        )
    examples = []
    for row in reader:
        message, label = row[text_column], row[label_column]
        if not message or not message.strip() or not label or not label.strip():
            raise GptzooError(f"{path}, line {reader.line_num}: empty {text_column!r} or {label_column!r}")
        examples.append(Example(message, label.strip()))
    if not examples:
        raise GptzooError(f"{path}: the file has a header but no examples")
    return examples


def balance(examples: list[Example], seed: int) -> list[Example]:
    """Undersample every class to the size of the smallest, choosing with ``seed``; file order is kept."""
    by_label: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        by_label.setdefault(e.label, []).append(i)
    smallest = min(len(ids) for ids in by_label.values())
    rng = random.Random(seed)
    kept = sorted(i for label in sorted(by_label) for i in rng.sample(by_label[label], smallest))
    return [examples[i] for i in kept]


def book_order(n: int, seed: int) -> list[int]:
    """The order pandas' ``DataFrame.sample(..., random_state=seed)`` draws rows in: numpy's
    RandomState(seed).permutation(n) (sampling k rows takes its first k)."""
    return np.random.RandomState(seed).permutation(n).tolist()


def balance_like_the_book(examples: list[Example], seed: int) -> list[Example]:
    """The book's create_balanced_dataset: every larger class sampled down to the smallest's size
    (pandas' sample order), then the classes one after another in sorted label order."""
    by_label: dict[str, list[Example]] = {}
    for e in examples:
        by_label.setdefault(e.label, []).append(e)
    smallest = min(len(group) for group in by_label.values())
    kept = []
    for label in sorted(by_label):
        group = by_label[label]
        kept += group if len(group) == smallest else [group[i] for i in book_order(len(group), seed)[:smallest]]
    return kept


def split_like_the_book(
    examples: list[Example], fractions: tuple[float, float, float], seed: int
) -> tuple[list[Example], list[Example], list[Example]]:
    """The book's random_split: shuffled as ``df.sample(frac=1, random_state=seed)``, then cut."""
    return cut([examples[i] for i in book_order(len(examples), seed)], fractions)


# ---- batches ------------------------------------------------------------------------------


def encode_examples(
    examples: list[Example], tokenizer: Tokenizer, labels: list[str], max_length: int
) -> list[tuple[list[int], int]]:
    """(token ids truncated to ``max_length``, class id) per example."""
    class_ids = {label: i for i, label in enumerate(labels)}
    encoded = tokenizer.encode_batch([e.text for e in examples])
    return [(ids[:max_length], class_ids[e.label]) for ids, e in zip(encoded, examples, strict=True)]


def collate(
    batch: list[tuple[list[int], int]], pad_id: int, pad_to: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Right-pad with ``pad_id`` to the longest sequence, or to ``pad_to`` tokens (the book pads
    every batch to the longest training example) -> ids (B, T), pad_mask (B, T), labels (B,)."""
    longest = pad_to or max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    pad_mask = torch.zeros(len(batch), longest, dtype=torch.bool)
    for row, (tokens, _) in enumerate(batch):
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        pad_mask[row, : len(tokens)] = True
    labels = torch.tensor([label for _, label in batch], dtype=torch.long)
    return ids, pad_mask, labels


# ---- the model ----------------------------------------------------------------------------


def classifier_config(base: ModelConfig, n_classes: int, registry: Registry, pooling: str = "last") -> ModelConfig:
    """The base's config with the LM head replaced by a classifier over ``n_classes``."""
    data = base.model_dump(mode="json") | {
        "head": {"name": "classifier", "n_classes": n_classes, "pooling": pooling},
        "tied_head": False,
    }
    return registry.model_config(data, source="classifier config")


def classifier_from(base: GPT, config: ModelConfig) -> GPT:
    """A classifier GPT with every weight but the head's copied from ``base``."""
    model = GPT(config)
    state = {name: t for name, t in base.state_dict().items() if not name.startswith("head.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(name.startswith("head.") for name in missing), (missing, unexpected)
    return model


# ---- training -----------------------------------------------------------------------------


def reads_padding(model: GPT) -> bool:
    """Whether the model reads padding as text: the book's ``last_position`` pooling runs the
    padded sequence unmasked, as the book's GPTModel does; the other poolings mask it out."""
    return model.config.head.params.pooling == "last_position"


def batch_loss(
    model: GPT, batch: list[tuple[list[int], int]], pad_id: int, device: torch.device, pad_to: int | None = None
) -> tuple[Tensor, int]:
    """Mean cross-entropy of a batch and how many it classified right."""
    ids, pad_mask, labels = (t.to(device) for t in collate(batch, pad_id, pad_to))
    logits = model(ids, pad_mask=None if reads_padding(model) else pad_mask)  # (B, n_classes)
    return F.cross_entropy(logits, labels), (logits.argmax(-1) == labels).sum().item()


@torch.no_grad()
def loss_and_accuracy(
    model: GPT,
    data: list,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    max_batches: int | None = None,
    pad_to: int | None = None,
) -> tuple[float, float]:
    """(mean loss, accuracy) over the first ``max_batches`` batches of ``data`` (all when None)."""
    was_training = model.training
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for batch in batches(data, batch_size)[:max_batches]:
        loss, right = batch_loss(model, batch, pad_id, device, pad_to)
        total_loss += loss.item() * len(batch)
        correct += right
        seen += len(batch)
    model.train(was_training)
    return total_loss / seen, correct / seen


def train_classifier(
    model: GPT,
    train: list,
    val: list,
    cfg: TrainConfig,
    *,
    pad_id: int,
    device: torch.device,
    out: Path | None = None,
    pad_to: int | None = None,
    drop_last: bool = False,
    epoch_states: EpochStates | None = None,
) -> list[dict]:
    """The book's loop (recipes/finetuning/loop.py) with loss and accuracy on the first ``cfg.eval_batches``
    batches of train and validation after each epoch (appended to ``out``'s metrics); returns the epochs'
    records. ``pad_to`` pads every batch to that length; ``drop_last`` skips each epoch's last, smaller batch;
    ``epoch_states``: see ``epoch_records``."""

    def scores_of(data: Sequence, max_batches: int | None) -> dict[str, float]:
        loss, accuracy = loss_and_accuracy(model, data, cfg.batch_size, pad_id, device, max_batches, pad_to)
        return {"loss": loss, "acc": accuracy}

    return epoch_records(
        model,
        train,
        val,
        cfg,
        loss_of=lambda batch: batch_loss(model, batch, pad_id, device, pad_to)[0],
        scores_of=scores_of,
        device=device,
        out=out,
        drop_last=drop_last,
        epoch_states=epoch_states,
    )


@torch.no_grad()
def predict(
    model: GPT, tokenizer: Tokenizer, text: str, labels: list[str], max_length: int, pad_to: int | None = None
) -> tuple[str, float]:
    """The most probable label of ``text`` and its probability; ``pad_to`` right-pads the
    input with end-of-text as the model was trained (the book's classify_review)."""
    device = model.token_embedding.weight.device
    ids = leading_ids(tokenizer, text, min(max_length, pad_to or max_length)) or [tokenizer.eot_id]
    ids, pad_mask, _ = (t.to(device) for t in collate([(ids, 0)], tokenizer.eot_id, pad_to))
    logits = model(ids, pad_mask=None if reads_padding(model) or pad_mask.all() else pad_mask)  # (1, n_classes)
    probs = logits.float().softmax(-1)[0]
    best = int(probs.argmax())
    return labels[best], float(probs[best])
