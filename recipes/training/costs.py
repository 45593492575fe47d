"""What a model costs, summed from each component's own estimate: parameters by family, those one
token uses, FLOPs per token and the decoding cache's bytes (``describe``, training budgets, sweeps).

Each component owns its part (``Component.flops_per_token``, ``active_parameters``,
``Attention.cache_bytes``); these only group and add. They read shapes alone, so they work on a
model built on the meta device."""

import torch
from torch import nn

from gptzoo.core import FAMILIES, GPT, Component


def by_family(model: GPT) -> dict[str, list[nn.Module]]:
    """Every component by family, the positional ones under embeddings with the token embedding, those
    of the multi-token prediction modules under mtp."""
    embeddings: list[nn.Module] = [model.token_embedding]
    elsewhere = {"tokenizer", "positional", *(() if model.mtp is not None else ("mtp",))}
    groups = {"embeddings": embeddings} | {f: [] for f in FAMILIES if f not in elsewhere}
    for name, module in model.named_modules():
        if isinstance(module, Component):
            family = next(f for f, interface in FAMILIES.items() if isinstance(module, interface))
            family = "mtp" if name.split(".")[0] == "mtp" else family
            groups["embeddings" if family == "positional" else family].append(module)
    return groups


def param_counts(model: GPT) -> dict[str, int]:
    """Parameters by family; a tied head's shared weight counts once, under embeddings."""
    seen: set[int] = set()
    counts = {}
    for family, modules in by_family(model).items():
        counts[family] = 0
        for module in modules:
            owned = module.owned_modules() if isinstance(module, Component) else [module]
            for p in (p for m in owned for p in m.parameters(recurse=False)):
                if id(p) not in seen:
                    seen.add(id(p))
                    counts[family] += p.numel()
    counts["total"] = sum(counts.values())
    return counts


def active_parameters_per_token(model: GPT) -> int:
    """Parameters one token's forward pass uses: the total less what each component leaves
    idle for a token (the experts a router did not choose)."""
    idle = sum(
        sum(p.numel() for m in c.owned_modules() for p in m.parameters(recurse=False)) - c.active_parameters()
        for c in model.modules()
        if isinstance(c, Component)
    )
    return param_counts(model)["total"] - idle


def flops_per_token(model: GPT, context_length: int | None = None) -> dict[str, int]:
    """FLOPs per token at ``context_length`` by family, from each component's own estimate:
    ``forward`` is inference's (the multi-token prediction modules do not run there), ``training``
    three times the forward with the ``mtp`` modules, which training runs."""
    T = context_length or model.config.context_length
    parts = {
        "positional" if family == "embeddings" else family: sum(
            m.flops_per_token(T) for m in modules if isinstance(m, Component)
        )
        for family, modules in by_family(model).items()
    }
    parts["forward"] = sum(flops for family, flops in parts.items() if family != "mtp")
    parts["training"] = 3 * (parts["forward"] + parts.get("mtp", 0))
    return parts


def kv_cache_bytes(model: GPT, n_tokens: int | None = None, dtype: torch.dtype = torch.float32) -> int:
    """Bytes the decoding cache holds for one sequence of ``n_tokens`` (default: the context)."""
    n = n_tokens or model.config.context_length
    return sum(m.cache_bytes(n, dtype) for m in model.mixers())
