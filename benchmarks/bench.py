"""Side-by-side speed and memory of gptzoo's assembled GPT against references, on identical shapes.

    python benchmarks/bench.py [--shape small|tiny] [--reps 5] [--out bench.json]

Training speed: all implementations are built in one fresh process and timed in turns, so a
change in the machine's load falls on all alike; peak memory: each alone in a fresh process.
Decoding: each case in a fresh process. Every figure is the median of ``--reps`` timed
repetitions after warm-up. References:

- ``handwritten``: a single-module GPT with the same math as gptzoo's GPT-2 assembly with
  ``sdpa`` (below, deliberately not in the package): what "the plugins cost nothing" is measured against.
- ``transformers``: GPT2LMHeadModel with attn_implementation="sdpa" (skipped if not installed).
- ``gptzoo-dense``: for the mixture of experts, a Llama-style assembly (rope, RMSNorm, no
  biases) whose SwiGLU is as wide as the mixture's ``top_k`` experts together, so both
  multiply the same weights per token (the router aside); ``gptzoo-moe`` routes to 2 of 8.

Ratios are gptzoo / reference: above 1 means gptzoo is faster.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from machine import describe
from torch import nn

from gptzoo.recipes.training import costs

SHAPES = {
    # The shape of the measurements: GPT-2 vocabulary, 4 layers, d_model 256, context 256.
    "small": dict(vocab_size=50257, context_length=256, d_model=256, n_layers=4, n_heads=4, batch_size=8),
    "gpt2-124m": dict(vocab_size=50257, context_length=1024, d_model=768, n_layers=12, n_heads=12, batch_size=1),
    # For the test suite: seconds, not minutes.
    "tiny": dict(vocab_size=512, context_length=128, d_model=64, n_layers=2, n_heads=4, batch_size=4),
}


# ---- the hand-written reference: one module, GPT-2 math, tied head, SDPA -----------------


class HandwrittenGPT(nn.Module):
    def __init__(self, vocab_size: int, context_length: int, d_model: int, n_layers: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.wte = nn.Embedding(vocab_size, d_model)
        self.wpe = nn.Embedding(context_length, d_model)
        self.ln1 = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(n_layers))
        self.qkv = nn.ModuleList(nn.Linear(d_model, 3 * d_model) for _ in range(n_layers))
        self.proj = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(n_layers))
        self.ln2 = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(n_layers))
        self.fc = nn.ModuleList(nn.Linear(d_model, 4 * d_model) for _ in range(n_layers))
        self.fc_out = nn.ModuleList(nn.Linear(4 * d_model, d_model) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for i in range(len(self.qkv)):
            q, k, v = self.qkv[i](self.ln1[i](x)).split(x.size(-1), dim=-1)
            q, k, v = (t.view(B, T, self.n_heads, -1).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, -1)
            x = x + self.proj[i](y)
            x = x + self.fc_out[i](F.gelu(self.fc[i](self.ln2[i](x)), approximate="tanh"))
        return F.linear(self.ln_f(x), self.wte.weight)


# ---- building each implementation ----------------------------------------------------------


def build(impl: str, shape: dict) -> nn.Module:
    dims = {k: v for k, v in shape.items() if k != "batch_size"}
    if impl == "handwritten":
        return HandwrittenGPT(**dims)
    if impl == "transformers":
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(
            vocab_size=dims["vocab_size"],
            n_positions=dims["context_length"],
            n_embd=dims["d_model"],
            n_layer=dims["n_layers"],
            n_head=dims["n_heads"],
            resid_pdrop=0,
            embd_pdrop=0,
            attn_pdrop=0,
            bos_token_id=0,
            eos_token_id=0,
            attn_implementation="sdpa",
        )
        return GPT2LMHeadModel(config)
    from gptzoo.core import GPT
    from gptzoo.registry import make_registry

    variant = impl.removeprefix("gptzoo-")
    if variant in MOE_PAIR:
        config = make_registry().model_config(
            dict(
                dims,
                attn_out_bias=False,
                tied_head=True,
                positional="rope",
                norm="rmsnorm",
                tokenizer="byte",
                feed_forward=MOE_PAIR[variant](dims["d_model"]),
            )
        )
    else:
        config = make_registry().model_config(
            dict(dims, qkv_bias=True, tied_head=True, attention=variant, tokenizer="byte")
        )
    return GPT(config)


# Same weights multiplied per token: top_k=2 experts 2·d_model wide, or one SwiGLU 4·d_model wide.
MOE_PAIR = {
    "dense": lambda C: {"name": "swiglu", "hidden": 4 * C},
    "moe": lambda C: {"name": "moe", "n_experts": 8, "top_k": 2, "hidden": 2 * C},
}


def multiplied_parameters(shape_name: str) -> dict:
    """describe's active parameters per token of the mixture, beside what one forward multiplies:
    matmul FLOPs (attention's scores aside) / (2 · tokens), plus the weights used elementwise (norms)."""
    from torch.utils.flop_counter import FlopCounterMode

    shape = SHAPES[shape_name]
    model = build("gptzoo-moe", shape).eval()
    B, T = shape["batch_size"], shape["context_length"]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randint(0, shape["vocab_size"], (B, T)))
    matmul = sum(flops for op, flops in counter.get_flop_counts()["Global"].items() if "attention" not in str(op))
    elementwise = sum(p.numel() for p in model.parameters() if p.dim() == 1)
    return {
        "active_parameters_per_token": costs.active_parameters_per_token(model),
        "multiplied_per_token": matmul // (2 * B * T),
        "elementwise": elementwise,
        "total": costs.param_counts(model)["total"],
    }


