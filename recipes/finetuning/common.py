"""What classification and instruction fine-tuning share: the command-line options, which
weights train, the seeded split, the optimizer, LoRA set-up and saving the result as a run.

The fine-tuning loops themselves are the book's simple ones (recipes/finetuning/classifier.py,
recipes/finetuning/instruct.py): a fixed learning rate, an evaluation at the end of every epoch.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor, nn

from gptzoo.core import GPT, GptzooError, ModelConfig
from gptzoo.recipes.config.schema import DataConfig, RunConfig, TrainConfig
from gptzoo.recipes.finetuning.lora import LoRASettings, apply_lora, lora_state, merge_lora
from gptzoo.recipes.runs._journal import Commit
from gptzoo.recipes.runs._lock import LOCK, OWNER, run_writer
from gptzoo.recipes.runs.files import CONFIG, check_out_folder
from gptzoo.recipes.runs.folder import Run, commit_files, save_run
from gptzoo.recipes.runs.weights import write_state

T = TypeVar("T")

TRAIN_CHOICES = ("none", "head", "last-block", "last-n", "all")
SPLIT_ORDERS = ("shuffled", "book")
LORA_JSON = "lora.json"
LORA_WEIGHTS = "lora.safetensors"


# ---- command-line options ------------------------------------------------------------------


def add_arguments(
    parser: argparse.ArgumentParser,
    *,
    data_help: str,
    epochs: int,
    split: str,
    split_order_help: str,
    train_choices: Sequence[str],
    train_help: str,
) -> None:
    """The options both fine-tuning commands take; defaults differ where the book's do."""
    parser.add_argument(
        "base_dir",
        metavar="BASE_DIR",
        help="the run folder to start from (an imported GPT-2 or a model trained with gptzoo)",
    )
    parser.add_argument("--data", required=True, metavar="PATH", help=data_help)
    parser.add_argument("--out", required=True, metavar="DIR", help="the new run folder (new, or an empty folder)")
    parser.add_argument("--epochs", type=int, default=epochs, help=f"passes over the training split (default {epochs})")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per step (default 8)")
    parser.add_argument("--lr", type=float, default=5e-5, help="AdamW learning rate, constant (default 5e-5)")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (default 0.1)")
    parser.add_argument(
        "--weight-decay-scope",
        choices=("matrices", "all"),
        default="matrices",
        help="what decays: matrices (embeddings and linear weights, not biases and norms; the default) or all (every parameter, the book's AdamW)",
    )
    parser.add_argument(
        "--betas",
        default="0.9,0.95",
        metavar="B1,B2",
        help="AdamW's betas (default 0.9,0.95; the book's fine-tuning uses AdamW's own 0.9,0.999)",
    )
    parser.add_argument(
        "--grad-clip",
        type=float,
        default=1.0,
        metavar="NORM",
        help="clip the gradient norm to NORM; 0 turns clipping off, as in the book (default 1.0)",
    )
    parser.add_argument(
        "--drop-last",
        action="store_true",
        help="skip each epoch's last, smaller training batch, as the book's DataLoader(drop_last=True)",
    )
    parser.add_argument(
        "--seed", type=int, default=123, help="the split, shuffling and LoRA initialisation (default 123)"
    )
    parser.add_argument(
        "--split",
        default=split,
        metavar="TRAIN,VAL,TEST",
        help=f"fractions of the data for training, validation and test (default {split})",
    )
    parser.add_argument("--split-order", choices=SPLIT_ORDERS, default="shuffled", help=split_order_help)
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        metavar="N",
        help="truncate every example to N tokens (default: the model's context length)",
    )
    parser.add_argument(
        "--eval-batches",
        type=int,
        default=5,
        metavar="N",
        help="batches of the train and validation splits evaluated after each epoch (default 5)",
    )
    parser.add_argument("--train", choices=train_choices, default=None, help=train_help)
    parser.add_argument(
        "--last-n",
        type=int,
        default=2,
        metavar="N",
        help="with --train last-n: how many of the last transformer blocks train (default 2)",
    )
    parser.add_argument(
        "--lora-rank",
        type=int,
        default=None,
        metavar="R",
        help="train a LoRA adapter of rank R instead of the weights themselves",
    )
    parser.add_argument(
        "--lora-alpha",
        type=float,
        default=None,
        metavar="A",
        help="LoRA alpha: the low-rank update is scaled by A / R, or by A with --lora-convention book (default: R)",
    )
    parser.add_argument(
        "--lora-convention",
        choices=("gptzoo", "book"),
        default="gptzoo",
        help="gptzoo (default): scale alpha / rank, A initialised with fan-in = in_features, as the LoRA paper and peft; "
        "book: scale alpha, A of shape (in, rank) initialised with fan-in = rank, as the book's appendix E",
    )
    parser.add_argument(
        "--lora-targets",
        default="qkv,out_proj,ffn",
        metavar="LIST",
        help="comma-separated linear layers LoRA adapts: qkv (attention projections), out_proj (attention output), "
        "ffn (feed-forward linears), or a glob over module names such as 'blocks.3.*' (default qkv,out_proj,ffn)",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default: cuda, then mps, then cpu)")


