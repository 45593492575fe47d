"""Text generation: greedy, temperature, top-k and top-p sampling with the KV cache.

Decoding is incremental: the prompt is run once to fill a preallocated cache, then each step
feeds only the newest token and computes logits for the last position only. Prompts of
different lengths are left-padded with the end-of-text id and masked, so each row gets its
own positions and the batch gives every prompt the tokens it would get alone.

A model with recurrent or windowed layers whose position schemes extend (``GPT.extension_refusal``
is None) decodes past its context with the cache, keeping its state: its memory stays flat when
every layer's cache is bounded, and grows only by its softmax layers' keys and values otherwise.
Any other model, when prompt + generated text outgrows
the context, sees only the last ``context_length`` tokens, as in the book. Cropping renumbers the
window's positions and changes what each token could attend to, so cached keys go stale: once
the cache is full, each step falls back to a full forward over that window. The cache and
no-cache paths give the same tokens, and the extra cost begins only where the context ends.

``stream_ids`` hands each token on and keeps the text only as far back as a step reads (the
window it crops to, or the newest token beside a cache), so streaming from a model that crops or
whose caches are bounded takes memory that does not grow with the number of tokens asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from gptzoo.core import GPT, GptzooError, KVCache, Tokenizer
from gptzoo.recipes.generation.static import static_decode
from gptzoo.recipes.generation.text import TextStream, decode_after, prompt_ids
from gptzoo.recipes.runs.memory import available_memory, gib


def sample_next(
    logits: Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick the next token of each row from logits (B, V) -> ids (B,).

    Temperature 0 is greedy (argmax). Otherwise the logits are divided by the temperature,
    cut to the ``top_k`` largest, then to the smallest set whose probability reaches
    ``top_p`` (nucleus sampling), and one token is drawn from what remains.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)  # (B,)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kept = logits.topk(top_k, dim=-1).indices  # (B, k)
        # Exactly k survive, even when several logits tie with the k-th.
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, kept, True)
        logits = logits.masked_fill(~keep, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
        sorted_probs = sorted_logits.softmax(dim=-1)
        # A token stays if the more likely tokens before it have not yet reached top_p;
        # the most likely token always stays.
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # (B, V)
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)  # (B,)


@contextmanager
def _eval_mode(model: GPT) -> Iterator[None]:
    """Dropout off while generating; a model called mid-training goes back to training after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.inference_mode()
def generate_ids(
    model: GPT,
    prompts: list[list[int]],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    eot_id: int | None = None,
    stop_ids: Collection[int] | None = None,
    use_cache: bool = True,
    on_token: Callable[[int, int], None] | None = None,
    compiled: bool = False,
) -> list[list[int]]:
    """Continue each prompt by up to ``max_new_tokens`` tokens; returns only the new ids.

    A row stops at ``eot_id``, or at any of ``stop_ids`` where given (``tokenizer.stop_ids``: a chat
    checkpoint may end turns at several ids), which is not included in its output; generation ends when every row
    has stopped. ``on_token(row, id)`` is called as each output token is produced.
    ``use_cache=False`` re-runs the whole (cropped) sequence every step: slower, same tokens
    under greedy decoding. ``compiled`` decodes through a static cache with one compiled step
    (gptzoo.recipes.generation.static): the same tokens under greedy decoding, GptzooError for a
    model it cannot serve.
    """
    stops = stopping_ids(eot_id, stop_ids)
    text = _start(model, prompts, max_new_tokens, eot_id, use_cache, keep_all=True, compiled=compiled)
    finished = [False] * len(prompts)
    produced = 0
    sampling = (temperature, top_k, top_p, generator)
    with _eval_mode(model):
        for next_ids in _decode(model, text, max_new_tokens, use_cache, sampling, compiled):
            produced += 1
            if not stops and on_token is None:
                continue  # nothing to decide on the host: no sync
            if _note_tokens(next_ids, finished, stops, on_token):
                break
    return [until_stop(ids, stops) for ids in text.tokens[:, text.P : text.P + produced].tolist()]


def stopping_ids(eot_id: int | None, stop_ids: Collection[int] | None) -> frozenset[int]:
    """The ids a row stops at: ``stop_ids`` where given, else ``eot_id`` (none: no stop)."""
    if stop_ids is not None:
        return frozenset(stop_ids)
    return frozenset() if eot_id is None else frozenset({eot_id})


def until_stop(ids: list[int], stops: frozenset[int]) -> list[int]:
    """``ids`` up to the first of ``stops`` (not included)."""
    return next((ids[:i] for i, token in enumerate(ids) if token in stops), ids)


