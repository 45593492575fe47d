"""Tokenizers: fixed vocabularies (``tiktoken``, ``byte``) and ones fitted on the training
corpus (``char``, ``word``, ``bpe``), whose learned state is saved with the run."""

import heapq
import itertools
import os
import re
from abc import abstractmethod
from collections import Counter, defaultdict
from functools import cached_property

import regex
from pydantic import field_validator
from tqdm import tqdm

from gptzoo.core import GptzooError, Params, Tokenizer
from gptzoo.registry import hookimpl

CACHE_ENV = "TIKTOKEN_CACHE_DIR"


class TiktokenParams(Params):
    encoding: str = "gpt2"

    @field_validator("encoding")
    @classmethod
    def _known(cls, value: str) -> str:
        import tiktoken

        names = tiktoken.list_encoding_names()
        if value not in names:
            raise ValueError(f"unknown tiktoken encoding '{value}'; available: {', '.join(names)}")
        return value


class TiktokenTokenizer(Tokenizer):
    """OpenAI's BPE encodings (gpt2, r50k_base, cl100k_base, ...) through tiktoken."""

    Params = TiktokenParams

    @cached_property
    def _encoding(self):
        import tiktoken

        try:
            return tiktoken.get_encoding(self.params.encoding)
        except Exception as err:  # noqa: BLE001 -- tiktoken raises requests/IO errors of many kinds offline
            where = os.environ.get(CACHE_ENV)
            raise GptzooError(
                f"tiktoken could not load the '{self.params.encoding}' encoding ({type(err).__name__}: {err}). "
                f"Without network access it needs its files in a cache folder: set {CACHE_ENV} to a folder holding them "
                f'(in this project: export {CACHE_ENV}="$(realpath ../shared/tiktoken)")'
                + (f"; {CACHE_ENV} is now {where!r}" if where else "")
            ) from None

    @property
    def vocab_size(self) -> int:
        return self._encoding.n_vocab

    @property
    def eot_id(self) -> int:
        return self._encoding.eot_token

    def encode(self, text: str) -> list[int]:
        return self._encoding.encode(text, allowed_special={self.EOT})

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._encoding.encode_batch(texts, allowed_special={self.EOT}, num_threads=os.cpu_count() or 1)

    def decode(self, ids: list[int]) -> str:
        return self._encoding.decode(ids)


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids 0-255, plus <|endoftext|> as 256."""

    @property
    def vocab_size(self) -> int:
        return 257

    @property
    def eot_id(self) -> int:
        return 256

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for i, part in enumerate(text.split(self.EOT)):
            if i:
                ids.append(256)
            ids.extend(part.encode("utf-8"))
        return ids

    def decode(self, ids: list[int]) -> str:
        out, run = [], bytearray()
        for i in ids:
            if i == 256:
                out.append(run.decode("utf-8", errors="replace") + self.EOT)
                run = bytearray()
            else:
                run.append(i)
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)


# ---- fitted on the corpus ------------------------------------------------------------------


class FittedTokenizer(Tokenizer):
    """Base of the tokenizers whose vocabulary is learned by ``fit``: using one before it is
    fitted (or loaded) is an error that says how to get a fitted one."""

    needs_fit = True
    name: str  # its registered name, for messages

    def _not_fitted(self) -> GptzooError:
        return GptzooError(
            f"the '{self.name}' tokenizer must be fitted on a corpus (training does this) or loaded from a "
            f"run folder (its tokenizer.json) before use"
        )


class VocabularyTokenizer(FittedTokenizer):
    """Pieces of text looked up in a learned vocabulary: the sorted pieces of the corpus, then
    ``<|endoftext|>`` and ``<|unk|>``. Pieces not seen in the corpus become ``<|unk|>``."""

    lossless = False
    UNK = "<|unk|>"

    def __init__(self, params: Params):
        super().__init__(params)
        self._pieces: list[str] | None = None  # id -> piece, specials included

    @abstractmethod
    def split(self, text: str) -> list[str]:
        """Text (holding no <|endoftext|>) -> its pieces."""

    @abstractmethod
    def join(self, pieces: list[str]) -> str:
        """Pieces -> text."""

    def _set_vocabulary(self, pieces: list[str]) -> None:
        self._pieces = [*pieces, self.EOT, self.UNK]
        self._ids = {piece: i for i, piece in enumerate(self._pieces)}

    @property
    def is_fitted(self) -> bool:
        return self._pieces is not None

    def _vocabulary(self) -> list[str]:
        if self._pieces is None:
            raise self._not_fitted()
        return self._pieces

    def fit(self, text: str) -> None:
        self._set_vocabulary(sorted({p for part in text.split(self.EOT) for p in self.split(part)}))

    @property
    def vocab_size(self) -> int:
        return len(self._vocabulary())

    @property
    def eot_id(self) -> int:
        return len(self._vocabulary()) - 2

    @property
    def unk_id(self) -> int:
        return len(self._vocabulary()) - 1

    def encode(self, text: str) -> list[int]:
        eot, unk = self.eot_id, self.unk_id
        ids: list[int] = []
        for i, part in enumerate(text.split(self.EOT)):
            if i:
                ids.append(eot)
            ids.extend([self._ids.get(piece, unk) for piece in self.split(part)])
        return ids

    def decode(self, ids: list[int]) -> str:
        pieces = self._vocabulary()
        return self.join([pieces[i] for i in ids])

    def state(self) -> dict:
        return {"vocabulary": self._vocabulary()[:-2]}

    def load_state(self, state: dict) -> None:
        pieces = state["vocabulary"]
        if not isinstance(pieces, list) or not all(isinstance(p, str) for p in pieces):
            raise ValueError("'vocabulary' must be a list of strings")
        self._set_vocabulary(pieces)


class CharTokenizer(VocabularyTokenizer):
    """One id per character of the corpus's alphabet (lossless only on that alphabet)."""

    name = "char"

    def split(self, text: str) -> list[str]:
        return list(text)

    def join(self, pieces: list[str]) -> str:
        return "".join(pieces)


