"""Self-speculative greedy decoding: the model's multi-token prediction module drafts, the model verifies.

DeepSeek-V3 (arXiv 2412.19437 §5.4.3) decodes with its MTP module as a draft: at each step the
model's greedy next token t is known, and the depth-1 module, given the hidden state that chose t
and t's embedding, guesses the token d after it. One forward of the model over [t, d] then gives
the greedy token after t (if it is d, the draft is accepted) and, when accepted, the one after d:
two tokens for one forward of the model. A rejected draft's key and value are forgotten
(``KVCache.rewind``), and the greedy token after t is taken instead, so the output is plain greedy
decoding's, token for token. In a batch a draft is accepted only when every row accepts it.

The module keeps its own cache, one position behind the model's: its entry at position i holds
(h_i, t_{i+1}), written once both are final. Layers whose caches cannot forget a token (a window
ring, a recurrent state) are refused; past the context, decoding continues as plain greedy
decoding (``generate_ids``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch
from torch import Tensor

from gptzoo.core import GPT, Attention, GptzooError, KVCache
from gptzoo.recipes.generation.generate import (
    _eval_mode,
    _note_tokens,
    check_memory,
    generate_ids,
    stopping_ids,
    until_stop,
)


@dataclass
class Speculation:
    """How the drafts fared: ``accepted`` of ``drafted`` (one per forward of the model after the prompt)."""

    drafted: int = 0
    accepted: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


def speculation_refusal(model: GPT) -> str | None:
    """Why ``model`` cannot decode speculatively, or None."""
    if model.mtp is None:
        return "it has no multi-token prediction module (model.mtp) to draft with"
    kept = [m for m in model.modules() if isinstance(m, Attention) and not m.absent]
    forgetful = sorted({type(m).__name__ for m in kept if type(m).declared_cache_kind(m.params) != "keys_values"})
    if forgetful:
        return f"the caches of {', '.join(forgetful)} cannot forget a rejected draft (only caches of every key and value can)"
    return None


@torch.inference_mode()
def speculative_ids(
    model: GPT,
    prompts: list[list[int]],
    max_new_tokens: int,
    *,
    eot_id: int | None = None,
    stop_ids: Collection[int] | None = None,
    on_token: Callable[[int, int], None] | None = None,
    stats: Speculation | None = None,
) -> list[list[int]]:
    """``generate_ids``'s greedy continuation of each prompt, drafted by ``model.mtp``; ``stats`` counts the drafts."""
    refusal = speculation_refusal(model)
    if refusal is not None:
        raise GptzooError(f"speculative decoding: {refusal}; generate without it")
    if not prompts or any(len(p) == 0 for p in prompts) or max_new_tokens < 0:
        raise ValueError("every prompt needs at least one token, and max_new_tokens must not be negative")
    stats = stats if stats is not None else Speculation()
    B, P, room = len(prompts), max(map(len, prompts)), model.config.context_length
    check_memory(model, B, P, max_new_tokens)  # up front: past the context, plain decoding keeps the whole text
    device = model.token_embedding.weight.device
    tokens = torch.full((B, P), eot_id if eot_id is not None else 0, dtype=torch.long)
    real = torch.ones(B, P, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        tokens[row, P - len(prompt) :], real[row, : P - len(prompt)] = torch.tensor(prompt), False
    tokens, real = tokens.to(device), real.to(device)
    if P >= room or max_new_tokens == 0:
        return generate_ids(model, prompts, max_new_tokens, eot_id=eot_id, stop_ids=stop_ids, on_token=on_token)

    ids: list[list[int]] = [[] for _ in prompts]
    finished = [False] * B
    stops = stopping_ids(eot_id, stop_ids)

    def emit(column: list[int]) -> bool:
        """Keep one token per row; True when generation is over."""
        for row, token in zip(ids, column, strict=True):
            row.append(token)
        return _note_tokens(column, finished, stops, on_token) or len(ids[0]) == max_new_tokens

    with _eval_mode(model):
        cache, drafts = model.new_cache(B, room), model.new_cache(B, room, mtp=True)
        pad_mask = None if bool(real.all()) else real
        hidden = model.hidden_states(tokens, cache, pad_mask)  # (B, P, C)
        pending = model.head(hidden[:, -1:]).argmax(-1)  # (B, 1): the greedy token at position P
        draft = _draft(model, hidden, torch.cat([tokens[:, 1:], pending], 1), drafts, pending_mask=pad_mask)
        done = emit(pending[:, 0].tolist())
        while not done and cache.length + 2 <= room:
            hidden = model.hidden_states(torch.cat([pending, draft], 1), cache)  # (B, 2, C)
            greedy = model.head(hidden).argmax(-1)  # (B, 2): after pending, after the draft
            # One read back to the host a step: the drafts beside the greedy tokens decide, and are what is kept.
            drafted, after_pending, after_draft = torch.cat([draft, greedy], 1).T.tolist()  # each (B,)
            stats.drafted += 1
            if drafted == after_pending:
                stats.accepted += 1
                done = emit(drafted)
                pending, draft_inputs, kept = greedy[:, 1:], (hidden, torch.cat([draft, greedy[:, 1:]], 1)), after_draft
            else:
                cache.rewind(1)
                pending, draft_inputs, kept = greedy[:, :1], (hidden[:, :1], greedy[:, :1]), after_pending
            if not done:
                done = emit(kept)
                draft = _draft(model, *draft_inputs, drafts)
    if not done:  # past the context: the rest as plain greedy decoding does it
        rest = generate_ids(
            model,
            [p + o for p, o in zip(prompts, ids, strict=True)],
            max_new_tokens - len(ids[0]),
            eot_id=eot_id,
            stop_ids=stop_ids,
            on_token=on_token,
        )
        ids = [o + r for o, r in zip(ids, rest, strict=True)]
    return [until_stop(row, stops) for row in ids]


def _draft(
    model: GPT, hidden: Tensor, following: Tensor, drafts: KVCache, pending_mask: Tensor | None = None
) -> Tensor:
    """The depth-1 module over positions whose hidden states (B, n, C) and following tokens (B, n) are final
    -> its guess (B, 1) at the last: the token two after that position."""
    predicted = model.predict_ahead(hidden, following.unsqueeze(-1), drafts, pending_mask)[0]
    return model.head(predicted[:, -1:]).argmax(-1)
