"""Scoring a model during training: loss and accuracy on fixed windows, the metrics record, a text sample."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from gptzoo.core import GPT, Meter, Tokenizer
from gptzoo.recipes.config.schema import TrainConfig
from gptzoo.recipes.data.tokens import TokenWindows, spread_indices
from gptzoo.recipes.research.tasks import IGNORE
from gptzoo.recipes.runs.weights import unwrap
from gptzoo.recipes.training import distributed
from gptzoo.recipes.training.devices import autocast, to_device
from gptzoo.recipes.training.optim import lr_at

SAMPLE_TEMPERATURE = 0.8
SAMPLE_TOP_K = 40
MAX_LOGIT_WINDOWS = 4


@torch.no_grad()
def estimate_metrics(
    model: nn.Module,
    windows: TokenWindows,
    n_batches: int,
    batch_size: int,
    device: torch.device,
    dtype: str = "float32",
    progress: bool = False,
) -> tuple[float, float]:
    """Mean loss and top-1 accuracy over the scored targets of a fixed set of windows spread across
    ``windows``, the same at every evaluation. Every target of a corpus is scored; of a task, only
    the answers (the others are IGNORE).

    With several processes the set is n_batches global batches, shared out between the ranks.
    """
    world = distributed.world()
    indices = spread_indices(len(windows), n_batches * batch_size * world.size)
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, right answers, scored targets; read back once
    for part in tqdm(
        distributed.eval_batches(indices, batch_size, world), desc="evaluating", unit="batch", disable=not progress
    ):
        # a rank out of windows still runs a forward (FSDP's ranks gather weights together), counted zero times
        inputs, targets = to_device(windows.batch(part if len(part) else indices[:1]), device)  # (B, T) each
        with autocast(device, dtype):
            logits = model(inputs).flatten(0, 1).float()  # (B·T, V)
        if len(part):
            targets = targets.flatten()  # (B·T,)
            scored = targets != IGNORE
            sums += torch.stack([
                F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum"),
                (logits.argmax(-1) == targets).sum(),  # IGNORE is never an argmax
                scored.sum(),
            ]).double()  # fmt: skip
    loss_sum, correct, count = distributed.all_sum(sums.tolist(), device)
    model.train(was_training)
    return loss_sum / count, correct / count


def estimate_loss(
    model: nn.Module,
    windows: TokenWindows,
    n_batches: int,
    batch_size: int,
    device: torch.device,
    dtype: str = "float32",
    progress: bool = False,
) -> float:
    """The mean loss of ``estimate_metrics``."""
    return estimate_metrics(model, windows, n_batches, batch_size, device, dtype, progress)[0]


@torch.no_grad()
def max_attention_logits(
    model: nn.Module, windows: TokenWindows, batch_size: int, device: torch.device, dtype: str = "float32"
) -> list[float | None] | None:
    """Per layer, the largest attention logit over up to MAX_LOGIT_WINDOWS of the windows evaluation scores
    (None at a layer whose mixer does not report it); None when no layer reports it or with several
    processes (a sharded model runs whole only as its wrapper). A few windows, not a batch: the measurement
    forms every (query, key) score of a layer at once."""
    plain = unwrap(model)
    mixers = plain.mixers() if isinstance(plain, GPT) else []
    if distributed.world().size > 1 or not any("max_logit" in type(m).declared_measurements(m.params) for m in mixers):
        return None
    was_training = plain.training
    plain.eval()
    inputs, _ = to_device(windows.batch(spread_indices(len(windows), min(batch_size, MAX_LOGIT_WINDOWS))), device)
    meter = Meter()
    with autocast(device, dtype):
        plain(inputs, meter=meter)
    plain.train(was_training)
    return meter.values("max_logit")


def sample_text(model: nn.Module, tokenizer: Tokenizer, train: TrainConfig) -> str:
    """train.sample_prompt and a short continuation, as the tokenizer decodes them together;
    uses its own random generator, so training is unaffected."""
    from gptzoo.recipes.generation.generate import complete

    plain = unwrap(model)
    was_training = plain.training
    plain.eval()
    text = complete(
        plain,
        tokenizer,
        train.sample_prompt,
        train.sample_tokens,
        temperature=SAMPLE_TEMPERATURE,
        top_k=SAMPLE_TOP_K,
        seed=train.seed,
    )
    plain.train(was_training)
    return tokenizer.decode(tokenizer.encode(train.sample_prompt)) + text


def metrics_record(
    model: nn.Module,
    train_windows: TokenWindows,
    val_windows: TokenWindows,
    cfg: TrainConfig,
    device: torch.device,
    step: int,
    tokens: int,
    n_steps: int,
) -> dict:
    """One metrics record: losses on fixed train and validation windows, where training stands, and each layer's
    largest attention logit (max_attention_logit, where a mixer reports it)."""
    train_loss, train_accuracy = estimate_metrics(
        model, train_windows, cfg.eval_batches, cfg.batch_size, device, cfg.dtype
    )
    val_loss, val_accuracy = estimate_metrics(model, val_windows, cfg.eval_batches, cfg.batch_size, device, cfg.dtype)
    logits = max_attention_logits(model, val_windows, cfg.batch_size, device, cfg.dtype)
    return {
        "step": step,
        "tokens": tokens,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "train_accuracy": train_accuracy,
        "val_accuracy": val_accuracy,
        "perplexity": math.exp(min(val_loss, 700.0)),
        "lr": lr_at(max(step - 1, 0), cfg, n_steps),  # the rate of the step just taken (of the first, before any)
        **({"max_attention_logit": logits} if logits is not None else {}),
    }
