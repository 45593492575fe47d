"""Build a model from a config written as a Python dict and count its parameters by family.

    python examples/count_parameters.py
    python examples/count_parameters.py --kv-heads 4   # grouped-query attention: fewer parameters, a smaller cache

The model is built on PyTorch's meta device: shapes without memory, so a large model counts in a blink.
"""

import argparse

import torch

from gptzoo.core import GPT
from gptzoo.recipes.training import costs
from gptzoo.registry import default_registry

# GPT-2 small (124M), as a dict: the same fields a TOML config's [model] table holds.
GPT2_SMALL = {
    "vocab_size": 50257,
    "context_length": 1024,
    "d_model": 768,
    "n_layers": 12,
    "n_heads": 12,
    "qkv_bias": True,
    "tied_head": True,
    "attention": {"name": "sdpa"},
    "feed_forward": {"name": "gelu"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kv-heads", type=int, default=None, help="key/value heads (default: one per query head)")
    args = parser.parse_args()

    # Validated against every registered plugin: a typo in a field or a plugin's param is a ConfigError.
    config = default_registry().model_config({**GPT2_SMALL, "n_kv_heads": args.kv_heads})
    with torch.device("meta"):
        model = GPT(config)
    for family, count in costs.param_counts(model).items():
        print(f"{family:>14}  {count:>13,}")
    cache = costs.kv_cache_bytes(model)  # one sequence at the full context, fp32
    print(f"{'kv_cache_bytes':>14}  {cache:>13,}")


if __name__ == "__main__":
    main()
