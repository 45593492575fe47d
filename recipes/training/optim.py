"""How long and how fast training goes: the step budget, AdamW's parameter groups, the learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from gptzoo.core import Component
from gptzoo.recipes.config.schema import TrainConfig


def total_steps(
    train: TrainConfig,
    n_train_windows: int,
    context_length: int,
    world_size: int = 1,
    training_flops_per_token: int | None = None,
) -> int:
    """Optimizer steps for the budget the config gives: steps, epochs, tokens or FLOPs (a step is the global batch).

    A FLOPs budget buys ⌊max_flops / (training FLOPs per token × tokens per step)⌋ steps (at least one),
    so a model that costs more per token trains on fewer tokens.
    """
    windows_per_step = train.batch_size * train.grad_accum * world_size
    if train.max_steps is not None:
        return train.max_steps
    if train.max_flops is not None:
        if training_flops_per_token is None:
            raise ValueError("a train.max_flops budget needs the model's training FLOPs per token")
        return max(1, int(train.max_flops // (training_flops_per_token * windows_per_step * context_length)))
    if train.epochs is not None:
        return max(1, math.ceil(train.epochs * n_train_windows / windows_per_step))
    return max(1, math.ceil(train.max_tokens / (windows_per_step * context_length)))


def build_optimizer(model: nn.Module, train: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (embeddings, linear weights) only, not on biases and
    norms; with ``weight_decay_scope = "all"`` on every parameter, as the book's AdamW."""
    params = [p for p in model.parameters() if p.requires_grad]
    if train.weight_decay_scope == "all":
        groups = [{"params": params, "weight_decay": train.weight_decay}]
    else:
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": train.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
    try:
        return torch.optim.AdamW(groups, lr=train.lr, betas=train.betas, fused=True)
    except (RuntimeError, TypeError):  # no fused kernel for this device in this torch
        return torch.optim.AdamW(groups, lr=train.lr, betas=train.betas)


def lr_at(step: int, train: TrainConfig, n_steps: int) -> float:
    """Learning rate for 0-based ``step``: linear warmup, then cosine decay to lr × min_lr_ratio."""
    if step < train.warmup_steps:
        return train.lr * (step + 1) / (train.warmup_steps + 1)
    min_lr = train.lr * train.min_lr_ratio
    progress = min(1.0, (step - train.warmup_steps) / max(1, n_steps - train.warmup_steps))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (train.lr - min_lr)


def clip_and_step(model: nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float | None) -> None:
    """After the backward passes: clip the gradient norm to ``grad_clip`` (None: no clipping), step the
    optimizer, clear the gradients, and let the components that adjust themselves between steps do
    so (``after_optimizer_step``: a mixture of experts' balancing bias). Pretraining's step and
    fine-tuning's both end so."""
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    for module in model.modules():
        if isinstance(module, Component):
            module.after_optimizer_step()
