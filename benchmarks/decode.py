"""Greedy decoding on a CPU against the memory-bandwidth bound, in one process.

    python benchmarks/decode.py [--shapes small,gpt2-124m,qwen3-small] [--storages fp32,bf16,int8,int4] [--compiled fp32]
                                [--new-tokens 64] [--reps 5] [--threads N] [--out decode-bench.json]

Batch 1, a 16-token prompt, ``--new-tokens`` greedy tokens; the time per token is the whole
call (prefill included) over the new tokens, as the measurements in docs/design/performance.md
take it. Cases of one shape are timed in turns (the order reversed every other repetition) so a
change in the machine's load falls on all alike; figures are medians.

- ``gptzoo-<storage>``: gptzoo's GPT-2 assembly (``generate_ids``, KV cache) with its weights
  stored as fp32, bf16, int8 or int4 (``--weight-storage``);
- ``gptzoo-<storage>-compiled``, for each storage in ``--compiled``: the same through a static cache
  and one compiled step (``generate --compile``); its warm-up call compiles, so the times are
  the steady state; ``first_call_s`` is that first call's seconds, compiling included (a cold
  compile with an empty ``TORCHINDUCTOR_CACHE_DIR``, a warm one where an earlier process compiled
  the same graph). Its layers read every slot of
  the preallocated cache, so its KV bytes are the whole text's, not the mean length's;
- ``transformers``: GPT2LMHeadModel's ``generate`` on the same shape (sdpa).

The Qwen3 shapes (``qwen3-small``, ``qwen3-tiny``) decode one Qwen3-style model (grouped-query
attention with per-head QK-norm, rotary, SwiGLU, RMSNorm, tied head) in three implementations
holding the same weights: transformers' ``Qwen3ForCausalLM`` is built, saved and imported
(``import_hf``), and the book package loads its state dict with its own loader. They are checked
to give the same greedy tokens before they are timed:

- ``gptzoo-fp32``: the imported run's model, stored as fp32 (``generate_ids``, KV cache);
- ``book``: the book package's ``llms_from_scratch.kv_cache.qwen3.Qwen3Model`` (the version is in
  the JSON's meta) with its ``generate_text_simple(..., use_cache=True)``, whose loop runs one step
  more than the tokens it returns (its last step's logits go unused);
- ``transformers``: ``Qwen3ForCausalLM.generate`` (sdpa).

The ``transformers`` and ``book`` rows are given gptzoo fp32's bytes per token: the same model
reads the same weights and cache at best. The book's KV-cache GPT-2 is not a row: in the book package (1.0.19)
``kv_cache.generate.generate_text_simple`` stops at once on ``llms_from_scratch.kv_cache.gpt2.GPTModel``
(an AttributeError: the model has no ``cfg``), and the model called directly with ``use_cache=True``
and a ``KVCache`` fills the cache from the prompt, then fails on the first cached step (a RuntimeError
in ``masked_fill_``: its causal mask is sliced ``[:, -num_tokens:]``, by columns, where the rows of
the new tokens are meant, so a one-token step gets a (seq_len, 1) mask against (1, seq_len)
scores). Its attention itself returns the context vector through ``out_proj``, as it should.

The bound: this machine's memory bandwidth is measured in the same run, timed in turns with each
shape's calls (a stream-like copy of two arrays far larger than the caches: bytes read plus bytes
written over the time; its median), and each
row's bytes per token (every weight a decoding step multiplies, in its stored form, plus the
KV cache read at the mean length) divided by it gives the fastest a step could be. ``of_bound``
is the measured time over that: 1.0 is at the bound. It bounds a step whose bytes come from the
memory; ``fits_last_level_cache`` says where they fit in the processor's last-level cache (the JSON's
``machine`` names it), which then holds them from one token to the next, so a step can beat it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from bench import SHAPES, build  # noqa: E402
from machine import describe  # noqa: E402
from turns import in_turns  # noqa: E402

from gptzoo.core import PositionalEncoding  # noqa: E402
from gptzoo.recipes.generation.generate import generate_ids  # noqa: E402
from gptzoo.recipes.generation.stored_weights import (  # noqa: E402
    StoredEmbedding,
    StoredHead,
    StoredLinear,
    store_weights,
)

PROMPT = 16
QWEN3_SHAPES = {
    # Qwen3-0.6B's vocabulary and layout (two query heads to each key-value head, 3 × d_model SwiGLU), 4 × 256.
    "qwen3-small": dict(
        vocab_size=151936, context_length=256, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=64, hidden=768
    ),
    # For the test suite.
    "qwen3-tiny": dict(
        vocab_size=512, context_length=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, hidden=192
    ),
}


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
    """What one greedy step of a gptzoo model reads: every matrix it multiplies, in its stored form, the other
    weights used whole (norms, biases), one row of each lookup table (embeddings, position tables), and the KV
    cache at the mean length (``static``: at the whole text's, every preallocated slot)."""
    head = model.head.matrix if isinstance(model.head, StoredHead) else model.head
    looked_up = set()  # tensors only looked up a row at a time: tables the head does not multiply by
    for module in model.modules():
        if isinstance(module, nn.Embedding) and module.weight is not getattr(head, "weight", None):
            looked_up.add(id(module.weight))
        if isinstance(module, StoredEmbedding):  # its own table, or a tied head's rows kept again
            looked_up |= {id(module.matrix.row_table)} | (
                {id(module.matrix.stored), id(module.matrix.scale)} if module.matrix is not head else set()
            )
        if isinstance(module, PositionalEncoding):  # rows per position (rotary's cos and sin, sinusoids' table)
            looked_up |= {id(table) for table in module.buffers(recurse=False) if table.dim() == 2}
    total, seen = 0, set()
    for module in model.modules():
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            n_bytes = tensor.numel() * tensor.element_size()
            # a lookup reads one row (an int4 table one column of its scales, (K32/G, N16, 2))
            int4_scale = isinstance(module, StoredLinear) and module.storage == "int4" and tensor is module.scale
            rows = tensor.shape[1] if int4_scale else tensor.shape[0]
            total += n_bytes // rows if id(tensor) in looked_up else n_bytes
    kv_length = PROMPT + new_tokens if static else PROMPT + new_tokens / 2
    kv_width = shape.get("n_kv_heads", shape["n_heads"]) * shape.get("head_dim", shape["d_model"] // shape["n_heads"])
    return total + 2 * shape["n_layers"] * kv_width * int(kv_length) * 4


Cases = dict[str, tuple[Callable[[], object], int]]  # name -> (one greedy call, bytes per token)


def cases(shape: dict, storages: list[str], new_tokens: int, compiled: list[str]) -> Cases:
    """GPT-2 shapes: gptzoo per storage (those in ``compiled`` also through the compiled step), transformers."""
    torch.manual_seed(0)
    prompt = torch.randint(0, shape["vocab_size"], (1, PROMPT))
    out: Cases = {}
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


# ---- one Qwen3-style model in three implementations, holding the same weights ----------------------


def qwen3_models(shape: dict) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(gptzoo, book, transformers): transformers' model at ``shape``, imported into gptzoo, loaded by the book's loader."""
    from llms_from_scratch.kv_cache.qwen3 import Qwen3Model, load_weights_into_qwen
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from gptzoo.recipes.interop.hf.import_ import import_hf
    from gptzoo.recipes.runs.folder import load_run

    config = Qwen3Config(
        vocab_size=shape["vocab_size"],
        max_position_embeddings=shape["context_length"],
        hidden_size=shape["d_model"],
        num_hidden_layers=shape["n_layers"],
        num_attention_heads=shape["n_heads"],
        num_key_value_heads=shape["n_kv_heads"],
        head_dim=shape["head_dim"],
        intermediate_size=shape["hidden"],
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    hf = Qwen3ForCausalLM(config).eval()
    with torch.no_grad():  # transformers' initialisation (norms 1, N(0, 0.02)) decodes one token over and over:
        for name, p in hf.named_parameters():  # spread wider, the greedy tokens vary and tell implementations apart
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(Path(folder) / "hf")
        import_hf(Path(folder) / "hf", Path(folder) / "run")
        ours = store_weights(load_run(Path(folder) / "run").model, "fp32")
    book_config = dict(
        vocab_size=shape["vocab_size"],
        context_length=shape["context_length"],
        emb_dim=shape["d_model"],
        n_heads=shape["n_heads"],
        n_layers=shape["n_layers"],
        hidden_dim=shape["hidden"],
        head_dim=shape["head_dim"],
        qk_norm=True,
        n_kv_groups=shape["n_kv_heads"],
        rope_base=1e6,
        dtype=torch.float32,
    )
    book = Qwen3Model(book_config)
    load_weights_into_qwen(book, book_config, hf.state_dict())
    return ours, book.eval(), hf


def qwen3_cases(shape: dict, new_tokens: int) -> Cases:
    """The Qwen3 shapes: gptzoo (fp32 storage), the book's KV-cache loop and transformers on the same weights,
    refused unless all three give the same greedy tokens."""
    from llms_from_scratch.kv_cache.generate import generate_text_simple

    ours, book, hf = qwen3_models(shape)
    torch.manual_seed(0)
    prompt = torch.randint(0, shape["vocab_size"], (1, PROMPT))
    calls: dict[str, Callable[[], list[int]]] = {
        "gptzoo-fp32": lambda: generate_ids(ours, [prompt[0].tolist()], new_tokens)[0],
        "book": lambda: generate_text_simple(book, prompt, new_tokens, use_cache=True)[0, PROMPT:].tolist(),
        "transformers": lambda: hf.generate(
            prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0
        )[0, PROMPT:].tolist(),
    }
    with torch.inference_mode():
        tokens = {name: call() for name, call in calls.items()}
    if any(t != tokens["transformers"] for t in tokens.values()):
        raise SystemExit(f"the Qwen3 implementations disagree on greedy tokens: {tokens}")
    n_bytes = bytes_per_token(ours, shape, new_tokens)
    return {name: (call, n_bytes) for name, call in calls.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    shapes = SHAPES | QWEN3_SHAPES
    parser.add_argument(
        "--shapes", default="small,gpt2-124m,qwen3-small", help=f"comma-separated, of {', '.join(shapes)}"
    )
    parser.add_argument("--storages", default="fp32,bf16,int8,int4")
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
            shapes[shape_name], context_length=max(shapes[shape_name]["context_length"], PROMPT + args.new_tokens)
        )
        if shape_name in QWEN3_SHAPES:
            made = qwen3_cases(shape, args.new_tokens)
        else:
            made = cases(shape, args.storages.split(","), args.new_tokens, args.compiled.split(","))
        copy, copied = copy_call()
        with torch.inference_mode():
            turns = in_turns({name: call for name, (call, _) in made.items()} | {"copy": copy}, args.reps)
        seconds, first = turns.seconds, turns.first_seconds
        bytes_per_s = copied / seconds["copy"]
        for name, (_, n_bytes) in made.items():
            rows.append({"shape": shape_name, "impl": name, "ms_per_token": 1e3 * seconds[name] / args.new_tokens,
                         "bytes_per_token": n_bytes, "bandwidth_gb_per_s": bytes_per_s / 1e9,
                         "first_call_s": first[name]})  # fmt: skip
    machine = describe()
    for row in rows:
        bound_ms = row["bytes_per_token"] / row["bandwidth_gb_per_s"] / 1e6
        reference = next(r for r in rows if r["shape"] == row["shape"] and r["impl"] == "transformers")
        row |= {
            "bound_ms": bound_ms,
            "of_bound": row["ms_per_token"] / bound_ms if bound_ms else None,
            "fits_last_level_cache": bool(machine["last_level_cache_bytes"])
            and row["bytes_per_token"] <= machine["last_level_cache_bytes"],
            "vs_transformers": reference["ms_per_token"] / row["ms_per_token"],
        }
        print(json.dumps(row))
    meta = {
        "machine": machine,
        "transformers": version("transformers"),
        "llms_from_scratch": version("llms-from-scratch"),
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
