"""gptzoo gradients: the mean absolute gradient reaching each layer of an untrained model on one
text, for the config and for variants of it (the book's section 4.4: with and without shortcut
connections, the gradients of the early layers vanish)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from gptzoo.core import GPT, GptzooError
from gptzoo.recipes.config.schema import load_run_config
from gptzoo.recipes.data.tokens import leading_ids
from gptzoo.recipes.training.models import untrained_model

HELP = "print (and plot) the mean absolute gradient per layer of an untrained model, for a config and variants of it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="a TOML config or a preset name (gptzoo presets), or a run folder's config")
    parser.add_argument("--text", required=True, help="the text whose next-token loss is differentiated")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value for every variant (repeatable)",
    )
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a variant: the config with this override (repeatable; e.g. model.block.name=no_shortcut)",
    )
    parser.add_argument(
        "--plot", metavar="PNG", help="also draw the gradients per layer, one line per variant (needs matplotlib)"
    )


def layer_gradients(model: GPT, ids: list[int]) -> list[float]:
    """Mean |gradient| over the weight matrices of each block, after one backward pass of the
    next-token loss on ``ids`` (dropout off). Index 0 is the block nearest the input."""
    model.eval()
    model.zero_grad(set_to_none=True)
    tokens = torch.tensor([ids])
    logits = model(tokens[:, :-1])  # (1, T, V)
    F.cross_entropy(logits.flatten(0, 1), tokens[0, 1:]).backward()
    means = []
    for block in model.blocks:
        grads = [p.grad.abs().flatten() for p in block.parameters() if p.dim() >= 2 and p.grad is not None]
        means.append(torch.cat(grads).mean().item() if grads else 0.0)
    return means


def run(args: argparse.Namespace) -> int:
    if args.plot:
        plot_file = Path(args.plot)
        if plot_file.is_dir() or not plot_file.suffix:
            raise GptzooError(f"--plot {plot_file}: give a file name with its format's suffix, e.g. layers.png")
        under = next(parent for parent in plot_file.parents if parent.exists())
        if not under.is_dir():
            raise GptzooError(f"--plot {plot_file} lies under {under}, which is a file; choose another path")
    variants = [(Path(args.config).stem, [])] + [(override, [override]) for override in args.compare]
    results = {}
    for label, extra in variants:
        config = load_run_config(args.config, [*args.overrides, *extra])
        model, tokenizer = untrained_model(config)
        ids = leading_ids(tokenizer, args.text, config.model.context_length + 1)  # not all of a huge text
        if len(ids) < 2:
            raise GptzooError(f"--text {args.text!r} is {len(ids)} token(s); give at least two")
        results[label] = layer_gradients(model, ids)
    n_layers = max(len(means) for means in results.values())
    width = max(12, *(len(label) for label in results))
    print("mean |gradient| of each block's weight matrices, one backward pass of the untrained model")
    print(f"{'layer':>5}  " + "  ".join(f"{label:>{width}}" for label in results))
    for layer in range(n_layers):
        row = [f"{means[layer]:>{width}.3e}" if layer < len(means) else " " * width for means in results.values()]
        print(f"{layer:>5}  " + "  ".join(row))
    if args.plot:
        plot(results, Path(args.plot))
        print(f"plotted to {args.plot}")
    return 0


def plot(results: dict[str, list[float]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise GptzooError("--plot needs matplotlib: pip install 'gptzoo[plots]'") from None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, means in results.items():
        ax.plot(range(len(means)), means, marker="o", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("layer (block index, input side first)")
    ax.set_ylabel("mean |gradient|")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