class WordTokenizer(VocabularyTokenizer):
    """The book's chapter-2 tokenizer: words and punctuation split by a regex, whitespace dropped;
    decoding joins with spaces and removes the space before punctuation."""

    name = "word"
    SPLIT = re.compile(r'([,.:;?_!"()\']|--|\s)')
    SPACE_BEFORE_PUNCTUATION = re.compile(r'\s+([,.:;?!"()\'])')

    def split(self, text: str) -> list[str]:
        return [piece.strip() for piece in self.SPLIT.split(text) if piece.strip()]

    def join(self, pieces: list[str]) -> str:
        return self.SPACE_BEFORE_PUNCTUATION.sub(r"\1", " ".join(pieces))


# GPT-2's pre-tokenization (tiktoken's faster equivalent of the released pattern): merges never
# cross these pieces, so a word's tokens do not depend on its neighbours.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
BYTE_TOKENS = 256
SHOW_PROGRESS_ABOVE = 300  # merges; fewer take well under a second


class BPEParams(Params):
    vocab_size: int = 1024

    @field_validator("vocab_size")
    @classmethod
    def _room_for_a_merge(cls, value: int) -> int:
        least = BYTE_TOKENS + 2
        if value < least:
            raise ValueError(f"must be at least {least} (256 byte tokens, one merge and <|endoftext|>), got {value}")
        return value


def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace each occurrence of ``pair`` in ``ids``, scanning left to right, by ``new_id``."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def train_bpe(text: str, n_merges: int) -> list[tuple[int, int]]:
    """Learn up to ``n_merges`` byte-pair merges from ``text``; merge k makes token 256 + k.

    Each step merges the most frequent adjacent pair within pre-tokens, ties going to the
    smallest (left id, right id). Pair counts are kept up to date incrementally: a merge only
    recounts the distinct pre-tokens holding its pair, and a heap with stale entries skipped
    finds the most frequent pair. Stops early when no pair is left.
    """
    counts = Counter(piece for part in text.split(Tokenizer.EOT) for piece in regex.findall(GPT2_PATTERN, part))
    words = [list(word.encode("utf-8")) for word in counts]
    freqs = list(counts.values())
    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    words_with: dict[tuple[int, int], set[int]] = defaultdict(set)  # may hold words that lost the pair
    for w, (ids, freq) in enumerate(zip(words, freqs, strict=True)):
        for pair in itertools.pairwise(ids):
            pair_counts[pair] += freq
            words_with[pair].add(w)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[int, int]] = []
    hide = True if n_merges <= SHOW_PROGRESS_ABOVE else None  # None: shown on a terminal only
    with tqdm(total=n_merges, desc="training bpe", unit="merge", disable=hide) as bar:
        while len(merges) < n_merges and heap:
            negative_count, pair = heapq.heappop(heap)
            if pair_counts.get(pair) != -negative_count:
                continue  # stale: the count changed after this entry was pushed
            new_id = BYTE_TOKENS + len(merges)
            merges.append(pair)
            changed = set()
            for w in words_with.pop(pair):
                ids, freq = words[w], freqs[w]
                for old in itertools.pairwise(ids):
                    pair_counts[old] -= freq
                    changed.add(old)
                words[w] = ids = merge_pair(ids, pair, new_id)
                for new in itertools.pairwise(ids):
                    pair_counts[new] += freq
                    changed.add(new)
                    words_with[new].add(w)
            for p in changed:
                if pair_counts[p] > 0:
                    heapq.heappush(heap, (-pair_counts[p], p))
                else:
                    del pair_counts[p]
            bar.update()
    return merges


