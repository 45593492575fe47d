"""The fine-tuning loop both fine-tunings run: the book's, a step per batch at a constant learning
rate and, after each epoch, scores on the first ``eval_batches`` batches of train and validation.

The optimizer and its step (clipping, then AdamW) are pretraining's (recipes/training/optim.py);
what differs by fine-tuning is the loss of a batch and the scores of a split, passed in.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from gptzoo.recipes.config.schema import TrainConfig
from gptzoo.recipes.finetuning.common import EpochStates, batches
from gptzoo.recipes.runs.metrics import append_metrics
from gptzoo.recipes.training.optim import build_optimizer, clip_and_step

LossOf = Callable[[list], Tensor]  # a batch -> its mean loss, with a graph to backpropagate
ScoresOf = Callable[[Sequence, int | None], dict[str, float]]  # a split, at most N batches -> {"loss": ..., ...}


def epoch_records(
    model: nn.Module,
    train: Sequence,
    val: Sequence,
    cfg: TrainConfig,
    *,
    loss_of: LossOf,
    scores_of: ScoresOf,
    device: torch.device,
    out: Path | None = None,
    drop_last: bool = False,
    epoch_states: EpochStates | None = None,
) -> list[dict]:
    """Train ``model`` for ``cfg.epochs`` epochs; returns one record per epoch (``epoch``, ``step``, then each
    score of the train and validation splits as ``train_<name>`` and ``val_<name>``), each appended to
    ``out``'s metrics as it is made. ``drop_last`` skips each epoch's last, smaller batch. With
    ``epoch_states`` the training state is saved after every epoch, and training continues from the
    state it was given (the records of a resumed run's earlier epochs are in its metrics, not returned)."""
    optimizer = build_optimizer(model, cfg, device)
    order = random.Random(cfg.seed)
    steps_per_epoch = len(batches(train, cfg.batch_size, drop_last=drop_last))
    records: list[dict] = []
    done, step = 0, 0
    if epoch_states is not None and epoch_states.resumed is not None:
        done, step = epoch_states.restore(model, optimizer, order)
    model.train()
    with tqdm(total=int(cfg.epochs) * steps_per_epoch, initial=step, desc="fine-tuning", unit="step") as progress:
        for epoch in range(done + 1, int(cfg.epochs) + 1):
            for batch in batches(train, cfg.batch_size, order, drop_last):
                loss = loss_of(batch)
                loss.backward()
                clip_and_step(model, optimizer, cfg.grad_clip)
                step += 1
                progress.update()
                progress.set_postfix(loss=f"{loss.item():.3f}")
            scores = {split: scores_of(data, cfg.eval_batches) for split, data in (("train", train), ("val", val))}
            record = {"epoch": epoch, "step": step}
            record |= {f"{split}_{name}": value for split, named in scores.items() for name, value in named.items()}
            records.append(record)
            progress.write(f"epoch {epoch}: {' | '.join(f'{split} {shown(named)}' for split, named in scores.items())}")
            if out is not None:
                append_metrics(out, record)
            if epoch_states is not None:
                epoch_states.save(model, optimizer, order, epoch, step)
    return records


def shown(scores: dict[str, float]) -> str:
    """``loss 0.637 acc 75.0%``: a loss to three decimals, an accuracy as a percentage."""
    return " ".join(f"{name} {value:.1%}" if name == "acc" else f"{name} {value:.3f}" for name, value in scores.items())
