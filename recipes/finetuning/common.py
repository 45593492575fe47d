"""What classification and instruction fine-tuning share: the out folder, which weights train,
the seeded split, the optimizer, LoRA set-up and saving the result as a run.

The fine-tuning loop is the book's simple one (recipes/finetuning/loop.py): a fixed learning rate,
an evaluation at the end of every epoch.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from gptzoo.core import GPT, GptzooError, ModelConfig
from gptzoo.recipes.config.finetune import (
    ClassifierConfig,
    FinetuneTraining,
    FineTuning,
    InstructConfig,
    LoRAConfig,
)
from gptzoo.recipes.config.schema import DataConfig, RunConfig, TrainConfig
from gptzoo.recipes.finetuning.lora import LoRASettings, apply_lora, lora_state, merge_lora
from gptzoo.recipes.runs._journal import Commit
from gptzoo.recipes.runs._lock import LOCK, OWNER, run_writer
from gptzoo.recipes.runs.files import CONFIG, atomic_path, check_out_folder, write_text_atomic
from gptzoo.recipes.runs.folder import Run, commit_files, save_run
from gptzoo.recipes.runs.metrics import METRICS, read_metrics
from gptzoo.recipes.runs.weights import write_state
from gptzoo.recipes.training.checkpoint import load_train_state, restore_rng

T = TypeVar("T")

LORA_JSON = "lora.json"
LORA_WEIGHTS = "lora.safetensors"


# ---- the run folders ----------------------------------------------------------------------


@contextlib.contextmanager
def writing_to(out: Path, resume: bool = False) -> Iterator[None]:
    """Hold ``out``'s writer lock while fine-tuning writes it, so a second writer is refused at once."""
    check_out_folder(out)
    if not resume and out.is_dir() and any(p.name not in (LOCK, OWNER) for p in out.iterdir()):
        yield  # refused by check_out_dir before anything is written; no lock file is left in the user's folder
        return
    with run_writer(out):
        yield


def check_out_dir(out: Path, base: Path, resume: bool = False) -> None:
    """Refuse the base itself and, unless resuming, any folder with files in it: nothing the user has is replaced."""
    if out.resolve() == base.resolve():
        raise GptzooError(f"--out {out} is the base run itself; choose a new folder")
    check_out_folder(out)
    if resume:
        return
    if (out / FINETUNE_STATE).is_file():
        raise GptzooError(
            f"--out {out} holds an unfinished fine-tuning ({FINETUNE_STATE}); pass --resume to continue it, "
            "or choose a new folder"
        )
    if out.exists() and (not out.is_dir() or any(p.name not in (LOCK, OWNER) for p in out.iterdir())):
        raise GptzooError(f"--out {out} exists and is not an empty folder; choose a new folder or remove it")


# ---- resuming ------------------------------------------------------------------------------

FINETUNE_STATE = "finetune_state.pt"  # the training state after the last finished epoch, while fine-tuning runs


