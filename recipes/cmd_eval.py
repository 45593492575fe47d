"""gptzoo eval: a run's loss and perplexity on a text, or on its own validation split (corpus or task)."""

import argparse
import math

from gptzoo.core import GptzooError
from gptzoo.recipes.data import TokenWindows, load_splits, load_tokens
from gptzoo.recipes.run import load_run
from gptzoo.recipes.train import estimate_metrics, resolve_device

HELP = "print a run's loss and perplexity (a task's answer accuracy) on a text, or on its validation split"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="DIR", help="a run folder (from gptzoo train)")
    parser.add_argument("--data", metavar="PATH", help="a text file, a folder of .txt files, or builtin:pydoc (default: the run's own validation split)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, ... (default auto)")


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    trained = load_run(args.run, device=device)
    config = trained.config
    if args.data is None:
        windows = load_splits(config.data, trained.tokenizer, config.model.context_length, progress=True)[1]
        what = f"{args.run}: validation split ({windows.describe()})"
    else:
        if config.data.task is not None:
            raise GptzooError(f"--data {args.data}: {args.run} was trained on the '{config.data.task.name}' task, whose ids are no text; leave --data out to score its validation split")
        tokens = load_tokens(config.data.model_copy(update={"source": args.data}), trained.tokenizer, progress=True)
        if len(tokens) < 2:
            raise GptzooError(f"{args.data}: only {len(tokens)} token; a loss needs at least 2")
        # Non-overlapping windows of the model's context; a tail shorter than one window is left out.
        context = min(config.model.context_length, len(tokens) - 1)
        windows = TokenWindows(tokens, context, context)
        what = f"{args.data}: {len(windows) * context:,} tokens scored"
    n_batches = math.ceil(len(windows) / args.batch_size)
    loss, accuracy = estimate_metrics(trained.model, windows, n_batches, args.batch_size, device, config.train.dtype, progress=True)
    scores = f"answer accuracy {accuracy:.4f}" if config.data.task is not None else f"perplexity {math.exp(loss):.2f}"
    print(f"{what}, loss {loss:.4f}, {scores}")
    return 0
