"""Decoding through a static cache with one compiled step (``generate --compile``).

The eager path's cache bookkeeping grows a column per token and its layers attend over the
filled part of their caches, so every step has new shapes: ``torch.compile`` would recompile at
every token. Here the cache is a ``StaticKVCache``: everything preallocated for the whole text,
the count of tokens filled a tensor, each layer writing at that tensor offset and attending over
all its slots, the ones not written yet masked (they follow the newest token). Every decoding
step then has the same shapes and Python values, so one compiled graph serves them all; the
prompt runs eagerly (its length is its own), and sampling reads the logits on the device, with
no host round-trip until a caller asks for the tokens.

Mixers declare whether they can (``Attention.static_cache``): every built-in one does. Softmax
attention keeps every key and value (its variants: grouped heads, sinks, QK-norm, gates), latent
attention every latent, DeepSeek's sparse attention its indexer's keys beside them (choosing among
the slots written so far), and the recurrent mixers' states are fixed-size already. A sliding window
or a chunk, whose eager cache is a ring written at a Python offset, keeps every key and value here
too (``Attention.new_static_cache``), the window or chunk a mask over the slots: compiled decoding
gives up the ring's memory saving. A mixer that does not declare it is refused, as is a text longer
than the context of a model that would crop to it (its positions renumber, so no cache of fixed
slots serves it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from gptzoo.core import GPT, GptzooError, KVCache

# What torch.compile generates code with; the tests use aot_eager, which traces the same graph in a second.
COMPILE_BACKEND = "inductor"


def static_refusal(model: GPT, total: int) -> str | None:
    """Why ``model`` cannot decode a text of ``total`` tokens through a static cache, or None: it can."""
    for i, mixer in enumerate(model.mixers()):
        if not type(mixer).declared_static_cache(mixer.params):
            kind = type(mixer).declared_cache_kind(mixer.params)
            return f"layer {i}'s token mixer {type(mixer).__name__} keeps a {kind} cache that is not static"
    context = model.config.context_length
    if model.extension_refusal() is not None and total > context:
        return f"prompt and new tokens come to {total}, past the context of {context} that the model crops to"
    return None


def next_logits(model: GPT, ids: Tensor, cache: KVCache, pad_mask: Tensor | None = None) -> Tensor:
    """The logits (B, V) after ``ids`` (B, T), which go into ``cache``."""
    hidden = model.hidden_states(ids, cache=cache, pad_mask=pad_mask)
    return model.head(hidden[:, -1:]).squeeze(1)


@functools.cache
def compiled_next_logits(backend: str) -> Callable[..., Tensor]:
    """``next_logits`` compiled once for fixed shapes: one graph per model and batch, reused at every token.
    Inductor writes the code that calls the graph's kernels in C++ (``cpp_wrapper``): in Python, those calls
    cost a step as much as some of its layers' products on a small model."""
    options = {"cpp_wrapper": True} if backend == "inductor" else None
    return torch.compile(next_logits, dynamic=False, backend=backend, options=options)


def static_decode(
    model: GPT, tokens: Tensor, pad_mask: Tensor | None, max_new_tokens: int, sample: Callable[[Tensor], Tensor]
) -> Iterator[Tensor]:
    """Each step's next ids (B,) after the prompts ``tokens`` (B, P) (``pad_mask`` False at left padding), drawn
    by ``sample`` from the logits (B, V); the prompt runs eagerly, every later step through the compiled step."""
    B, P = tokens.shape
    refusal = static_refusal(model, P + max_new_tokens)
    if refusal is not None:
        raise GptzooError(f"--compile: {refusal}; decode without --compile")
    cache = model.new_cache(B, P + max_new_tokens, static=True)
    step = compiled_next_logits(COMPILE_BACKEND)
    logits = next_logits(model, tokens, cache, pad_mask)
    for produced in range(1, max_new_tokens + 1):
        next_ids = sample(logits)
        yield next_ids
        if produced < max_new_tokens:
            logits = step(model, next_ids[:, None], cache)
