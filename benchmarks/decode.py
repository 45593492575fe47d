"""Greedy decoding on a CPU against the memory-bandwidth bound, in one process.

    python benchmarks/decode.py [--shapes small,gpt2-124m] [--storages fp32,bf16,int8] [--compiled fp32]
                                [--new-tokens 64] [--reps 5] [--threads N] [--out decode-bench.json]

Batch 1, a 16-token prompt, ``--new-tokens`` greedy tokens; the time per token is the whole
call (prefill included) over the new tokens, as the measurements in docs/design/performance.md
take it. Cases of one shape are timed in turns (the order reversed every other repetition) so a
change in the machine's load falls on all alike; figures are medians.

- ``gptzoo-<storage>``: gptzoo's GPT-2 assembly (``generate_ids``, KV cache) with its weights
  stored as fp32, bf16 or int8 (``--weight-storage``);
- ``gptzoo-<storage>-compiled``, for each storage in ``--compiled``: the same through a static cache
  and one compiled step (``generate --compile``); its warm-up call compiles, so the times are
  the steady state, not the first call's seconds of compiling. Its layers read every slot of
  the preallocated cache, so its KV bytes are the whole text's, not the mean length's;
- ``transformers``: GPT2LMHeadModel's ``generate`` on the same shape (sdpa).

The book's KV-cache GPT-2 is not a row: the book package's ``llms_from_scratch.kv_cache.gpt2``
(1.0.19) cannot decode after its prompt (its causal mask is sliced by columns where rows are
meant, so the first cached step raises a shape error); the project's own book-parity tests
use the chapter's plain loop instead.

The bound: this machine's memory bandwidth is measured in the same run, timed in turns with each
shape's calls (a stream-like copy of two arrays far larger than the caches: bytes read plus bytes
written over the time; its median), and each
row's bytes per token (every weight a decoding step multiplies, in its stored form, plus the
KV cache read at the mean length) divided by it gives the fastest a step could be. ``of_bound``
is the measured time over that: 1.0 is at the bound.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from bench import SHAPES, build  # noqa: E402

from gptzoo.recipes.generation.generate import generate_ids  # noqa: E402
from gptzoo.recipes.generation.stored_weights import StoredEmbedding, StoredHead, store_weights  # noqa: E402

PROMPT = 16


def copy_call(megabytes: int = 512, copies: int = 4) -> tuple[Callable[[], None], int]:
    """A stream-like copy between two arrays of ``megabytes`` each, ``copies`` times, and the bytes it moves
    (read + write): timed in turns with the decoding calls, it gives the bandwidth of the same moments."""
    a = torch.ones(megabytes * 2**20 // 4)
    b = torch.empty_like(a)

    def call() -> None:
        for _ in range(copies):
            b.copy_(a)

    return call, copies * 2 * a.numel() * 4


def bytes_per_token(model: nn.Module, shape: dict, new_tokens: int, static: bool = False) -> int:
    """What one greedy step of gptzoo's GPT reads: every matrix it multiplies, in its stored form, the other
    weights used whole (norms, biases), one row of each lookup table, and the KV cache at the mean length
    (``static``: at the whole text's, every preallocated slot)."""
    head = model.head.matrix if isinstance(model.head, StoredHead) else model.head
    looked_up = set()  # tensors only looked up a row at a time: tables the head does not multiply by
    for module in model.modules():
        if isinstance(module, nn.Embedding) and module.weight is not getattr(head, "weight", None):
            looked_up.add(id(module.weight))
        if isinstance(module, StoredEmbedding) and module.matrix is not head:
            looked_up |= {id(module.matrix.stored), id(module.matrix.scale)}
    total, seen = 0, set()
    for module in model.modules():
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            n_bytes = tensor.numel() * tensor.element_size()
            total += n_bytes // tensor.shape[0] if id(tensor) in looked_up else n_bytes  # a lookup reads one row
    kv_length = PROMPT + new_tokens if static else PROMPT + new_tokens / 2
    return total + 2 * shape["n_layers"] * shape["d_model"] * int(kv_length) * 4


def cases(
    shape: dict, storages: list[str], new_tokens: int, compiled: list[str]
) -> dict[str, tuple[Callable[[], None], int]]:
    """name -> (one greedy call, bytes per token); the storages in ``compiled`` also through the compiled step."""
    torch.manual_seed(0)
    prompt = torch.randint(0, shape["vocab_size"], (1, PROMPT))
    out: dict[str, tuple[Callable[[], None], int]] = {}
    for storage in storages:
        torch.manual_seed(0)
        model = store_weights(build("gptzoo-sdpa", shape).eval(), storage)  # type: ignore[arg-type]
        out[f"gptzoo-{storage}"] = (
            lambda m=model: generate_ids(m, [prompt[0].tolist()], new_tokens),
            bytes_per_token(model, shape, new_tokens),
        )
        if storage in compiled:
            out[f"gptzoo-{storage}-compiled"] = (
                lambda m=model: generate_ids(m, [prompt[0].tolist()], new_tokens, compiled=True),
                bytes_per_token(model, shape, new_tokens, static=True),
            )
    fp32_bytes = out["gptzoo-fp32"][1] if "gptzoo-fp32" in out else 0
    hf = build("transformers", shape).eval()
    out["transformers"] = (
        lambda: hf.generate(
            prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0
        ),
        fp32_bytes,
    )
    return out


def in_turns(calls: dict[str, Callable[[], None]], reps: int) -> dict[str, float]:
    """Median seconds of each call, one repetition of each in turn, the order reversed every other repetition."""
    with torch.inference_mode():
        for call in calls.values():
            call()  # warm-up
        times: dict[str, list[float]] = {name: [] for name in calls}
        for rep in range(reps):
            for name in list(calls)[:: 1 if rep % 2 == 0 else -1]:
                start = time.perf_counter()
                calls[name]()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="small,gpt2-124m", help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--storages", default="fp32,bf16,int8")
    parser.add_argument("--compiled", default="fp32", help="storages also timed compiled (generate --compile)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="decode-bench.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for shape_name in args.shapes.split(","):
        shape = dict(
            SHAPES[shape_name], context_length=max(SHAPES[shape_name]["context_length"], PROMPT + args.new_tokens)
        )
        made = cases(shape, args.storages.split(","), args.new_tokens, args.compiled.split(","))
        copy, copied = copy_call()
        seconds = in_turns({name: call for name, (call, _) in made.items()} | {"copy": copy}, args.reps)
        bytes_per_s = copied / seconds["copy"]
        for name, (_, n_bytes) in made.items():
            rows.append({"shape": shape_name, "impl": name, "ms_per_token": 1e3 * seconds[name] / args.new_tokens,
                         "bytes_per_token": n_bytes, "bandwidth_gb_per_s": bytes_per_s / 1e9})  # fmt: skip
    for row in rows:
        bound_ms = row["bytes_per_token"] / row["bandwidth_gb_per_s"] / 1e6
        reference = next(r for r in rows if r["shape"] == row["shape"] and r["impl"] == "transformers")
        row |= {
            "bound_ms": bound_ms,
            "of_bound": row["ms_per_token"] / bound_ms if bound_ms else None,
            "vs_transformers": reference["ms_per_token"] / row["ms_per_token"],
        }
        print(json.dumps(row))
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "new_tokens": args.new_tokens,
        "reps": args.reps,
        "load": f"two cores shared with other jobs: load average {', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end",
    }
    print(json.dumps(meta))
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
