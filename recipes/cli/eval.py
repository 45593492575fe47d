"""gptzoo eval: a run's loss and perplexity on a text, or on its own validation split (corpus or
task); with --context, per token position at other lengths (length extrapolation)."""

import argparse
import math

import torch

from gptzoo.core import GptzooError
from gptzoo.recipes.cli.generate import add_weight_storage_argument
from gptzoo.recipes.data.tokens import TokenWindows, load_splits, load_tokens
from gptzoo.recipes.generation.stored_weights import store_weights
from gptzoo.recipes.research.extrapolate import extrapolate, write_report
from gptzoo.recipes.runs.folder import load_run
from gptzoo.recipes.training.devices import resolve_device
from gptzoo.recipes.training.evaluation import estimate_metrics

HELP = "print a run's loss and perplexity (a task's answer accuracy) on a text or its validation split, at its context or longer ones; gptzoo evaluate runs lm-evaluation-harness benchmarks"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="DIR", help="a run folder (from gptzoo train)")
    parser.add_argument(
        "--data",
        metavar="PATH",
        help="a corpus: a text, .jsonl or .parquet file, a folder of them, or builtin:pydoc (default: the run's own validation split)",
    )
    parser.add_argument(
        "--context", type=int, nargs="+", metavar="N",
        help="score in windows of N tokens (several allowed, e.g. 64 128 256) and write the loss and accuracy per position to DIR/extrapolation.json and .png",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    parser.add_argument(
        "--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, ... (default auto)"
    )
    add_weight_storage_argument(parser)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise GptzooError(f"--batch-size {args.batch_size}: give at least 1")
    device = resolve_device(args.device, "--device")
    trained = load_run(args.run, device=device)
    store_weights(trained.model, args.weight_storage)
    config = trained.config
    with torch.inference_mode():
        probe = trained.model.head(torch.zeros(1, 1, config.model.d_model, device=device))
    if probe.dim() != 3:  # a classifier's head gives one score per label, not a next token per position
        raise GptzooError(
            f"{args.run}: its '{config.model.head.name}' head does not predict tokens, so it has no language-model loss to evaluate; gptzoo classify runs it"
        )
    if args.data is not None and config.data.task is not None:
        raise GptzooError(
            f"--data {args.data}: {args.run} was trained on the '{config.data.task.name}' task, whose ids are no text; leave --data out to score its validation split"
        )
    if args.context:
        if args.weight_storage != "fp32":
            raise GptzooError(
                f"--weight-storage {args.weight_storage} scores the run's own context; leave it out with --context"
            )
        bad = [n for n in args.context if n < 1]
        if bad:
            raise GptzooError(f"--context {bad[0]}: give lengths of 1 token or more")
        results = extrapolate(
            config, trained.folder, trained.tokenizer, args.context, device, args.data, args.batch_size
        )
        json_path, png_path = write_report(trained.folder, config, results, args.data)
        print(f"{'context':>8} {'windows':>8} {'loss':>8} {'accuracy':>9}   (trained at {config.model.context_length})")
        for r in results:
            print(f"{r['context']:>8} {r['windows']:>8} {r['loss']:>8.4f} {r['accuracy']:>9.4f}")
        print(f"wrote {json_path}" + (f" and {png_path}" if png_path else " (install the plots extra for the plot)"))
        return 0
    if args.data is None:
        windows = load_splits(config.data, trained.tokenizer, config.model.context_length, progress=True)[1]
        what = f"{args.run}: validation split ({windows.describe()})"
    else:
        tokens = load_tokens(config.data.model_copy(update={"source": args.data}), trained.tokenizer, progress=True)
        if len(tokens) < 2:
            raise GptzooError(f"{args.data}: only {len(tokens)} token; a loss needs at least 2")
        # Non-overlapping windows of the model's context; a tail shorter than one window is left out.
        context = min(config.model.context_length, len(tokens) - 1)
        windows = TokenWindows(tokens, context, context)
        what = f"{args.data}: {len(windows) * context:,} tokens scored"
    n_batches = math.ceil(len(windows) / args.batch_size)
    loss, accuracy = estimate_metrics(
        trained.model, windows, n_batches, args.batch_size, device, config.train.dtype, progress=True
    )
    scores = f"answer accuracy {accuracy:.4f}" if config.data.task is not None else f"perplexity {math.exp(loss):.2f}"
    print(f"{what}, loss {loss:.4f}, {scores}")
    return 0
