"""Self-speculative greedy decoding (the MTP module drafts, the model verifies) against plain greedy
decoding, in one process.

    python benchmarks/speculative.py [--run RUN --text FILE] [--reps 5] [--threads 1] [--out FILE] [--quick]

``--run``: a trained run folder whose model has an MTP module (``model.mtp``), its prompts windows
of ``--text`` (e.g. the corpus it trained on); without it, a Llama-shaped GPT of 4 layers x 256 with
one DeepSeek-V3 MTP module, untrained, on random prompts. Batch 1, ``--prompts`` prompts of 16
tokens, ``--new-tokens`` greedy tokens each, both paths with the KV cache, timed in turns (the order
reversed every other repetition); the figures are medians, both wall-clock and the thread's CPU
time (which a busy machine disturbs less). Speed depends on how often the draft is right, so each
model is measured three ways:

- ``as drafted``: the MTP module's own drafts (a trained model's realistic acceptance rate);
- ``all accepted``: every draft replaced by the greedy token after it: speculation's best case;
- ``all rejected``: every draft replaced by another token: its worst case.

The replaced drafts come after the module ran, so all three cost the same work per step. Every
case checks that speculation gave plain decoding's tokens.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from machine import describe
from turns import in_turns

from gptzoo.core import GPT
from gptzoo.recipes.generation import speculative
from gptzoo.recipes.generation.generate import generate_ids
from gptzoo.recipes.generation.speculative import Speculation, speculative_ids
from gptzoo.registry import default_registry

PROMPT = 16


def synthetic_model(d_model: int, n_layers: int) -> GPT:
    config = default_registry().model_config(
        dict(
            vocab_size=512,
            context_length=128,
            d_model=d_model,
            n_layers=n_layers,
            n_heads=4,
            positional="rope",
            norm="rmsnorm",
            feed_forward="swiglu",
            attn_out_bias=False,
            mtp={"name": "sequential", "depth": 1, "loss_weight": 1.0},
        )
    )
    torch.manual_seed(0)
    return GPT(config).eval()


def trained_model(run: str, text: str, n_prompts: int) -> tuple[GPT, list[list[int]]]:
    from gptzoo.recipes.runs.folder import load_run

    loaded = load_run(run, device="cpu")
    with open(text, encoding="utf-8") as f:
        ids = loaded.tokenizer.encode(f.read()[-50_000:])  # the corpus's end: its validation split
    stride = (len(ids) - PROMPT) // n_prompts
    return loaded.model.eval(), [ids[i * stride : i * stride + PROMPT] for i in range(n_prompts)]


@contextmanager
def forced_drafts(texts: list[list[int]], current: list[int], right: bool) -> Iterator[None]:
    """Replace each draft, after the module made it, with the greedy token after the pending one (``right``)
    or another token; ``texts`` each prompt's whole greedy text, ``current[0]`` the one being decoded."""
    drafted = speculative._draft

    def forced(model, hidden, following, cache, pending_mask=None):
        drafted(model, hidden, following, cache, pending_mask)
        text = texts[current[0]]
        target = text[min(cache.length + 1, len(text) - 1)]  # the MTP cache is as long as the text before pending
        token = target if right else (target + 1) % model.config.vocab_size
        return torch.full((1, 1), token, dtype=torch.long)

    speculative._draft = forced
    try:
        yield
    finally:
        speculative._draft = drafted


def case(name: str, m: GPT, prompts: list[list[int]], new_tokens: int, reps: int, texts, current) -> list[dict]:
    stats = Speculation()
    for i, prompt in enumerate(prompts):
        current[0] = i
        assert speculative_ids(m, [prompt], new_tokens, stats=stats) == [texts[i][PROMPT:]], "tokens changed"

    def each(decode):
        def run():
            for i, prompt in enumerate(prompts):
                current[0] = i
                decode(m, [prompt], new_tokens)

        return run

    turns = in_turns({"plain": each(generate_ids), "speculative": each(speculative_ids)}, reps)
    tokens = new_tokens * len(prompts)
    plain_wall, spec_wall = turns.seconds["plain"], turns.seconds["speculative"]
    plain_cpu, spec_cpu = turns.cpu_seconds["plain"], turns.cpu_seconds["speculative"]
    return [
        {"case": name, "impl": "plain", "tokens_per_s": tokens / plain_wall, "model_forwards": tokens - len(prompts)},
        {
            "case": name,
            "impl": "speculative",
            "tokens_per_s": tokens / spec_wall,
            "model_forwards": stats.drafted,
            "acceptance_rate": stats.acceptance_rate,
            "speedup": plain_wall / spec_wall,
            "cpu_time_speedup": plain_cpu / spec_cpu,
        },
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default=None, help="a trained run folder with model.mtp (default: a synthetic model)")
    parser.add_argument("--text", default=None, help="with --run: the text its prompts are cut from")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument(
        "--quick", action="store_true", help="a small synthetic model and few tokens (the suite's check)"
    )
    parser.add_argument("--out", default="speculative-bench.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.run, args.prompts, args.new_tokens = None, 2, 12
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.run is not None:
        if args.text is None:
            parser.error("--run needs --text, the text its prompts are cut from")
        m, prompts = trained_model(args.run, args.text, args.prompts)
    else:
        m = synthetic_model(*((64, 2) if args.quick else (256, 4)))
        generator = torch.Generator().manual_seed(0)
        prompts = torch.randint(0, 512, (args.prompts, PROMPT), generator=generator).tolist()
    texts = [p + generate_ids(m, [p], args.new_tokens)[0] for p in prompts]
    current = [0]
    rows = case("as drafted", m, prompts, args.new_tokens, args.reps, texts, current)
    for name, right in (("all accepted", True), ("all rejected", False)):
        with forced_drafts(texts, current, right):
            rows += case(name, m, prompts, args.new_tokens, args.reps, texts, current)
    for row in rows:
        print(json.dumps(row))
    c = m.config
    meta = {
        "machine": describe(),
        "model": args.run or "synthetic, untrained",
    }
    shape = {
        "d_model": c.d_model,
        "n_layers": c.n_layers,
        "attention": c.attention.name,
        "vocab_size": c.vocab_size,
        "new_tokens": args.new_tokens,
        "prompt": PROMPT,
        "prompts": len(prompts),
        "batch": 1,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "shape": shape, "cases": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
