"""Memory and speed of the sliding window, attention sinks and multi-head latent attention against standard attention.

    python benchmarks/attention_bench.py [--reps 5] [--threads N] [--out attention-bench.json] [--quick]

- window cache: bytes the decoding cache holds after 1, 2 and 4 windows of tokens, sliding
  window against sdpa (each cache's tensors, counted, and ``kv_cache_bytes``);
- window training: training tokens/s at context 1024 with a window of 128, against full sdpa;
- sinks training: training tokens/s with attention sinks, ``sdpa`` (SDPA with the sink as one
  more key) against ``fused`` (the explicit softmax with the sink as one more score) and against
  plain ``sdpa`` without sinks;
- latent KV: cache bytes per token against the formula (kv_lora_rank + head_dim) · 4 bytes per layer;
- latent decode: greedy decoding tokens/s at the GPT-2 124M shape, latent (absorbed and, for
  comparison, explicit decompression) against sdpa with the same 12 heads, after a short and a
  long prompt; ``latent_matched`` is latent sized to sdpa's attention parameters (LATENT_MATCHED);
- sparse latent: DeepSeek Sparse Attention (``sparse_latent``, each query's top ``index_topk`` keys)
  against dense ``latent`` with the same latent sizes: a forward over a whole context (no gradients)
  and greedy decoding after a long prompt, ratio dense / sparse (above 1: the sparse one is faster).

Implementations of one case are built in one process and timed in turns (one repetition of
each, then the next, the order reversed every other repetition), so a change in the machine's
load falls on all alike; figures are medians. Rows print as each case finishes. Ratios are variant / sdpa: above 1 means the variant is faster.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from machine import describe
from turns import in_turns, measured_in_turns

from gptzoo.core import GPT
from gptzoo.plugins.latent_attention import LatentAttention
from gptzoo.recipes.training import costs
from gptzoo.registry import make_registry

REGISTRY = make_registry(entry_points=False)
WINDOW_SHAPE = dict(
    vocab_size=512, d_model=256, n_layers=4, n_heads=4, positional="rope", feed_forward="swiglu", norm="rmsnorm"
)
# Latent attention with sdpa's attention parameter count at the 124M shape (2,409,472 against
# 2,360,064 per layer; DeepSeek's proportions give 4,965,632): q·k and v as wide as sdpa's heads.
LATENT_MATCHED = {"kv_lora_rank": 256, "qk_nope_head_dim": 64, "v_head_dim": 64}
GPT2_124M = dict(vocab_size=50257, context_length=1024, d_model=768, n_layers=12, n_heads=12, positional="rope")


def model(shape: dict, attention: dict, registry=REGISTRY, **fields) -> GPT:
    torch.manual_seed(0)
    return GPT(registry.model_config({**shape, "attention": attention, **fields})).eval()


def cache_tensor_bytes(cache) -> int:
    return sum(t.nbytes for layer in cache.layers for t in vars(layer).values() if isinstance(t, torch.Tensor))


@torch.no_grad()
def window_cache(window: int) -> list[dict]:
    rows = []
    for attention in ({"name": "sliding_window", "window": window}, {"name": "sdpa"}):
        m = model(WINDOW_SHAPE, attention, context_length=4 * window)
        for n in (window, 2 * window, 4 * window):
            cache = m.new_cache(1, n)
            m(torch.zeros(1, 1, dtype=torch.long), cache=cache)
            for _ in range(1, n):  # decode token by token up to n
                m(torch.zeros(1, 1, dtype=torch.long), cache=cache)
            rows.append(
                {
                    "case": f"decode cache after {n} tokens (window {window})",
                    "impl": attention["name"],
                    "cache_tensor_bytes": cache_tensor_bytes(cache),
                    "kv_cache_bytes": costs.kv_cache_bytes(m, n),
                }
            )
    return rows


def window_training(window: int, context: int, batch: int, reps: int) -> list[dict]:
    models = {
        name: model(WINDOW_SHAPE, attention, context_length=context).train()
        for name, attention in [
            ("sdpa", {"name": "sdpa"}),
            ("sliding_window", {"name": "sliding_window", "window": window}),
        ]
    }
    idx = torch.randint(0, 512, (batch, context))

    def step(m):
        return lambda: m(idx).logsumexp(-1).mean().backward()

    seconds = in_turns({name: step(m) for name, m in models.items()}, reps).seconds
    tokens = batch * context
    return [
        {
            "case": f"train, context {context}, window {window}, batch {batch}, 4 × 256",
            "impl": name,
            "tokens_per_s": tokens / s,
            "ratio_to_sdpa": seconds["sdpa"] / s,
        }
        for name, s in seconds.items()
    ]


def sinks_training(context: int, batch: int, reps: int) -> list[dict]:
    models = {
        name: model(WINDOW_SHAPE, attention, context_length=context).train()
        for name, attention in [
            ("sdpa", {"name": "sdpa"}),
            ("sdpa_sinks", {"name": "sdpa", "sinks": True}),
            ("fused_sinks", {"name": "fused", "sinks": True}),
        ]
    }
    idx = torch.randint(0, 512, (batch, context))

    def step(m):
        return lambda: m(idx).logsumexp(-1).mean().backward()

    seconds = in_turns({name: step(m) for name, m in models.items()}, reps).seconds
    return [
        {
            "case": f"train with sinks, context {context}, batch {batch}, 4 × 256",
            "impl": name,
            "tokens_per_s": batch * context / s,
            "ratio_to_sdpa": seconds["sdpa"] / s,
            "ratio_to_fused_sinks": seconds["fused_sinks"] / s,
        }
        for name, s in seconds.items()
    ]


class ExplicitLatent(LatentAttention):
    """Latent attention that decompresses every cached latent at every step (for comparison only)."""

    def absorbing_is_cheaper(self, T: int, Tk: int) -> bool:
        return False


def latent_kv() -> list[dict]:
    m = model(GPT2_124M, {"name": "latent"})
    block = m.blocks[0].attention
    formula = (block.rank + m.config.dims().head_size) * 4 * m.config.n_layers
    sdpa = model(GPT2_124M, {"name": "sdpa"})
    standard = costs.kv_cache_bytes(sdpa, 1)
    return [
        {
            "case": "KV cache bytes per token, GPT-2 124M shape, fp32",
            "impl": "latent",
            "bytes_per_token": costs.kv_cache_bytes(m, 1024) // 1024,
            "formula": formula,
            "sdpa_bytes_per_token": standard,
            "kv_lora_rank": block.rank,
            "rope_dim": m.config.dims().head_size,
            "attention_params_per_layer": sum(p.numel() for p in block.parameters()),
            "sdpa_attention_params_per_layer": sum(p.numel() for p in sdpa.blocks[0].attention.parameters()),
        }
    ]


@torch.no_grad()
def latent_decode(prompt: int, new_tokens: int, reps: int) -> list[dict]:
    """Seconds per decoded token, the prefill left out of the clock (subtracting a separately
    timed prefill gave noise-dominated, even negative, figures after long prompts)."""
    registry = make_registry(entry_points=False)
    registry.add("attention", "latent_explicit", ExplicitLatent)
    models = {name: model(GPT2_124M, {"name": name}, registry) for name in ("sdpa", "latent", "latent_explicit")}
    models["latent_matched"] = model(GPT2_124M, {"name": "latent", **LATENT_MATCHED}, registry)
    idx = torch.randint(0, 50257, (1, prompt))

    def decode_seconds(m) -> float:
        cache = m.new_cache(1, prompt + new_tokens)
        logits = m(idx, cache=cache)[:, -1]
        start = time.perf_counter()
        for _ in range(new_tokens):
            logits = m(logits.argmax(-1, keepdim=True), cache=cache)[:, -1]
        return (time.perf_counter() - start) / new_tokens

    per_token = measured_in_turns({name: (lambda m=m: decode_seconds(m)) for name, m in models.items()}, reps)
    return [
        {
            "case": f"greedy decode {new_tokens} tokens after {prompt}, GPT-2 124M shape, 12 heads, fp32",
            "impl": name,
            "tokens_per_s": 1 / s,
            "ratio_to_sdpa": per_token["sdpa"] / s,
        }
        for name, s in per_token.items()
    ]


@torch.no_grad()
def sparse_latent(context: int, topk: int, new_tokens: int, reps: int) -> list[dict]:
    """Dense against sparse latent attention at WINDOW_SHAPE, DeepSeek-V3.2's indexer proportions scaled down
    (16 heads of 64, its keys rotated in halves); the cost of choosing (the indexer's scores, a sort per
    query) is in the sparse figures."""
    latent = {"q_lora_rank": 128, "kv_lora_rank": 128}
    indexer = {"index_topk": topk, "index_heads": 16, "index_head_dim": 64}
    models = {
        "latent": model(WINDOW_SHAPE, {"name": "latent", **latent}, context_length=context + new_tokens),
        "sparse_latent": model(
            WINDOW_SHAPE, {"name": "sparse_latent", **latent, **indexer}, context_length=context + new_tokens
        ),
    }
    idx = torch.randint(0, 512, (1, context))

    def decode(m):
        def run():
            cache = m.new_cache(1, context + new_tokens)
            logits = m(idx, cache=cache)[:, -1]
            for _ in range(new_tokens):
                logits = m(logits.argmax(-1, keepdim=True), cache=cache)[:, -1]

        return run

    forward = in_turns({name: (lambda m=m: m(idx)) for name, m in models.items()}, reps).seconds
    decoding = in_turns({name: decode(m) for name, m in models.items()}, reps).seconds
    return [
        {
            "case": f"{what}, context {context}, top {topk} keys, 4 × 256, fp32",
            "impl": name,
            "seconds": seconds[name],
            "ratio_to_latent": seconds["latent"] / seconds[name],
        }
        for what, seconds in (("forward", forward), (f"prefill and {new_tokens} greedy tokens", decoding))
        for name in models
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for the test suite")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        cases = [
            lambda: window_cache(8),
            lambda: window_training(8, 64, 2, args.reps),
            lambda: sinks_training(64, 2, args.reps),
            latent_kv,
            lambda: sparse_latent(64, 16, 4, args.reps),
        ]
    else:
        cases = [
            lambda: window_cache(128),
            lambda: window_training(128, 1024, 4, args.reps),
            lambda: sinks_training(1024, 4, args.reps),
            latent_kv,
            lambda: latent_decode(16, 64, args.reps),
            lambda: latent_decode(960, 32, args.reps),
            lambda: sparse_latent(4096, 512, 32, args.reps),
        ]
    rows = []
    for case in cases:
        for row in case():
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.out:
        report = {
            "machine": describe(),
            "settings": vars(args),
            "cases": rows,
        }
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