def logits_of(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    out = model(idx)
    return out.logits if hasattr(out, "logits") else out


# ---- the measured cases ----------------------------------------------------------------------


def make_train_step(impl: str, shape_name: str, dtype: str):
    """One training step (forward, backward, AdamW) of ``impl`` on fixed random tokens."""
    shape = SHAPES[shape_name]
    torch.manual_seed(0)
    model = build(impl, shape).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    B, T, V = shape["batch_size"], shape["context_length"], shape["vocab_size"]
    idx = torch.randint(0, V, (B, T))
    targets = torch.randint(0, V, (B, T))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def step() -> None:
        with autocast:
            loss = F.cross_entropy(logits_of(model, idx).flatten(0, 1).float(), targets.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def train_case(impls: list[str], shape_name: str, dtype: str, reps: int, warmup: int) -> dict:
    """Tokens/s of each implementation, timed in turns (A, B, C, A, B, C, ...) so that a change
    in the machine's load falls on all of them alike."""
    steps = {impl: make_train_step(impl, shape_name, dtype) for impl in impls}
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {impl: [] for impl in impls}
    for _ in range(reps):
        for impl, step in steps.items():
            start = time.perf_counter()
            step()
            times[impl].append(time.perf_counter() - start)
    tokens = SHAPES[shape_name]["batch_size"] * SHAPES[shape_name]["context_length"]
    return {impl: {"tokens_per_s": tokens / statistics.median(t), "seconds": t} for impl, t in times.items()}


def train_memory_case(impl: str, shape_name: str, dtype: str) -> dict:
    """Two steps alone in a fresh process: its peak RSS is this implementation's."""
    step = make_train_step(impl, shape_name, dtype)
    step()
    step()
    return {}


def decode_case(impl: str, shape_name: str, new_tokens: int, use_cache: bool, reps: int, warmup: int) -> dict:
    # The context must hold prompt and output: past it, every path recomputes a sliding window.
    shape = dict(SHAPES[shape_name])
    shape["context_length"] = max(shape["context_length"], 16 + new_tokens)
    torch.manual_seed(0)
    model = build(impl, shape).eval()
    prompt = torch.randint(0, shape["vocab_size"], (1, 16))
    if impl == "transformers":

        def run() -> None:
            with torch.inference_mode():
                model.generate(
                    prompt,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    do_sample=False,
                    use_cache=use_cache,
                    pad_token_id=0,
                )
    else:
        from gptzoo.recipes.generation.generate import generate_ids

        def run() -> None:
            generate_ids(model, [prompt[0].tolist()], new_tokens, use_cache=use_cache)

    times = _timed(run, reps, warmup)
    return {"tokens_per_s": new_tokens / statistics.median(times), "seconds": times}


def _timed(fn, reps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _run_in_child(queue: mp.Queue, kind: str, args: tuple, threads: int) -> None:
    torch.set_num_threads(threads)
    try:
        result = {"train": train_case, "train_memory": train_memory_case, "decode": decode_case}[kind](*args)
        result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        queue.put(result)
    except Exception as err:  # noqa: BLE001 -- a failing reference must not stop the benchmark
        queue.put({"error": f"{type(err).__name__}: {err}"})


def measure(kind: str, args: tuple, threads: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run_in_child, args=(queue, kind, args, threads))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def have_transformers() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="small", choices=list(SHAPES))
    parser.add_argument(
        "--decode-shapes",
        default=None,
        help="comma-separated shapes for decoding, e.g. tiny,gpt2-124m (default: --shape)",
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--long-tokens", type=int, default=256, help="new tokens for the cache vs no-cache ratio")
    parser.add_argument("--long-shape", default=None, help="shape for the cache vs no-cache ratio (default: --shape)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default="bench.json")
    parser.add_argument(
        "--cases",
        default="train,moe,decode",
        help="which groups to run: train (against the references), moe (against dense), decode",
    )
    args = parser.parse_args(argv)
    groups = set(args.cases.split(","))

    refs = ["handwritten"] + (["transformers"] if have_transformers() else [])
    machine = describe()
    bf16 = torch.backends.mkldnn.is_available() and bool(machine["native_bf16"])
    if not bf16:
        print("bfloat16 cases skipped: this CPU has no native bf16 (avx512_bf16 / amx_bf16)")
    rows = []

    def add(case: str, impl: str, result: dict, reference: str | None, ref_result: dict | None) -> None:
        row = {
            "case": case,
            "impl": impl,
            "tokens_per_s": result.get("tokens_per_s"),
            "peak_rss_bytes": result.get("peak_rss_bytes"),
            "error": result.get("error"),
        }
        if reference is not None and ref_result is not None:
            row["reference"] = reference
            row["reference_tokens_per_s"] = ref_result.get("tokens_per_s")
            if row["tokens_per_s"] and row["reference_tokens_per_s"]:
                row["ratio"] = row["tokens_per_s"] / row["reference_tokens_per_s"]
        rows.append(row)
        _print_row(row)

    for dtype in (["float32"] + (["bfloat16"] if bf16 else [])) if "train" in groups else []:
        case = f"train {args.shape} {dtype}"
        impls = refs + ["gptzoo-sdpa", "gptzoo-fused", "gptzoo-per_head"]
        results = measure("train", (impls, args.shape, dtype, args.reps, args.warmup), args.threads)
        if "error" in results:
            results = {impl: results for impl in impls}
        for impl in impls:
            results[impl]["peak_rss_bytes"] = measure("train_memory", (impl, args.shape, dtype), args.threads).get(
                "peak_rss_bytes"
            )
        for ref in refs:
            add(case, ref, results[ref], None, None)
        for impl in ("gptzoo-sdpa", "gptzoo-fused", "gptzoo-per_head"):
            for ref in refs:
                add(case, impl, results[impl], ref, results[ref])
        if dtype == "bfloat16" and "transformers" in refs:
            fp32_hf = next(
                r for r in rows if r["case"] == f"train {args.shape} float32" and r["impl"] == "transformers"
            )
            add(
                f"train {args.shape} bf16 vs transformers fp32",
                "gptzoo-sdpa",
                results["gptzoo-sdpa"],
                "transformers-fp32",
                {"tokens_per_s": fp32_hf["tokens_per_s"]},
            )

    counts = None
    if "moe" in groups:
        case = f"train {args.shape} float32 moe vs dense"
        results = measure(
            "train", (["gptzoo-dense", "gptzoo-moe"], args.shape, "float32", args.reps, args.warmup), args.threads
        )
        if "error" in results:
            results = {impl: results for impl in ("gptzoo-dense", "gptzoo-moe")}
        add(case, "gptzoo-dense", results["gptzoo-dense"], None, None)
        add(case, "gptzoo-moe", results["gptzoo-moe"], "gptzoo-dense", results["gptzoo-dense"])
        counts = multiplied_parameters(args.shape)
        print(
            f"moe {args.shape}: describe's active parameters/token {counts['active_parameters_per_token']:,} = "
            f"multiplied {counts['multiplied_per_token']:,} + elementwise {counts['elementwise']:,} (of {counts['total']:,})"
        )
    if "decode" in groups:
        decode_cases(args, refs, add)

    report = {
        "machine": machine | {"threads": args.threads or machine["threads"], "bf16_autocast": bf16},
        "settings": vars(args),
        "cases": rows,
        "moe_parameters": counts,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}")
    return 0


def decode_cases(args: argparse.Namespace, refs: list[str], add) -> None:
    for shape in (args.decode_shapes or args.shape).split(","):
        case = f"decode {shape} {args.new_tokens} tokens"
        cached = measure("decode", ("gptzoo-sdpa", shape, args.new_tokens, True, args.reps, 1), args.threads)
        if "transformers" in refs:
            hf = measure("decode", ("transformers", shape, args.new_tokens, True, args.reps, 1), args.threads)
            add(case, "transformers-cache", hf, None, None)
            add(case, "gptzoo-cache", cached, "transformers-cache", hf)
        else:
            add(case, "gptzoo-cache", cached, None, None)
    long_shape = args.long_shape or args.shape
    long_case = f"decode {long_shape} {args.long_tokens} tokens"
    nocache = measure(
        "decode", ("gptzoo-sdpa", long_shape, args.long_tokens, False, max(1, args.reps // 2), 0), args.threads
    )
    cache = measure(
        "decode", ("gptzoo-sdpa", long_shape, args.long_tokens, True, max(1, args.reps // 2), 1), args.threads
    )
    add(long_case, "gptzoo-nocache", nocache, None, None)
    add(long_case, "gptzoo-cache", cache, "gptzoo-nocache", nocache)


def _print_row(row: dict) -> None:
    speed = f"{row['tokens_per_s']:>10,.1f} tok/s" if row.get("tokens_per_s") else f"{'error':>16}"
    ratio = f"  {row['ratio']:.2f}x {row['reference']}" if row.get("ratio") else ""
    mem = f"  peak {row['peak_rss_bytes'] / 2**20:,.0f} MiB" if row.get("peak_rss_bytes") else ""
    err = f"  {row['error']}" if row.get("error") else ""
    print(f"{row['case']:<40} {row['impl']:<22} {speed}{ratio}{mem}{err}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
