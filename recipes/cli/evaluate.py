"""gptzoo evaluate: benchmark scores from EleutherAI's lm-evaluation-harness (the eval extra)."""

import argparse

from gptzoo.core import GptzooError
from gptzoo.recipes.research.benchmarks import RESULTS, evaluate_run, lm_eval
from gptzoo.recipes.runs.folder import load_config
from gptzoo.recipes.training.devices import resolve_device

HELP = (
    "benchmark a run with lm-evaluation-harness tasks (pip install 'gptzoo[eval]'); "
    "gptzoo eval is the run's own loss and perplexity"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="DIR", help="a run folder (from gptzoo train)")
    parser.add_argument(
        "--tasks", required=True, metavar="T1,T2", help="the harness's task names, comma-separated (e.g. hellaswag)"
    )
    parser.add_argument("--num-fewshot", type=int, default=None, metavar="K", help="examples in each prompt")
    parser.add_argument(
        "--limit", type=int, default=None, metavar="N", help="score only the first N documents of each task"
    )
    parser.add_argument(
        "--include-path", metavar="DIR", help="a folder of your own task YAML files, as the harness names the option"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default 8)")
    parser.add_argument(
        "--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, ... (default auto)"
    )


def run(args: argparse.Namespace) -> int:
    tasks = [task.strip() for task in args.tasks.split(",") if task.strip()]
    if not tasks:
        raise GptzooError(f"--tasks {args.tasks!r}: name at least one task")
    for flag, value in (
        ("--num-fewshot", args.num_fewshot),
        ("--limit", args.limit),
        ("--batch-size", args.batch_size),
    ):
        if value is not None and value < (0 if flag == "--num-fewshot" else 1):
            raise GptzooError(f"{flag} {value}: give {'0 or more' if flag == '--num-fewshot' else 'at least 1'}")
    device = resolve_device(args.device, "--device")
    load_config(args.run)  # a folder that is not a run is refused before the harness is asked for
    lm_eval()
    _, table = evaluate_run(
        args.run, tasks, args.num_fewshot, args.limit, args.include_path, args.batch_size, str(device)
    )
    print(table)
    print(f"wrote {args.run}/{RESULTS}")
    return 0