@torch.inference_mode()
def stream_ids(
    model: GPT,
    prompts: list[list[int]],
    max_new_tokens: int,
    on_token: Callable[[int, int], None],
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    eot_id: int | None = None,
    stop_ids: Collection[int] | None = None,
    use_cache: bool = True,
    compiled: bool = False,
) -> None:
    """``generate_ids`` that keeps none of its output: each token goes only to ``on_token(row, id)``.

    The text is kept only as far back as a step looks, so a model that crops to its context, or
    whose every layer's cache is bounded, streams any number of tokens in memory that does not grow
    with ``max_new_tokens``; a model whose cache grows past its context is refused up front
    (``check_memory``) when the machine cannot hold that cache.
    """
    stops = stopping_ids(eot_id, stop_ids)
    text = _start(model, prompts, max_new_tokens, eot_id, use_cache, keep_all=False, compiled=compiled)
    finished = [False] * len(prompts)
    sampling = (temperature, top_k, top_p, generator)
    with _eval_mode(model):
        for next_ids in _decode(model, text, max_new_tokens, use_cache, sampling, compiled):
            if _note_tokens(next_ids, finished, stops, on_token):
                break


def _start(
    model: GPT,
    prompts: list[list[int]],
    max_new_tokens: int,
    eot_id: int | None,
    use_cache: bool,
    keep_all: bool,
    compiled: bool = False,
) -> _Text:
    """The checked prompts in a text buffer that keeps what the decoding steps will look at (``keep_all``: everything)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must not be negative")
    P = max(len(p) for p in prompts)
    look = None if keep_all else _look_back(model, use_cache)
    check_memory(model, len(prompts), P, max_new_tokens, use_cache, keep_text=look is None, compiled=compiled)
    return _Text(prompts, P + max_new_tokens, look, eot_id, model.token_embedding.weight.device)


def _look_back(model: GPT, use_cache: bool) -> int | None:
    """How many of the latest tokens a decoding step after the first reads, or None: all of them."""
    if model.extension_refusal() is not None:
        return model.config.context_length  # the window it crops to
    return 1 if use_cache else None  # the cache holds the rest, or every step re-reads the whole text


def _decode(
    model: GPT, text: _Text, max_new_tokens: int, use_cache: bool, sampling: tuple, compiled: bool = False
) -> Iterator[Tensor]:
    """Each step's next ids (B,), up to ``max_new_tokens`` steps, written into ``text`` as they are drawn
    (``compiled``: through a static cache and one compiled step)."""
    B, P = text.tokens.size(0), text.P
    if compiled:
        if not use_cache:
            raise ValueError("compiled decoding runs through a cache: leave use_cache on")
        tokens, pad_mask = text.columns(0, P)
        steps = static_decode(
            model, tokens, pad_mask, max_new_tokens, lambda logits: sample_next(logits.float(), *sampling)
        )
        for step, next_ids in enumerate(steps):
            text.append(P + step, next_ids)
            yield next_ids
        return
    window = None if model.extension_refusal() is None else model.config.context_length  # None: sees everything
    length = _cache_length(model, P, text.total) if use_cache else None
    cache = model.new_cache(B, length) if length is not None else None
    for step in range(max_new_tokens):
        end = P + step  # tokens so far, padding included
        h, cache = _hidden_states(model, text, cache, end, window)
        logits = model.head(h[:, -1:]).squeeze(1)  # (B, V)
        next_ids = sample_next(logits.float(), *sampling)  # (B,)
        text.append(end, next_ids)
        yield next_ids


def _cache_length(model: GPT, prompt: int, total: int) -> int | None:
    """How many tokens the decoding cache is made for: the whole text for a model that decodes past its
    context (a bounded layer keeps fewer), else the context; None: no cache, the prompt being cropped already."""
    if model.extension_refusal() is None:
        return total
    return min(model.config.context_length, total) if prompt <= model.config.context_length else None


def check_memory(
    model: GPT,
    batch: int,
    prompt: int,
    max_new_tokens: int,
    use_cache: bool = True,
    keep_text: bool = True,
    compiled: bool = False,
) -> None:
    """GptzooError up front when generating ``max_new_tokens`` cannot fit in the memory the model's device has
    left: a text kept whole (``keep_text``; streaming keeps only what the model looks at) holds a long and a
    mask byte per token, and the cache holds what each layer declares for the text (``cache_bytes``): every
    key and value of a model that decodes past its context, its windows whole where they are shorter
    (``compiled``: what a static cache holds, ``static_cache_bytes``, every key of a window too)."""
    total = prompt + max_new_tokens
    need = batch * total * (8 + 1) if keep_text else 0
    length = _cache_length(model, prompt, total) if use_cache else None
    if length is not None:
        dtype = model.token_embedding.weight.dtype
        kept = [mixer for mixer, reads in zip(model.mixers(), model.kv_readers, strict=True) if not reads]
        held = [(m.static_cache_bytes if compiled else m.cache_bytes)(length, dtype) for m in kept]
        need += batch * sum(held)  # a reader keeps no keys of its own
    device = model.token_embedding.weight.device
    available = available_memory(device)
    if need > available:
        raise GptzooError(
            f"--max-new-tokens {max_new_tokens}: {batch} text(s) of {total} tokens need about {gib(need)} "
            f"but {device} has {gib(available)} available; ask for fewer tokens"
        )


# The least a text buffer holds, so a short text is never moved.
_FEW_COLUMNS = 1024


class _Text:
    """The prompts left-padded into one (B, width) buffer on the model's device that the generated tokens
    fill in place, and the mask of real tokens (False at padding). Column ``i`` holds the token at position
    ``offset + i``. A full buffer keeps only its last ``look`` columns when a step reads no further back
    than that, so its memory does not grow with the text; else (``look`` None) it doubles, up to ``total``."""

    def __init__(
        self, prompts: list[list[int]], total: int, look: int | None, eot_id: int | None, device: torch.device
    ):
        B, self.P = len(prompts), max(len(p) for p in prompts)
        self.total, self.look, self.offset = total, look, 0
        self.max_pad = self.P - min(len(p) for p in prompts)  # columns [0, max_pad) hold padding in some row
        width = min(total, 2 * max(self.P, look or 0, _FEW_COLUMNS))
        tokens = torch.full((B, width), eot_id if eot_id is not None else 0, dtype=torch.long)
        real = torch.ones(B, width, dtype=torch.bool)
        for row, prompt in enumerate(prompts):
            tokens[row, self.P - len(prompt) : self.P] = torch.tensor(prompt, dtype=torch.long)
            real[row, : self.P - len(prompt)] = False
        self.tokens, self.real = tokens.to(device), real.to(device)

    def columns(self, start: int, end: int) -> tuple[Tensor, Tensor | None]:
        """The tokens at positions ``start`` to ``end`` (B, end - start), and their mask (None: no padding there)."""
        first, last = start - self.offset, end - self.offset
        return self.tokens[:, first:last], self.real[:, first:last] if start < self.max_pad else None

    def append(self, position: int, ids: Tensor) -> None:
        """Write ``ids`` (B,) at ``position``, the one after the last written, making room when the buffer is full."""
        width = self.tokens.size(1)
        if position - self.offset == width:
            if self.look is None:
                self._move(width, min(self.total - self.offset, 2 * width))
            else:
                self._move(self.look, width)
        self.tokens[:, position - self.offset] = ids

    def _move(self, kept: int, width: int) -> None:
        """Keep the last ``kept`` columns, at the start of a new buffer ``width`` wide."""
        dropped = self.tokens.size(1) - kept
        tokens = self.tokens.new_zeros(self.tokens.size(0), width)
        real = self.real.new_ones(self.real.size(0), width)
        tokens[:, :kept], real[:, :kept] = self.tokens[:, dropped:], self.real[:, dropped:]
        self.tokens, self.real, self.offset = tokens, real, self.offset + dropped


def _hidden_states(
    model: GPT, text: _Text, cache: KVCache | None, end: int, window: int | None
) -> tuple[Tensor, KVCache | None]:
    """The hidden states whose last position predicts token ``end``, and the cache to use next (None once full).

    The first step runs the whole prompt into the cache, later ones only the newest token; once the
    cache is full, the last ``window`` tokens (None: all) are recomputed without one.
    """
    if cache is not None and (cache.max_len is None or end <= cache.max_len):
        if end == text.P:
            tokens, pad_mask = text.columns(0, end)
            return model.hidden_states(tokens, cache=cache, pad_mask=pad_mask), cache  # (B, P, C)
        return model.hidden_states(text.columns(end - 1, end)[0], cache=cache), cache  # (B, 1, C)
    tokens, pad_mask = text.columns(0 if window is None else max(0, end - window), end)
    return model.hidden_states(tokens, pad_mask=pad_mask), None  # (B, T, C)


def _note_tokens(
    next_ids: Tensor | list[int],
    finished: list[bool],
    stops: frozenset[int],
    on_token: Callable[[int, int], None] | None,
) -> bool:
    """Mark rows that produced one of ``stops`` finished and pass the others' tokens to ``on_token``; True when all are finished."""
    for row, token in enumerate(next_ids.tolist() if isinstance(next_ids, Tensor) else next_ids):
        if finished[row]:
            continue
        if token in stops:
            finished[row] = True
        elif on_token is not None:
            on_token(row, token)
    return all(finished)


def complete(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stream: Callable[[str], None] | None = None,
) -> str:
    """The continuation of ``prompt`` (without the prompt), stopping at end-of-text.

    The continuation is the text the new ids add after the prompt's ids, so
    ``tokenizer.decode(tokenizer.encode(prompt)) + continuation`` is the tokenizer's decoding
    of the whole sequence (for lossless tokenizers the first part is the prompt itself).
    ``seed`` makes sampling repeatable; ``stream``, if given, receives each piece of text as
    it is produced (the pieces join to the returned text).
    """
    generator = None
    if seed is not None:
        generator = torch.Generator(device=model.token_embedding.weight.device).manual_seed(seed)
    context = prompt_ids(tokenizer, prompt)
    streamer = TextStream(tokenizer, stream, context) if stream is not None else None
    [ids] = generate_ids(
        model,
        [context],
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        generator=generator,
        eot_id=tokenizer.eot_id,
        stop_ids=tokenizer.stop_ids,
        on_token=(lambda row, token: streamer.add(token)) if streamer is not None else None,
    )
    if streamer is not None:
        streamer.flush()
    return decode_after(tokenizer, context, ids)
