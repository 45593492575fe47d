"""Hyper-connections against the plain residual stream: training and greedy decoding, in turns in one process.

    python benchmarks/residual.py [--streams 4] [--reps 5] [--threads N] [--out residual-bench.json]

The same GPT-2-style model (ab.py's shapes) with ``residual = "plain"``, with
``residual = { name = "hyper", n_streams = n }``, static and dynamic, and with ``"mhc"``, timed as ab.py times a
revision against the working tree: training steps (forward, backward, AdamW) and greedy KV-cache
decoding, one repetition of each case in turn, the order reversed every other repetition, so a
change in the machine's load falls on all alike. Ratios are case / plain (below 1: slower).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from ab import SHAPES, build, decode_timer, train_timer
from turns import measured_in_turns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--train-shape", default="small", choices=list(SHAPES))
    parser.add_argument("--decode-shape", default="tiny", choices=list(SHAPES))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = {
        "plain": "plain",
        f"hyper n={args.streams} static": {"name": "hyper", "n_streams": args.streams, "dynamic": False},
        f"hyper n={args.streams} dynamic": {"name": "hyper", "n_streams": args.streams, "dynamic": True},
        f"mhc n={args.streams}": {"name": "mhc", "n_streams": args.streams},
    }
    results = {}
    shape = SHAPES[args.train_shape]
    results[f"train {args.train_shape} batch {args.batch} (tokens/s)"] = measured_in_turns(
        {case: train_timer(build("gptzoo", {**shape, "residual": r}), shape, args.batch) for case, r in cases.items()},
        args.reps,
        args.warmup,
    )
    shape = SHAPES[args.decode_shape]
    new = min(64, shape["context_length"] - 16)
    results[f"greedy decode {args.decode_shape}, {new} after 16, KV cache (tokens/s)"] = measured_in_turns(
        {case: decode_timer(build("gptzoo", {**shape, "residual": r}), 16, new) for case, r in cases.items()},
        args.reps,
        args.warmup,
    )
    print(f"{'case':<55} {'residual':<22} {'tokens/s':>10} {'/ plain':>8}")
    for case, r in results.items():
        for name, value in r.items():
            print(f"{case:<55} {name:<22} {value:>10,.0f} {value / r['plain']:>8.3f}")
    if args.out:
        Path(args.out).write_text(
            json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "results": results}, indent=2)
        )


if __name__ == "__main__":
    main()
