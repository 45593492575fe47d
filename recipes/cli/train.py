"""gptzoo train: train a config into a run folder, or continue the run there with --resume."""

import argparse

from gptzoo.core import ConfigError
from gptzoo.recipes.config.schema import load_run_config
from gptzoo.recipes.training import distributed
from gptzoo.recipes.training.loop import train

HELP = "train a config into a run folder (checkpoints and metrics.jsonl there); --resume continues it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", help="a TOML config or a preset name (gptzoo presets), or a run folder to reuse its config.json"
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="the run folder; must not hold a run unless --resume is given"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. train.max_steps=500 (repeatable)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint in DIR ([train] may change, e.g. more steps; model and data may not)",
    )
    parser.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="train on N processes of this machine (one per GPU) under torchrun; train.batch_size is per process",
    )


def run(args: argparse.Namespace) -> int:
    config = load_run_config(args.config, args.overrides)  # a bad config fails here, before any process starts
    if args.nproc < 1:
        raise ConfigError(f"--nproc {args.nproc}: give a number of processes of at least 1")
    if args.nproc > 1:
        train_args = [
            args.config,
            "--out",
            args.out,
            *(arg for override in args.overrides for arg in ("--set", override)),
        ]
        return distributed.launch(train_args + (["--resume"] if args.resume else []), args.nproc)
    with distributed.process_group(config.train.device) as world:
        summary = train(config, args.out, resume=args.resume)
    if world.is_main:
        val = f"{summary.final_val_loss:.4f}" if summary.final_val_loss is not None else "not measured"
        print(
            f"{summary.out}: {summary.stopped} after {summary.steps} steps, {summary.tokens:,} tokens; "
            f"val loss {val}, {summary.tokens_per_s:,.0f} tokens/s, {summary.wall_s:.1f} s"
        )
    return 130 if summary.stopped == "interrupted" else 0
