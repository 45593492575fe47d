"""Before and after a change, in one process: gptzoo at a git revision against the working tree.

    python benchmarks/ab.py --against REV [--config configs/moe-style.toml] [--reps 5]

The revision's core, registry and plugins are extracted with ``git archive`` into a temporary
package ``gptzoo_at_rev`` (imports renamed), so both versions build the same config side by
side. Training steps (forward, backward, AdamW) and greedy KV-cache decoding are timed in turns,
so a change in the machine's load falls on both alike; ratios are now / then (above 1: faster now).
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from pathlib import Path

import torch
from turns import measured_in_turns

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {
    "small": dict(vocab_size=50257, context_length=256, d_model=256, n_layers=4, n_heads=4),
    "tiny": dict(vocab_size=512, context_length=128, d_model=64, n_layers=2, n_heads=4),
}
GPT2_PARTS = {
    "positional": "learned",
    "attention": "sdpa",
    "feed_forward": "gelu",
    "norm": "layernorm",
    "qkv_bias": True,
    "tied_head": True,
}


def package_at(rev: str, into: Path) -> str:
    """Extract core/registry/plugins at ``rev`` as the package gptzoo_at_rev; returns its name."""
    name = "gptzoo_at_rev"
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "core", "registry", "plugins"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into / name, filter="data")
    (into / name / "__init__.py").write_text("")
    for file in (into / name).rglob("*.py"):
        file.write_text(re.sub(r"gptzoo\.(core|registry|plugins)", rf"{name}.\1", file.read_text()))
    sys.path.insert(0, str(into))
    return name


def build(package: str, shape: dict, seed: int = 0):
    """A model of ``shape``: the GPT-2 parts at a size of SHAPES, or a config file's [model] table."""
    registry = importlib.import_module(f"{package}.registry").make_registry(entry_points=False)
    GPT = importlib.import_module(f"{package}.core").GPT
    torch.manual_seed(seed)
    return GPT(registry.model_config({**GPT2_PARTS, **shape, "tokenizer": "byte"}))


def config_shape(path: str) -> dict:
    """A config file's [model] table, its vocabulary size made explicit (its tokenizer is not built)."""
    model = dict(tomllib.loads(Path(path).read_text())["model"])
    tokenizer = model.pop("tokenizer", {})
    model.setdefault("vocab_size", tokenizer.get("vocab_size", 256) if isinstance(tokenizer, dict) else 256)
    return model


def train_timer(model, shape: dict, batch: int):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=False)
    idx = torch.randint(
        0, shape["vocab_size"], (batch, shape["context_length"] + 1), generator=torch.Generator().manual_seed(0)
    )

    def step() -> float:
        start = time.perf_counter()
        logits = model(idx[:, :-1])
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return batch * shape["context_length"] / (time.perf_counter() - start)

    return step


def decode_timer(model, prompt: int, new_tokens: int):
    model.eval()

    @torch.no_grad()
    def run() -> float:
        idx = torch.zeros(1, prompt, dtype=torch.long)
        start = time.perf_counter()
        cache = model.new_cache(1, prompt + new_tokens)
        logits = model(idx, cache=cache)
        for _ in range(new_tokens):
            logits = model(logits[:, -1:].argmax(-1), cache=cache)
        return new_tokens / (time.perf_counter() - start)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="the git revision to compare with (e.g. HEAD~3, a commit)")
    parser.add_argument("--train-shape", default="small", choices=list(SHAPES))
    parser.add_argument("--decode-shape", default="tiny", choices=list(SHAPES))
    parser.add_argument(
        "--config",
        default=None,
        help="time this config's [model] (e.g. configs/moe-style.toml) for both cases instead of the shapes",
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        then = package_at(args.against, Path(tmp))
        now = "gptzoo"
        results = {}
        shape = config_shape(args.config) if args.config else SHAPES[args.train_shape]
        train = measured_in_turns(
            {v: train_timer(build(p, shape), shape, args.batch) for v, p in (("then", then), ("now", now))},
            args.reps,
            args.warmup,
        )
        results[f"train {args.config or args.train_shape} batch {args.batch} (tokens/s)"] = train
        shape = config_shape(args.config) if args.config else SHAPES[args.decode_shape]
        new = min(64, shape["context_length"] - 16)
        decode = measured_in_turns(
            {v: decode_timer(build(p, shape), 16, new) for v, p in (("then", then), ("now", now))},
            args.reps,
            args.warmup,
        )
        results[f"greedy decode {args.config or args.decode_shape}, {new} after 16, KV cache (tokens/s)"] = decode
    print(f"{'case':<55} {'then':>10} {'now':>10} {'now/then':>9}")
    for case, r in results.items():
        print(f"{case:<55} {r['then']:>10,.0f} {r['now']:>10,.0f} {r['now'] / r['then']:>9.3f}")
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "against": args.against,
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "results": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