class BPETokenizer(FittedTokenizer):
    """Byte-level BPE trained on the corpus, as GPT-2's: ids 0-255 are bytes, then the merges in
    the order learned, and ``<|endoftext|>`` is the last id (vocab_size - 1). Encoding runs in
    tiktoken, built from the learned merges (tiktoken merges by rank, which reproduces the
    merge order: the tests check it against a plain merge loop)."""

    Params = BPEParams
    lossless = True
    name = "bpe"

    def __init__(self, params: BPEParams):
        super().__init__(params)
        self.merges: list[tuple[int, int]] | None = None
        self._encoding = None

    @property
    def is_fitted(self) -> bool:
        return self.merges is not None

    @property
    def vocab_size(self) -> int:
        return self.params.vocab_size

    @property
    def eot_id(self) -> int:
        return self.params.vocab_size - 1

    def fit(self, text: str) -> None:
        self._set_merges(train_bpe(text, self.params.vocab_size - BYTE_TOKENS - 1))

    def _set_merges(self, merges: list[tuple[int, int]]) -> None:
        import tiktoken

        token_bytes = [bytes([b]) for b in range(BYTE_TOKENS)]
        for left, right in merges:
            token_bytes.append(token_bytes[left] + token_bytes[right])
        ranks = {token: rank for rank, token in enumerate(token_bytes)}
        if len(ranks) < len(token_bytes):
            raise ValueError("two merges make the same bytes; tiktoken needs each token's bytes once")
        self._encoding = tiktoken.Encoding(
            name=f"gptzoo-bpe-{self.params.vocab_size}",
            pat_str=GPT2_PATTERN,
            mergeable_ranks=ranks,
            special_tokens={self.EOT: self.eot_id},
        )
        self.merges = merges

    def _fitted(self):
        if self._encoding is None:
            raise self._not_fitted()
        return self._encoding

    def encode(self, text: str) -> list[int]:
        return self._fitted().encode(text, allowed_special={self.EOT})

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._fitted().encode_batch(texts, allowed_special={self.EOT}, num_threads=os.cpu_count() or 1)

    def decode(self, ids: list[int]) -> str:
        encoding = self._fitted()
        # A corpus too small for vocab_size leaves ids that stand for no bytes; an untrained
        # model can still sample them, and they decode to nothing.
        made = BYTE_TOKENS + len(self.merges)
        return encoding.decode([i for i in ids if i < made or i == self.eot_id])

    def state(self) -> dict:
        self._fitted()
        return {"merges": [list(pair) for pair in self.merges]}

    def load_state(self, state: dict) -> None:
        merges = [tuple(pair) for pair in state["merges"]]
        most = self.params.vocab_size - BYTE_TOKENS - 1
        if len(merges) > most:
            raise ValueError(f"{len(merges)} merges do not fit vocab_size {self.params.vocab_size} (at most {most})")
        for k, pair in enumerate(merges):
            if len(pair) != 2 or not all(isinstance(i, int) and 0 <= i < BYTE_TOKENS + k for i in pair):
                raise ValueError(
                    f"merge {k} is {list(pair)}: it must join two ids made before it (below {BYTE_TOKENS + k})"
                )
        self._set_merges(merges)


@hookimpl
def register_components(register):
    register("tokenizer", "tiktoken", TiktokenTokenizer)
    register("tokenizer", "byte", ByteTokenizer)
    register("tokenizer", "char", CharTokenizer)
    register("tokenizer", "word", WordTokenizer)
    register("tokenizer", "bpe", BPETokenizer)