def check_arguments(args: argparse.Namespace) -> tuple[float, float, float]:
    """Validate the shared options; returns the split fractions."""
    for name in ("epochs", "batch_size", "eval_batches", "last_n"):
        if getattr(args, name) < 1:
            raise GptzooError(f"--{name.replace('_', '-')} {getattr(args, name)}: give at least 1")
    if not args.lr > 0 or math.isinf(args.lr):  # also nan
        raise GptzooError(f"--lr {args.lr}: give a positive learning rate")
    for name in ("weight_decay", "grad_clip"):
        value = getattr(args, name)
        if not value >= 0 or math.isinf(value):
            raise GptzooError(f"--{name.replace('_', '-')} {value}: give 0 or a positive number")
    try:
        betas = tuple(float(b) for b in args.betas.split(","))
    except ValueError:
        betas = ()
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise GptzooError(f"--betas {args.betas!r}: give two numbers in [0, 1), e.g. 0.9,0.999")
    args.betas = betas
    if args.max_length is not None and args.max_length < 2:
        raise GptzooError(f"--max-length {args.max_length}: give at least 2 tokens")
    if args.lora_rank is not None and args.lora_rank < 1:
        raise GptzooError(f"--lora-rank {args.lora_rank}: give at least 1")
    if args.lora_rank is None and args.lora_alpha is not None:
        raise GptzooError("--lora-alpha needs --lora-rank")
    if args.lora_alpha is not None and (not args.lora_alpha > 0 or math.isinf(args.lora_alpha)):  # also nan
        raise GptzooError(
            f"--lora-alpha {args.lora_alpha}: give a positive number (the update is scaled by alpha / rank)"
        )
    if args.train == "none" and args.lora_rank is None:
        raise GptzooError("--train none trains nothing without --lora-rank; choose what trains")
    try:
        fractions = tuple(float(f) for f in args.split.split(","))
    except ValueError:
        fractions = ()
    if len(fractions) != 3 or not all(f > 0 for f in fractions) or not sum(fractions) <= 1 + 1e-9:  # also nan
        raise GptzooError(
            f"--split {args.split!r}: give three positive fractions that sum to at most 1, e.g. 0.7,0.1,0.2"
        )
    return fractions  # type: ignore[return-value]