class EpochStates:
    """The training state a fine-tuning saves into its run folder after every epoch, and the one it resumes from.

    It holds all that the rest of an uninterrupted run depends on: every weight (the new head and the LoRA
    adapters included), the optimizer's state, the shuffling generator's and torch's random states (dropout),
    and how the run was made (``made``: its base and fine-tuning config), which a resumed run must repeat.
    ``finish`` removes the file once the run is saved, so a finished run folder is what an uninterrupted run
    leaves, byte for byte."""

    def __init__(self, out: Path, made: str, resumed: dict | None = None):
        self.file = out / FINETUNE_STATE
        self.made = made
        self.resumed = resumed

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, order: random.Random, epoch: int, step: int):
        state = {
            "epoch": epoch,
            "step": step,
            "made": self.made,
            "model": {name: t.detach().cpu().clone() for name, t in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "order": order.getstate(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
        }
        with atomic_path(self.file) as tmp:
            torch.save(state, tmp)

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer, order: random.Random) -> tuple[int, int]:
        """Put the saved state back; returns (epochs done, steps done)."""
        state = self.resumed
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        order.setstate(state["order"])
        restore_rng(state["rng"])
        return state["epoch"], state["step"]

    def finish(self) -> None:
        self.file.unlink(missing_ok=True)


def made_by(config: ClassifierConfig | InstructConfig, base: str | Path) -> str:
    """How a fine-tuning is made, as its state records it: the base and the whole config."""
    return FineTuning(base=str(base), config=config).model_dump_json()


def resumed_state(out: Path, made: str) -> dict:
    """The state the fine-tuning stopped in ``out`` saved after its last finished epoch, with the metrics
    cut back to that epoch; refused when it was made another way than ``made``."""
    if not (out / FINETUNE_STATE).is_file():
        raise GptzooError(
            f"--out {out}: holds no unfinished fine-tuning to resume (no {FINETUNE_STATE}); fine-tune without --resume"
        )
    state = load_train_state(out, FINETUNE_STATE)
    before, now = json.loads(state["made"]), json.loads(made)
    changed = [key for key in sorted(set(flat(before)) | set(flat(now))) if flat(before).get(key) != flat(now).get(key)]
    if changed:
        raise GptzooError(
            f"--out {out}: the fine-tuning there was made with other settings ({', '.join(changed)}); "
            "resume it with the command that started it"
        )
    kept = [r for r in read_metrics(out) if "epoch" in r and r["epoch"] <= state["epoch"]]
    write_text_atomic(out / METRICS, "".join(json.dumps(r) + "\n" for r in kept))
    return state


def flat(value: dict, prefix: str = "") -> dict[str, object]:
    """A nested dict as {dotted key: value}."""
    items: dict[str, object] = {}
    for key, item in value.items():
        if isinstance(item, dict):
            items |= flat(item, f"{prefix}{key}.")
        else:
            items[f"{prefix}{key}"] = item
    return items


def max_length(requested: int | None, context_length: int, base: Path) -> int:
    if requested is None:
        return context_length
    if requested > context_length:
        raise GptzooError(
            f"data.max_length = {requested} exceeds the base model's context length {context_length} ({base / CONFIG})"
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
            f"{path}: the split ({sizes}) leaves {' and '.join(empty)} empty; give more examples or change data.split"
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
    """Freeze the model except: nothing (none), the head (head), the last block (and its layer's
    residual mixing) with the final norm and the head (last-block), the last N blocks with them
    (last-n), everything (all).
    A head tied to the token embedding trains the embedding with it."""
    if train == "last-n" and not 1 <= last_n <= len(model.blocks):
        raise GptzooError(
            f"train.last_n = {last_n}: the model has {len(model.blocks)} blocks; give 1 to {len(model.blocks)}"
        )
    model.requires_grad_(train == "all")
    if train in ("none", "all"):
        return
    unfrozen: list[nn.Module] = [model.head]
    if train != "head":
        n = 1 if train == "last-block" else last_n
        unfrozen += [model.final_norm, *model.blocks[-n:], *model.residuals[-n:]]  # a layer's stream mixing with it
    for module in unfrozen:
        module.requires_grad_(True)


def count_parameters(model: nn.Module) -> dict[str, int]:
    params = list(model.parameters())  # shared (tied) parameters appear once
    return {"total": sum(p.numel() for p in params), "trainable": sum(p.numel() for p in params if p.requires_grad)}


def choose_trainable(model: GPT, train: FinetuneTraining, lora: LoRAConfig | None) -> LoRASettings | None:
    """Freeze the model as ``train.trainable`` says and, with ``lora``, wrap the targeted linears in
    LoRA adapters. Prints the parameter counts before and after; returns the LoRA settings."""
    before = count_parameters(model)
    set_trainable(model, train.trainable, train.last_n)
    settings = None
    if lora is not None:
        settings = LoRASettings(
            rank=lora.rank, alpha=lora.alpha or lora.rank, convention=lora.convention, targets=lora.targets
        )
        torch.manual_seed(train.seed)
        wrapped = apply_lora(model, settings)
        print(
            f"LoRA rank {settings.rank}, alpha {settings.alpha:g} ({settings.convention} convention: scale {settings.scale:g}) "
            f"on {len(wrapped)} linear layers ({', '.join(lora.targets)}); trainable {train.trainable}"
        )
    after = count_parameters(model)
    print(f"parameters before: {before['total']:,} total, {before['trainable']:,} trainable")
    print(
        f"parameters after:  {after['total']:,} total, {after['trainable']:,} trainable ({after['trainable'] / after['total']:.2%})"
    )
    if settings is not None:
        settings = settings.model_copy(update={"modules": wrapped, "parameters": {"before": before, "after": after}})
    return settings


def train_config(train: FinetuneTraining, device: torch.device) -> TrainConfig:
    """The settings this fine-tuning ran with, as the run config's [train] records them."""
    return TrainConfig(
        epochs=train.epochs,
        batch_size=train.batch_size,
        lr=train.lr,
        min_lr_ratio=1.0,
        betas=train.betas,
        weight_decay=train.weight_decay,
        weight_decay_scope=train.weight_decay_scope,
        grad_clip=train.grad_clip,
        eval_batches=train.eval_batches,
        seed=train.seed,
        device=str(device),
    )


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
    model_config: ModelConfig, finetune: ClassifierConfig | InstructConfig, base: str | Path, device: torch.device
) -> RunConfig:
    """The new run's config: the fine-tuned model, where its data came from, how it trained, and the whole
    fine-tuning config with its base, from which the run can be made again."""
    data = finetune.data
    data_config = DataConfig(source=data.path, val_fraction=data.split[1], seed=finetune.train.seed)
    train = train_config(finetune.train, device)
    return RunConfig(
        model=model_config, data=data_config, train=train, finetune=FineTuning(base=str(base), config=finetune)
    )


def write_json(path: Path, value) -> None:
    """Write a JSON file into a run folder and commit it to the folder's manifest."""
    commit_files(path.parent, {path.name: json.dumps(value, indent=2, ensure_ascii=False) + "\n"})
