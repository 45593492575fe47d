"""gptzoo ablate: train every variant of a sweep over its seeds and compare them in one table."""

import argparse
import contextlib
from pathlib import Path

from gptzoo.core import GptzooError
from gptzoo.recipes.research.sweep import (
    CURVES_PNG,
    EXTRAPOLATION_PNG,
    MEASUREMENTS_CSV,
    MEASUREMENTS_MD,
    RESULTS_CSV,
    RESULTS_MD,
    RUNS,
    SCALING_PNG,
    SWEEP,
    load_sweep,
    run_sweep,
)
from gptzoo.recipes.runs._lock import LOCK, OWNER, run_writer
from gptzoo.recipes.runs.files import check_out_folder

HELP = "train the variants of a sweep file (base config × axes × seeds) fairly and compare them"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sweep",
        metavar="SWEEP.toml",
        help="a sweep file: base config, axes to vary, seeds; or a shipped one by name (ablations/attention: gptzoo presets)",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="folder for the results and one run folder per (variant, seed); rerun to resume",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="runs in parallel, each in its own process with cores / N threads (default 1)",
    )
    parser.add_argument(
        "--executor",
        choices=("pool", "ray"),
        default="pool",
        help="pool: --workers processes on this machine (default); ray: one Ray task per run, with the sweep's "
        "[resources] (pip install 'gptzoo[ray]'; --out must be storage every node sees)",
    )
    parser.add_argument(
        "--address",
        metavar="ADDR",
        help="with --executor ray: the cluster's address (default: RAY_ADDRESS, else a local Ray started for the sweep)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=None,
        metavar="N",
        help="with --executor ray: times a run lost with its worker or node is run again, resuming from its checkpoint (default 3)",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise GptzooError(f"--workers {args.workers}: give 1 or more")
    if args.executor != "ray" and args.address is not None:
        raise GptzooError(f"--address {args.address}: only with --executor ray")
    if args.executor != "ray" and args.retries is not None:
        raise GptzooError(f"--retries {args.retries}: only with --executor ray (the process pool does not retry)")
    retries = 3 if args.retries is None else args.retries
    executor = None
    if args.executor == "ray":
        if retries < 0:
            raise GptzooError(f"--retries {retries}: give 0 or more")
        from gptzoo.recipes.research.sweep.ray_executor import import_ray

        import_ray()  # before any work: says how to install Ray
    sweep = load_sweep(args.sweep)  # every variant is validated here, before anything trains
    runs = len(sweep.variants) * len(sweep.seeds)
    print(f"{args.sweep}: {len(sweep.variants)} variants × {len(sweep.seeds)} seeds = {runs} runs into {args.out}")
    out = Path(args.out)
    check_out_folder(out)
    if args.executor == "ray":
        from gptzoo.recipes.research.sweep.ray_executor import RayExecutor, Resources

        asked = sweep.resources
        executor = RayExecutor(
            args.address,
            Resources(asked.cpus, asked.gpus),
            {slug: Resources(r.cpus, r.gpus) for slug, r in asked.variants.items()},
            retries,
        )
    foreign = out.is_dir() and not (out / SWEEP).exists() and any(p.name not in (LOCK, OWNER) for p in out.iterdir())
    with (
        contextlib.nullcontext() if foreign else run_writer(out)
    ):  # one sweep per folder at a time; a foreign folder is refused unlocked
        results = run_sweep(sweep, out, workers=args.workers, progress=args.progress, executor=executor)
    print()
    print((out / RESULTS_MD).read_text(encoding="utf-8"))
    print((out / MEASUREMENTS_MD).read_text(encoding="utf-8"))
    plots = (
        f"{out / CURVES_PNG}"
        + (f", {out / EXTRAPOLATION_PNG}" if sweep.extrapolate else "")
        + (f", {out / SCALING_PNG}" if sweep.sizes else "")
    )
    print(
        f"wrote {out / RESULTS_CSV}, {out / RESULTS_MD}, {out / MEASUREMENTS_CSV}, {out / MEASUREMENTS_MD}, {plots} and {out / RUNS}/"
    )
    failed = [r for r in results if r.status == "failed"]
    if failed:
        print(f"{len(failed)} of {len(results)} runs failed; rerun the same command to retry them")
    return 1 if failed else 0
