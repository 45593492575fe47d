"""gptzoo eval: a run's loss and perplexity on a text."""

import argparse
import math

from gptzoo.core import GptzooError
from gptzoo.recipes.data import TokenWindows, load_tokens
from gptzoo.recipes.run import load_run
from gptzoo.recipes.train import estimate_loss, resolve_device

HELP = "print a run's loss and perplexity on a text file or folder of .txt files"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="DIR", help="a run folder (from gptzoo train)")
    parser.add_argument("--data", required=True, metavar="PATH", help="a text file, a folder of .txt files, or builtin:pydoc")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, ... (default auto)")


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    trained = load_run(args.run, device=device)
    data = trained.config.data.model_copy(update={"source": args.data})
    tokens = load_tokens(data, trained.tokenizer, progress=True)
    if len(tokens) < 2:
        raise GptzooError(f"{args.data}: only {len(tokens)} token; a loss needs at least 2")
    # Non-overlapping windows of the model's context; a tail shorter than one window is left out.
    context = min(trained.config.model.context_length, len(tokens) - 1)
    windows = TokenWindows(tokens, context, context)
    n_batches = math.ceil(len(windows) / args.batch_size)
    loss = estimate_loss(trained.model, windows, n_batches, args.batch_size, device, trained.config.train.dtype, progress=True)
    print(f"{args.data}: {len(windows) * context:,} tokens scored, loss {loss:.4f}, perplexity {math.exp(loss):.2f}")
    return 0
