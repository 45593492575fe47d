"""LoRA (Hu et al., 2021): train a low-rank update B·A beside a frozen linear layer.

A wrapped layer computes x·Wᵀ + b + scale·x·Aᵀ·Bᵀ with A (rank, in) random and B (out, rank)
zero, so the adapted model starts equal to the base. Only A and B train. ``merge_lora``
folds the update into W, leaving plain nn.Linear layers.

Two conventions, by name:

- ``gptzoo`` (the default, as the LoRA paper and peft): scale = alpha / rank, A drawn as
  nn.Linear(in, rank) draws its weight, Kaiming-uniform with fan-in = in (bound 1/√in).
- ``book`` (the book's appendix E): scale = alpha, A drawn as a tensor of shape (in, rank),
  whose Kaiming-uniform fan-in is rank (bound 1/√rank). At the book's rank 16 / alpha 16 on
  768 inputs its update starts 16·√(768/16) ≈ 111 times larger than gptzoo's for the same B.

Both store A as (rank, in), so saved adapters and merging are the same.

Layers are chosen by module name, so every attention variant works, including
``per_head``, whose query/key/value projections are one nn.Linear per head.
"""

from __future__ import annotations

import math
from fnmatch import fnmatch
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from gptzoo.core import GptzooError

# Named groups of targets; anything else is a glob over full module names ("blocks.3.*").
TARGET_GROUPS = {
    "qkv": "attention projections of queries, keys and values (every linear in blocks.*.attention but out_proj)",
    "out_proj": "the attention output projection (blocks.*.attention.out_proj)",
    "ffn": "every linear of the feed-forward networks (blocks.*.feed_forward.*)",
}


class LoRASettings(BaseModel):
    """What a LoRA run saves in lora.json: how the adapter was built and what it wrapped."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    rank: int = Field(gt=0)
    alpha: float = Field(gt=0)
    convention: Literal["gptzoo", "book"] = "gptzoo"
    targets: list[str]
    modules: list[str] = []
    parameters: dict[str, dict[str, int]] = {}

    @property
    def scale(self) -> float:
        return lora_scale(self.rank, self.alpha, self.convention)


def lora_scale(rank: int, alpha: float, convention: str) -> float:
    return alpha / rank if convention == "gptzoo" else alpha


class LoRALinear(nn.Linear):
    """An nn.Linear plus a trainable low-rank update. It keeps the wrapped layer's own
    ``weight`` and ``bias`` Parameters, so state-dict names stay those of the plain layer
    (attention variants that rewrite their state dict keep working)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, convention: str = "gptzoo"):
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.scale = lora_scale(rank, alpha, convention)
        like = dict(device=base.weight.device, dtype=base.weight.dtype)
        if convention == "gptzoo":
            A = torch.empty(
                rank, base.in_features, **like
            )  # as nn.Linear(in, rank) initialises its weight: fan-in = in
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))
        else:
            A = torch.empty(base.in_features, rank, **like)  # the book's A (in, rank): fan-in = rank
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))
            A = A.T.contiguous()
        self.lora_A = nn.Parameter(A)  # (rank, in)
        self.lora_B = nn.Parameter(
            torch.zeros(base.out_features, rank, device=base.weight.device, dtype=base.weight.dtype)
        )

    def forward(self, x: Tensor) -> Tensor:  # x: (..., in)
        update = F.linear(F.linear(x, self.lora_A), self.lora_B)  # (..., rank) -> (..., out)
        return F.linear(x, self.weight, self.bias) + self.scale * update

    def merged(self) -> nn.Linear:
        """A plain nn.Linear computing the same function: W + scale·B·A."""
        linear = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        with torch.no_grad():
            linear.weight.copy_(self.weight + self.scale * (self.lora_B @ self.lora_A))  # (out, in)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear


def _matches(target: str, name: str) -> bool:
    if target == "qkv":
        return fnmatch(name, "blocks.*.attention.*") and not name.endswith(".out_proj")
    if target == "out_proj":
        return fnmatch(name, "blocks.*.attention.out_proj")
    if target == "ffn":
        return fnmatch(name, "blocks.*.feed_forward.*")
    return fnmatch(name, target)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def apply_lora(model: nn.Module, settings: LoRASettings) -> list[str]:
    """Wrap every nn.Linear whose name a target matches; returns the wrapped names.

    A target that matches no linear layer is an error naming the layers there are.
    """
    linears = [
        (name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and not isinstance(m, LoRALinear)
    ]
    for target in settings.targets:
        if not any(_matches(target, name) for name, _ in linears):
            shown = ", ".join(name for name, _ in linears[:8]) + (", ..." if len(linears) > 8 else "")
            raise GptzooError(
                f"--lora-targets: '{target}' matches no linear layer; use {', '.join(TARGET_GROUPS)} "
                f"or a glob over the model's linear layers ({shown})"
            )
    wrapped = []
    for name, linear in linears:
        if any(_matches(target, name) for target in settings.targets):
            _replace(model, name, LoRALinear(linear, settings.rank, settings.alpha, settings.convention))
            wrapped.append(name)
    return wrapped


def lora_state(model: nn.Module) -> dict[str, Tensor]:
    """The adapter alone: every lora_A and lora_B by its full name."""
    return {
        name: t.detach().contiguous().cpu()
        for name, t in model.state_dict().items()
        if name.endswith((".lora_A", ".lora_B"))
    }


def merge_lora(model: nn.Module) -> int:
    """Fold every adapter into its layer (in place); returns how many were merged."""
    wrapped = [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name, module in wrapped:
        _replace(model, name, module.merged())
    return len(wrapped)
