"""One row of activations times each matrix a decoding step multiplies, per weight storage and layout.

    python benchmarks/products.py [--shapes small,gpt2-124m] [--reps 7] [--threads N] [--out products.json]

A decoding step at batch 1 is a chain of such products, so their rate bounds its speed. For each
shape, two sets of matrices: the head (vocabulary × d_model) and one copy of every layer's four
matrices per layer of the shape (d_model → 3·d_model, d_model → d_model, d_model → 4·d_model,
4·d_model → d_model). Every storage of a set is held at once and each call reads its whole set, so
what one call read is mostly gone from the processor's caches when its turn comes again (a set
smaller than the last-level cache may still be read partly from it: the copy of the same bytes,
timed with them, shows where). Each set is multiplied as:

- ``fp32 (N, K)``: ``F.linear(x, w)`` on the matrix as ``nn.Linear`` keeps it: N dot products of K numbers;
- ``fp32 (K, N)``: the same product on every matrix stored transposed: the K rows of N numbers scaled and summed;
- ``fp32``: as ``--weight-storage fp32`` keeps them, each matrix in the layout of its longer rows ((K, N)
  where N ≥ K, else (N, K));
- ``bf16 (N, K)``: torch's product of bf16 activations and the plain bf16 matrix;
- ``bf16``: as ``--weight-storage bf16`` multiplies them: packed into oneDNN's blocked layout and
  multiplied by oneDNN where it multiplies bf16 natively (the JSON's ``machine`` says whether the
  processor does), else as ``bf16 (N, K)``;
- ``int8``: ``aten._weight_int8pack_mm`` on int8 rows with bf16 scales (``--weight-storage int8``);
- ``int4``: ``aten._weight_int4pack_mm_for_cpu`` on 4-bit codes with a bf16 scale and zero point per group
  of 32 numbers (``--weight-storage int4``);
- ``copy``: a copy between two arrays of the set's fp32 bytes, for the machine's rate at the same moments.

Everything is timed in turns in one process (one repetition of each, the order reversed every other
repetition; medians). ``gb_per_s`` is the bytes stored (weights as kept, scales included) over the time:
a product at the memory's rate reads its bytes as fast as the copy moves them, so a storage that keeps
fewer bytes is faster in proportion only if its rate stays the copy's.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from bench import SHAPES  # noqa: E402
from machine import describe  # noqa: E402
from turns import in_turns  # noqa: E402

from gptzoo.recipes.generation.stored_weights import StoredLinear  # noqa: E402


def matrices(shape: dict, which: str) -> list[torch.Tensor]:
    """The (N, K) matrices of ``which`` ("head" or "layers") at ``shape``, random fp32."""
    d = shape["d_model"]
    if which == "head":
        return [torch.randn(shape["vocab_size"], d)]
    return [
        torch.randn(n, k) for _ in range(shape["n_layers"]) for n, k in ((3 * d, d), (d, d), (4 * d, d), (d, 4 * d))
    ]


def stored_bytes(module: StoredLinear) -> int:
    return sum(t.numel() * t.element_size() for t in module.buffers())


def product_calls(weights: list[torch.Tensor]) -> dict[str, tuple[Callable[[], object], int]]:
    """name -> (the products of one row with every matrix, the bytes they read)."""
    rows = {k: torch.randn(1, k) for k in {w.shape[1] for w in weights}}
    transposed = [w.T.contiguous() for w in weights]  # (K, N)
    bf16, bf16_rows = [w.bfloat16() for w in weights], {k: r.bfloat16() for k, r in rows.items()}
    fp32_bytes = sum(w.numel() * 4 for w in weights)
    out: dict[str, tuple[Callable[[], object], int]] = {
        "fp32 (N, K)": (lambda: [F.linear(rows[w.shape[1]], w) for w in weights], fp32_bytes),
        "fp32 (K, N)": (lambda: [rows[t.shape[0]] @ t for t in transposed], fp32_bytes),
        "bf16 (N, K)": (lambda: [F.linear(bf16_rows[w.shape[1]], w) for w in bf16], fp32_bytes // 2),
    }
    for name, storage in (("fp32", "fp32"), ("bf16", "bf16"), ("int8", "int8"), ("int4", "int4")):
        stored = [StoredLinear(w, None, storage) for w in weights]  # type: ignore[arg-type]
        out[name] = (lambda s=stored: [m(rows[m.in_features]) for m in s], sum(stored_bytes(m) for m in stored))
    a = torch.ones(sum(w.numel() for w in weights))
    b = torch.empty_like(a)
    out["copy"] = (lambda: b.copy_(a), 2 * a.numel() * 4)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="small,gpt2-124m", help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="products.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for shape_name in args.shapes.split(","):
        for which in ("head", "layers"):
            calls = product_calls(matrices(SHAPES[shape_name], which))
            with torch.inference_mode():
                seconds = in_turns({name: call for name, (call, _) in calls.items()}, args.reps).seconds
            for name, (_, n_bytes) in calls.items():
                row = {"shape": shape_name, "matrices": which, "product": name, "ms": 1e3 * seconds[name],
                       "bytes": n_bytes, "gb_per_s": n_bytes / seconds[name] / 1e9}  # fmt: skip
                rows.append(row)
                print(json.dumps(row))
    meta = {"machine": describe()}
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