def holding_out_lock(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run a fine-tuning command holding its --out folder's writer lock, so a second writer is refused at once."""

    @functools.wraps(run)
    def locked(args: argparse.Namespace) -> int:
        out = Path(args.out)
        check_out_folder(out)
        if out.is_dir() and any(p.name not in (LOCK, OWNER) for p in out.iterdir()):
            return run(args)  # refused there before anything is written; no lock file is left in the user's folder
        with run_writer(out):
            return run(args)

    return locked


def check_out_dir(out: Path, base: Path) -> None:
    """Refuse the base itself and any folder with files in it: nothing the user has is replaced."""
    if out.resolve() == base.resolve():
        raise GptzooError(f"--out {out} is the base run itself; choose a new folder")
    check_out_folder(out)
    if out.exists() and (not out.is_dir() or any(p.name not in (LOCK, OWNER) for p in out.iterdir())):
        raise GptzooError(f"--out {out} exists and is not an empty folder; choose a new folder or remove it")


def max_length(requested: int | None, context_length: int, base: Path) -> int:
    if requested is None:
        return context_length
    if requested > context_length:
        raise GptzooError(
            f"--max-length {requested} exceeds the base model's context length {context_length} ({base / CONFIG})"
        )
    return requested


# ---- data ----------------------------------------------------------------------------------


def read_data_file(path: str | Path, expected: str) -> tuple[Path, str]:
    """The text of a fine-tuning data file; GptzooError if it is missing or empty (``expected`` says what belongs in it)."""
    path = Path(path)
    if not path.is_file():
        raise GptzooError(
            f"{path}: a folder, not a data file; give the file itself (it needs {expected})"
            if path.is_dir()
            else f"{path}: no such data file"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise GptzooError(f"{path}: not UTF-8 text (byte {err.start}); convert it to UTF-8") from None
    if not text.strip():
        raise GptzooError(f"{path}: the file is empty; it needs {expected}")
    return path, text


def split_data(
    items: Sequence[T], fractions: tuple[float, float, float], seed: int
) -> tuple[list[T], list[T], list[T]]:
    """Shuffle with ``seed`` (Python's random.Random), then cut as ``cut`` does."""
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    return cut(shuffled, fractions)


def cut(items: Sequence[T], fractions: tuple[float, float, float]) -> tuple[list[T], list[T], list[T]]:
    """The first int(n·train) items for training, the next int(n·val) for validation, the rest
    for test (the book's chapter 6 rule)."""
    items = list(items)
    n_train = int(len(items) * fractions[0])
    n_val = int(len(items) * fractions[1])
    return items[:n_train], items[n_train : n_train + n_val], items[n_train + n_val :]


def check_splits(path: Path, splits: dict[str, list]) -> None:
    empty = [name for name, items in splits.items() if not items]
    if empty:
        sizes = ", ".join(f"{name} {len(items)}" for name, items in splits.items())
        raise GptzooError(
            f"{path}: the split ({sizes}) leaves {' and '.join(empty)} empty; give more examples or change --split"
        )


def batches(
    items: Sequence[T], batch_size: int, generator: random.Random | None = None, drop_last: bool = False
) -> list[list[T]]:
    """``items`` cut into batches, shuffled first when a generator is given; ``drop_last``
    leaves out a last batch smaller than ``batch_size``."""
    order = list(range(len(items)))
    if generator is not None:
        generator.shuffle(order)
    end = len(order) - len(order) % batch_size if drop_last else len(order)
    return [[items[i] for i in order[start : start + batch_size]] for start in range(0, end, batch_size)]


# ---- which weights train -------------------------------------------------------------------


def set_trainable(model: GPT, train: str, last_n: int = 1) -> None:
    """Freeze the model except: nothing (none), the head (head), the last block with the final
    norm and the head (last-block), the last N blocks with them (last-n), everything (all).
    A head tied to the token embedding trains the embedding with it."""
    if train == "last-n" and not 1 <= last_n <= len(model.blocks):
        raise GptzooError(f"--last-n {last_n}: the model has {len(model.blocks)} blocks; give 1 to {len(model.blocks)}")
    model.requires_grad_(train == "all")
    if train in ("none", "all"):
        return
    unfrozen: list[nn.Module] = [model.head]
    if train != "head":
        n = 1 if train == "last-block" else last_n
        unfrozen += [model.final_norm, *model.blocks[-n:]]
    for module in unfrozen:
        module.requires_grad_(True)


def count_parameters(model: nn.Module) -> dict[str, int]:
    params = list(model.parameters())  # shared (tied) parameters appear once
    return {"total": sum(p.numel() for p in params), "trainable": sum(p.numel() for p in params if p.requires_grad)}


def choose_trainable(model: GPT, train: str, args: argparse.Namespace) -> LoRASettings | None:
    """Freeze the model as ``train`` says and, with --lora-rank, wrap the targeted linears in
    LoRA adapters. Prints the parameter counts before and after; returns the LoRA settings."""
    before = count_parameters(model)
    set_trainable(model, train, args.last_n)
    settings = None
    if args.lora_rank is not None:
        targets = [t.strip() for t in args.lora_targets.split(",") if t.strip()]
        settings = LoRASettings(
            rank=args.lora_rank,
            alpha=args.lora_alpha or float(args.lora_rank),
            convention=args.lora_convention,
            targets=targets,
        )
        torch.manual_seed(args.seed)
        wrapped = apply_lora(model, settings)
        print(
            f"LoRA rank {settings.rank}, alpha {settings.alpha:g} ({settings.convention} convention: scale {settings.scale:g}) "
            f"on {len(wrapped)} linear layers ({', '.join(targets)}); --train {train}"
        )
    after = count_parameters(model)
    print(f"parameters before: {before['total']:,} total, {before['trainable']:,} trainable")
    print(
        f"parameters after:  {after['total']:,} total, {after['trainable']:,} trainable ({after['trainable'] / after['total']:.2%})"
    )
    if settings is not None:
        settings = settings.model_copy(update={"modules": wrapped, "parameters": {"before": before, "after": after}})
    return settings


def train_config(args: argparse.Namespace, device: torch.device) -> TrainConfig:
    """The settings this fine-tuning ran with, recorded in the new run's config.json."""
    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        min_lr_ratio=1.0,
        betas=args.betas,
        weight_decay=args.weight_decay,
        weight_decay_scope=args.weight_decay_scope,
        grad_clip=args.grad_clip,
        eval_batches=args.eval_batches,
        seed=args.seed,
        device=str(device),
    )


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss: Tensor, grad_clip: float | None) -> None:
    """One plain step: no schedule, no accumulation (the book's fine-tuning loops)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
    optimizer.step()


# ---- saving --------------------------------------------------------------------------------


def merge_and_save(out: Path, run: Run, lora: LoRASettings | None) -> None:
    """Save the fine-tuned model as an ordinary run. With LoRA the adapter is saved on its
    own (lora.json, lora.safetensors) and then folded into the weights, so model.safetensors
    holds the merged model and every command loads the run as it loads any other."""
    if lora is not None:
        with run_writer(out):
            commit = Commit(out)
            with commit.stage(LORA_WEIGHTS) as f:
                write_state(f, lora_state(run.model), {"format": "pt"})
            commit.stage_text(LORA_JSON, lora.model_dump_json(indent=2) + "\n")
            commit.commit()
        merge_lora(run.model)
    save_run(out, run.config, run.model, run.tokenizer)


def fine_tuned_config(
    model_config: ModelConfig, data: Path, fractions: tuple[float, float, float], train: TrainConfig
) -> RunConfig:
    """The new run's config: the fine-tuned model, where its data came from, how it trained."""
    data_config = DataConfig(source=str(data), val_fraction=fractions[1], seed=train.seed)
    return RunConfig(model=model_config, data=data_config, train=train)


def write_json(path: Path, value) -> None:
    """Write a JSON file into a run folder and commit it to the folder's manifest."""
    commit_files(path.parent, {path.name: json.dumps(value, indent=2, ensure_ascii=False) + "\n"})
