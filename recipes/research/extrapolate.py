"""Length extrapolation: score a run at contexts longer than the one it trained on, per token position.

The model is rebuilt at the longer context (tables that positions compute, such as RoPE's and the
sinusoidal one, are buffers recomputed for it) and its trained weights loaded. A positional scheme
that declares a ``length_limit`` (a learned table has no vectors past its trained length) is refused
with that reason. A corpus is scored in non-overlapping windows of each length over its validation
split; a task on validation examples generated at that length.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gptzoo.core import GPT, GptzooError, Tokenizer
from gptzoo.recipes.config.schema import RunConfig
from gptzoo.recipes.data.tokens import TokenWindows, load_tokens, split_windows, spread_indices
from gptzoo.recipes.research.tasks import IGNORE, TaskExamples
from gptzoo.recipes.runs.files import WEIGHTS, save_png, write_text_atomic
from gptzoo.recipes.runs.weights import load_weights

EXTRAPOLATION_JSON = "extrapolation.json"
EXTRAPOLATION_PNG = "extrapolation.png"
MAX_WINDOWS = 256  # windows (or task examples) scored per context, spread over the split


class LengthLimitError(GptzooError):
    """The run's positional scheme cannot go past the context it trained on."""


def check_extrapolates(config: RunConfig, context: int) -> None:
    """Raise LengthLimitError, with the positional plugin's own reason, when ``context`` is beyond its reach."""
    positional = config.model.positional
    limit = positional.impl.length_limit
    if context > config.model.context_length and limit is not None:
        raise LengthLimitError(
            f"positional '{positional.name}' cannot score {context} tokens, past the trained context of {config.model.context_length}: {limit}"
        )


def model_at(config: RunConfig, folder: Path, context: int, device: torch.device) -> GPT:
    """The run's trained model rebuilt for ``context`` tokens; for a shorter one, as trained (its windows
    are simply shorter: a learned position table keeps the rows it was trained with)."""
    check_extrapolates(config, context)
    model = GPT(config.model.model_copy(update={"context_length": max(context, config.model.context_length)}))
    load_weights(model, folder / WEIGHTS)
    return model.to(device).eval()


def windows_at(
    config: RunConfig, tokenizer: Tokenizer, context: int, source: str | None = None
) -> TokenWindows | TaskExamples:
    """What to score at ``context``: a task's validation examples of that length, the validation split
    of the run's corpus in non-overlapping windows, or the whole of another text (``source``)."""
    data = config.data
    if data.task is not None:
        try:
            data.task.check(context)
        except ValueError as err:
            raise GptzooError(f"data.task '{data.task.name}' at context {context}: {err}") from None
        return TaskExamples(data.task, context, data.seed, "val")
    if source is not None:
        return TokenWindows(load_tokens(data.model_copy(update={"source": source}), tokenizer), context, context)
    return split_windows(load_tokens(data, tokenizer), context, data.model_copy(update={"stride": context}))[1]


@dataclass
class PositionScores:
    """Per position 0 .. context-1: summed loss, right answers and scored targets over the windows."""

    context: int
    windows: int
    loss: np.ndarray
    correct: np.ndarray
    count: np.ndarray

    def summary(self) -> dict:
        scored = self.count > 0
        total = int(self.count.sum())
        per_position = lambda values: [float(v) if ok else None for v, ok in zip(values, scored, strict=True)]  # noqa: E731
        return {
            "context": self.context,
            "windows": self.windows,
            "loss": float(self.loss.sum() / total),
            "accuracy": float(self.correct.sum() / total),
            "per_position": {
                "loss": per_position(self.loss / np.maximum(self.count, 1)),
                "accuracy": per_position(self.correct / np.maximum(self.count, 1)),
                "scored": self.count.astype(int).tolist(),
            },
        }


@torch.no_grad()
def score_positions(
    model: nn.Module,
    windows: TokenWindows | TaskExamples,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    max_windows: int = MAX_WINDOWS,
) -> PositionScores:
    indices = spread_indices(len(windows), max_windows)
    T = windows.context_length
    sums = torch.zeros(3, T, dtype=torch.float64, device=device)  # loss, right, scored per position
    for start in range(0, len(indices), batch_size):
        inputs, targets = windows.batch(indices[start : start + batch_size])  # (B, T) each
        inputs, targets = inputs.to(device), targets.to(device)
        logits = model(inputs).float()  # (B, T, V)
        loss = F.cross_entropy(
            logits.transpose(1, 2), targets, ignore_index=IGNORE, reduction="none"
        )  # (B, T), 0 where ignored
        scored = targets != IGNORE
        sums += torch.stack([loss.sum(0), (logits.argmax(-1) == targets).sum(0), scored.sum(0)]).double()
    loss, correct, count = sums.cpu().numpy()
    return PositionScores(T, len(indices), loss, correct, count)


def extrapolate(
    config: RunConfig,
    folder: Path,
    tokenizer: Tokenizer,
    contexts: list[int],
    device: torch.device | str = "cpu",
    source: str | None = None,
    batch_size: int = 8,
) -> list[dict]:
    """The summary of ``score_positions`` at each context, refusing (before scoring any) a context the positions cannot reach."""
    for context in contexts:
        check_extrapolates(config, context)
    results = []
    for context in contexts:
        model = model_at(config, folder, context, torch.device(device))
        windows = windows_at(config, tokenizer, context, source)
        if not len(windows):
            raise GptzooError(f"{source or config.data.source}: too short for one window of {context} tokens")
        results.append(score_positions(model, windows, batch_size, device).summary())
    return results


def write_report(
    folder: Path, config: RunConfig, results: list[dict], source: str | None = None
) -> tuple[Path, Path | None]:
    """extrapolation.json (and extrapolation.png when matplotlib is installed) in the run folder."""
    report = {
        "trained_context": config.model.context_length,
        "positional": config.model.positional.name,
        "data": source
        or (
            f"task {config.data.task.name}, validation split"
            if config.data.task
            else f"{config.data.source}, validation split"
        ),
        "metric": "accuracy on answers" if config.data.task else "loss",
        "contexts": results,
    }
    json_path = folder / EXTRAPOLATION_JSON
    write_text_atomic(json_path, json.dumps(report, indent=2) + "\n")
    try:
        plot(report, folder / EXTRAPOLATION_PNG)
    except ImportError:
        return json_path, None
    return json_path, folder / EXTRAPOLATION_PNG


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "accuracy" if report["metric"].startswith("accuracy") else "loss"
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for result in sorted(report["contexts"], key=lambda r: -r["context"]):
        values = result["per_position"][key]
        positions = [p for p, v in enumerate(values) if v is not None]
        ax.plot(
            positions,
            [values[p] for p in positions],
            linewidth=1.0,
            label=f"context {result['context']} ({result['windows']} windows)",
        )
    ax.axvline(
        report["trained_context"] - 1,
        color="black",
        linestyle="--",
        linewidth=1,
        label=f"trained context {report['trained_context']}",
    )
    ax.set_xlabel("token position")
    ax.set_ylabel(f"{key} (mean over windows)")
    ax.set_title(f"{report['positional']} positions: {key} per position, {report['data']}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_png(fig, path)
