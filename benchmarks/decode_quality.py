"""What storing the weights in bf16, int8 or int4 costs in quality: held-out perplexity and greedy tokens against fp32.

    gptzoo train configs/tiny.toml --out runs/shakespeare --set data.source=../shared/data/tinyshakespeare.txt
    python benchmarks/decode_quality.py runs/shakespeare [--tokens 16384] [--prompts 16] [--out decode-quality.json]

The held-out text is the run's own validation split (the last ``data.val_fraction`` of its corpus's
tokens, split as training split it), or ``--data FILE`` whole. Every product runs as decoding runs
it: windows of the context are fed through the KV cache in chunks of at most ``DECODE_ROWS`` rows,
so the int8 and int4 matrices are multiplied by their kernels with bf16 activations, as in ``generate``.

- ``perplexity``: exp of the mean next-token loss over the held-out windows;
- ``top1_changed``: the share of held-out positions where the most likely next token differs from fp32's
  (the greedy token each position would give, on the same text);
- ``greedy_identical``: the share of greedy continuations (``--prompts`` prompts of 16 held-out tokens,
  the rest of the context generated) equal to fp32's token for token, and ``first_change``: the mean
  number of tokens before the first difference (the whole continuation where there is none).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe  # noqa: E402

from gptzoo.core import GPT  # noqa: E402
from gptzoo.recipes.generation.generate import generate_ids  # noqa: E402
from gptzoo.recipes.generation.stored_weights import DECODE_ROWS, STORAGES, store_weights  # noqa: E402
from gptzoo.recipes.runs.folder import load_run  # noqa: E402

PROMPT = 16


@torch.inference_mode()
def window_logits(model: GPT, window: torch.Tensor) -> torch.Tensor:
    """Next-token logits (T, V) for a window (T,) of ids, fed through the cache ``DECODE_ROWS`` tokens at a time."""
    cache = model.new_cache(1, window.numel())
    chunks = [
        model(window[None, start : start + DECODE_ROWS], cache=cache) for start in range(0, window.numel(), DECODE_ROWS)
    ]
    return torch.cat(chunks, dim=1)[0].float()


def held_out(run: Path, data: Path | None, tokenizer, config) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The ids of ``data``, or of the run's validation split."""
    if data is not None:
        return torch.tensor(tokenizer.encode(data.read_text()))
    ids = tokenizer.encode(Path(config.data.source).read_text())
    return torch.tensor(ids[int(len(ids) * (1 - config.data.val_fraction)) :])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run folder (gptzoo train or an import)")
    parser.add_argument("--data", type=Path, default=None, help="a held-out text (default: the run's validation split)")
    parser.add_argument("--tokens", type=int, default=16384, help="held-out tokens scored, at most")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--out", default="decode-quality.json")
    args = parser.parse_args(argv)
    trained = load_run(args.run)
    context = trained.config.model.context_length
    ids = held_out(args.run, args.data, trained.tokenizer, trained.config)[: args.tokens + 1]
    windows = [ids[start : start + context + 1] for start in range(0, ids.numel() - 1, context)]
    windows = [w for w in windows if w.numel() > 1]
    prompt_starts = torch.linspace(0, ids.numel() - PROMPT - 1, args.prompts).long().tolist()
    prompts = [ids[s : s + PROMPT].tolist() for s in prompt_starts]
    new_tokens = context - PROMPT

    rows, reference_top1, reference_greedy = [], None, None
    for storage in STORAGES:
        model = store_weights(copy.deepcopy(trained.model), storage)
        logits = [window_logits(model, w[:-1]) for w in windows]
        loss = F.cross_entropy(torch.cat(logits), torch.cat([w[1:] for w in windows]))
        top1 = torch.cat([x.argmax(-1) for x in logits])
        greedy = [generate_ids(model, [p], new_tokens)[0] for p in prompts]
        if reference_top1 is None:
            reference_top1, reference_greedy = top1, greedy
        firsts = [
            next((i for i, (a, b) in enumerate(zip(g, r, strict=True)) if a != b), len(r))
            for g, r in zip(greedy, reference_greedy, strict=True)
        ]
        rows.append({
            "storage": storage,
            "perplexity": math.exp(loss.item()),
            "top1_changed": (top1 != reference_top1).float().mean().item(),
            "greedy_identical": statistics.mean(g == r for g, r in zip(greedy, reference_greedy, strict=True)),
            "first_change": statistics.mean(firsts),
        })  # fmt: skip
        print(json.dumps(rows[-1]))
    meta = {
        "run": str(args.run),
        "data": str(args.data) if args.data else "the run's validation split",
        "tokens": sum(w.numel() - 1 for w in windows),
        "prompts": len(prompts),
        "new_tokens": new_tokens,
        "parameters": sum(p.numel() for p in trained.model.parameters()),
        "torch": torch.__version__,
        "machine": describe(),  # the kernels' rounding (bf16 emulated or native) depends on the processor
    }
    print(json.dumps(meta))
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
