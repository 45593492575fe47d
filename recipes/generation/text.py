"""From text to prompt ids and from output ids back to text: prompts within the context, the text new
ids add after their context, and streaming that text piece by piece as the ids arrive."""

from __future__ import annotations

from collections.abc import Callable

from gptzoo.core import GptzooError, Tokenizer


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """The ids a prompt starts generation from; an empty prompt starts from end-of-text, as
    GPT-2 does when it generates unconditionally."""
    return tokenizer.encode(prompt) or [tokenizer.eot_id]


def encode_within(tokenizer: Tokenizer, text: str, limit: int) -> tuple[list[int], bool]:
    """The ids of ``text`` and True; or, once a prefix of it already has more than ``limit`` ids, the
    prefix's and False. A prompt of megabytes is refused after tokenizing a few times the context,
    not all of it: the prefixes grow fourfold, so the work stays within about twice the last one."""
    size = 4 * (limit + 1)
    while size < len(text):
        ids = tokenizer.encode(text[:size])
        if len(ids) > limit + 1:  # the cut may split one token of the whole text in two
            return ids, False
        size *= 4
    return tokenizer.encode(text), True


def too_long(what: str, ids: list[int], whole: bool, context_length: int, config: object) -> GptzooError:
    """The refusal of a prompt longer than the context, the same for generate and chat."""
    count = f"{len(ids)}" if whole else f"more than {context_length}"
    return GptzooError(
        f"{what} is {count} tokens but the model's context holds {context_length} (context_length in {config}); shorten it"
    )


def decode_after(tokenizer: Tokenizer, context: list[int], ids: list[int]) -> str:
    """The text ``ids`` add after ``context``: decode(context + ids) without what decode(context) gave.

    Decoding ids on their own loses what a tokenizer puts between tokens (the word tokenizer's
    space between words) and splits characters whose bytes straddle the boundary; decoding
    them after their context keeps both. Where the context's own text changes (an incomplete
    character completed by the first new byte), the text is cut where the two decodings part.
    """
    before = tokenizer.decode(context)
    both = tokenizer.decode(context + ids)
    if both.startswith(before):
        return both[len(before) :]
    shared = 0
    while shared < min(len(before), len(both)) and before[shared] == both[shared]:
        shared += 1
    return both[shared:]


class TextStream:
    """Turns output ids into text pieces as they arrive, for printing while generating.

    The pieces join to what the tokenizer decodes from context + output, less the context's
    own text: each piece is decoded after the ids before it (at first the prompt), so a
    tokenizer that puts text between tokens (the word tokenizer's spaces) gets it at every
    boundary. Text is held back while it ends in an incomplete character ('\\ufffd'), so a
    multi-byte character split across byte tokens prints whole. Each piece decodes only the
    recent ids (the pending ones after the last printed segment), so the work per token does
    not grow with the text. Bytes that never form a character (a model emitting invalid UTF-8)
    are held back for at most ``HELD_BACK`` tokens, then printed as replacement characters.
    """

    # A UTF-8 character has at most 4 bytes and each token brings at least one: twice that is
    # long enough for any character to complete.
    HELD_BACK = 8

    def __init__(self, tokenizer: Tokenizer, write: Callable[[str], None], context: list[int] = ()):
        self.tokenizer = tokenizer
        self.write = write
        self.printed: list[int] = list(context)  # the last segment written (or the prompt), kept as left context
        self.pending: list[int] = []

    def add(self, token: int) -> None:
        self.pending.append(token)
        text = decode_after(self.tokenizer, self.printed, self.pending)
        if not text.endswith("\ufffd") or len(self.pending) >= self.HELD_BACK:
            self._emit(text)

    def flush(self) -> None:
        if self.pending:
            self._emit(decode_after(self.tokenizer, self.printed, self.pending))

    def _emit(self, text: str) -> None:
        if text:
            self.write(text)
        self.printed, self.pending = self.pending, []
