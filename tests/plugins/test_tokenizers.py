"""Tokenizers against hand-worked ids, a plain reference BPE merge loop and Unicode round trips."""

import functools
import itertools
import json
import os
from pathlib import Path

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gptzoo.core import GptzooError, NoParams
from gptzoo.plugins.tokenizers import (
    BPEParams,
    BPETokenizer,
    CharTokenizer,
    TiktokenParams,
    TiktokenTokenizer,
    WordTokenizer,
)
from gptzoo.registry import make_registry
from gptzoo.testing import build_tokenizer

EOT = "<|endoftext|>"
# The pattern as released with GPT-2 (the plugin uses tiktoken's faster equivalent).
GPT2_RELEASED_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def needs_tiktoken_files() -> None:
    folder = os.environ.get("TIKTOKEN_CACHE_DIR")
    if not folder or not Path(folder).is_dir():
        pytest.skip("tiktoken's files are absent: set TIKTOKEN_CACHE_DIR (tests use ../shared/tiktoken)")


def bpe(vocab_size: int, corpus: str) -> BPETokenizer:
    tokenizer = BPETokenizer(BPEParams(vocab_size=vocab_size))
    tokenizer.fit(corpus)
    return tokenizer


def reference_bpe_encode(text: str, merges: list[list[int]]) -> list[int]:
    """Plain BPE: in each pre-token, merge the earliest-learned adjacent pair until none is left."""
    rank = {tuple(pair): 256 + k for k, pair in enumerate(merges)}
    out = []
    for piece in regex.findall(GPT2_RELEASED_PATTERN, text):
        ids = list(piece.encode("utf-8"))
        while True:
            pairs = [p for p in itertools.pairwise(ids) if p in rank]
            if not pairs:
                break
            best = min(pairs, key=rank.get)
            merged, i = [], 0
            while i < len(ids):
                if tuple(ids[i : i + 2]) == best:
                    merged.append(rank[best])
                    i += 2
                else:
                    merged.append(ids[i])
                    i += 1
            ids = merged
        out.extend(ids)
    return out


def reloaded(tokenizer):
    fresh = type(tokenizer)(tokenizer.params)
    fresh.load_state(json.loads(json.dumps(tokenizer.state())))
    return fresh


# ---- fixed vocabularies ------------------------------------------------------------------------


def test_gpt2_known_ids():
    needs_tiktoken_files()
    tokenizer = TiktokenTokenizer(TiktokenParams(encoding="gpt2"))
    assert tokenizer.encode("Hello") == [15496]
    assert tokenizer.encode("Hello, world") == [15496, 11, 995]
    assert tokenizer.eot_id == 50256 and tokenizer.vocab_size == 50257
    assert tokenizer.encode(f"Hello{EOT}") == [15496, 50256]


def test_byte_ids_are_utf8_bytes():
    tokenizer = make_registry().get("tokenizer", "byte").impl(NoParams())
    assert tokenizer.encode("héllo") == [104, 195, 169, 108, 108, 111]
    assert tokenizer.encode(f"a{EOT}b") == [97, 256, 98]
    assert tokenizer.eot_id == 256 and tokenizer.vocab_size == 257


def test_tiktoken_without_its_files_names_the_cache_folder(monkeypatch, tmp_path):
    import tiktoken.load
    import tiktoken.registry

    def offline(blobpath):
        raise ConnectionError(f"no network to fetch {blobpath}")

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # encodings loaded earlier in this process
    monkeypatch.setattr(tiktoken.load, "read_file", offline)  # fail at once instead of waiting on the network
    tokenizer = TiktokenTokenizer(TiktokenParams(encoding="gpt2"))
    with pytest.raises(GptzooError, match="TIKTOKEN_CACHE_DIR"):
        tokenizer.encode("Hello")


# ---- every lossless tokenizer round-trips any text -----------------------------------------------

LOSSLESS = [e.name for e in make_registry().entries("tokenizer") if e.impl.lossless]


@functools.cache
def fitted(name: str):
    return build_tokenizer(make_registry(), name)  # fitted on the kit's sample text when it learns


def test_lossless_names_include_the_built_ins():
    assert {"tiktoken", "byte", "bpe"} <= set(LOSSLESS)
    assert "char" not in LOSSLESS and "word" not in LOSSLESS


@pytest.mark.parametrize("name", LOSSLESS)
@settings(max_examples=100, deadline=None)
@given(text=st.lists(st.one_of(st.text(), st.just(EOT)), max_size=4).map("".join))
def test_lossless_round_trip(name, text):
    if name == "tiktoken":
        needs_tiktoken_files()
    tokenizer = fitted(name)
    assert tokenizer.decode(tokenizer.encode(text)) == text


# ---- char ---------------------------------------------------------------------------------------

BOOK_SENTENCE = "Hello, do you like tea?"


def test_char_ids_by_hand():
    tokenizer = CharTokenizer(NoParams())
    tokenizer.fit(BOOK_SENTENCE)
    # sorted alphabet: ' ' , ? H a d e i k l o t u y  -> ids 0..13, then <|endoftext|> 14, <|unk|> 15
    assert tokenizer.vocab_size == 16 and tokenizer.eot_id == 14
    assert tokenizer.encode("tea") == [11, 6, 4]
    assert tokenizer.encode(f"Hz{EOT}") == [3, 15, 14]
    assert tokenizer.decode([3, 15, 14, 0, 2]) == f"H<|unk|>{EOT} ?"
    assert tokenizer.decode(tokenizer.encode(BOOK_SENTENCE)) == BOOK_SENTENCE


def test_char_state_round_trip():
    tokenizer = CharTokenizer(NoParams())
    tokenizer.fit(BOOK_SENTENCE)
    again = reloaded(tokenizer)
    text = f"you like toast?{EOT}Yes."
    assert (
        again.encode(text)
        == tokenizer.encode(text)
        == [13, 10, 12, 0, 9, 7, 8, 6, 0, 11, 10, 4, 15, 11, 2, 14, 15, 6, 15, 15]
    )


# ---- word ---------------------------------------------------------------------------------------


def test_word_split_follows_the_book():
    tokenizer = WordTokenizer(NoParams())
    assert tokenizer.split("well--no, 'yes'  (I said)") == [
        "well",
        "--",
        "no",
        ",",
        "'",
        "yes",
        "'",
        "(",
        "I",
        "said",
        ")",
    ]


def test_word_ids_by_hand():
    tokenizer = WordTokenizer(NoParams())
    tokenizer.fit(BOOK_SENTENCE)
    # sorted words: , ? Hello do like tea you -> 0..6, then <|endoftext|> 7, <|unk|> 8
    assert tokenizer.vocab_size == 9
    ids = tokenizer.encode(f"{BOOK_SENTENCE} {EOT} In the sunlit")
    assert ids == [2, 0, 3, 6, 4, 5, 1, 7, 8, 8, 8]
    assert tokenizer.decode(ids) == f"{BOOK_SENTENCE} {EOT} <|unk|> <|unk|> <|unk|>"
    assert tokenizer.encode(f"tea{EOT}you") == [5, 7, 6]


def test_word_state_round_trip():
    tokenizer = WordTokenizer(NoParams())
    tokenizer.fit(BOOK_SENTENCE)
    assert (
        reloaded(tokenizer).encode("do you like coffee?") == tokenizer.encode("do you like coffee?") == [3, 6, 4, 8, 1]
    )


@pytest.mark.parametrize("impl", [CharTokenizer, WordTokenizer])
def test_unfitted_vocabulary_tokenizer_says_how_to_fit(impl):
    tokenizer = impl(NoParams())
    assert tokenizer.needs_fit and not tokenizer.is_fitted
    with pytest.raises(GptzooError, match="must be fitted on a corpus"):
        tokenizer.encode("Hello")


# ---- bpe ----------------------------------------------------------------------------------------

WIKIPEDIA_EXAMPLE = "aaabdaaabac"


def test_bpe_first_merges_by_hand():
    # aa (4 times) -> 256; then ab and (256, a) tie at 2: the smaller pair ab -> 257;
    # then (256, 257) twice -> 258 (Wikipedia's Z, Y, X); then every pair once: (a, c) is smallest.
    tokenizer = bpe(261, WIKIPEDIA_EXAMPLE)
    assert tokenizer.state() == {"merges": [[97, 97], [97, 98], [256, 257], [97, 99]]}
    assert tokenizer.encode(WIKIPEDIA_EXAMPLE) == [258, 100, 258, 259]
    assert tokenizer.eot_id == 260 and tokenizer.encode(EOT) == [260]


def test_bpe_stops_when_the_corpus_runs_out_of_pairs():
    # after the 4 merges above, [258, 100, 258, 259] merges (100, 258), then (258, 260), then (261, 259)
    tokenizer = bpe(1024, WIKIPEDIA_EXAMPLE)
    assert tokenizer.state()["merges"][4:] == [[100, 258], [258, 260], [261, 259]]
    assert tokenizer.encode(WIKIPEDIA_EXAMPLE) == [262]
    assert tokenizer.vocab_size == 1024 and tokenizer.eot_id == 1023
    # ids 263..1022 were never made: an untrained model may sample them; they decode to nothing
    assert tokenizer.decode([262, 500, 1022, 1023]) == WIKIPEDIA_EXAMPLE + EOT


def test_bpe_learns_nothing_across_endoftext():
    tokenizer = bpe(300, EOT * 5 + "ab")
    assert tokenizer.state() == {"merges": [[97, 98]]}


def test_bpe_before_fitting():
    tokenizer = BPETokenizer(BPEParams(vocab_size=512))
    assert not tokenizer.is_fitted and tokenizer.vocab_size == 512 and tokenizer.eot_id == 511
    with pytest.raises(GptzooError, match="must be fitted on a corpus"):
        tokenizer.encode("Hello")


def test_bpe_vocab_size_minimum():
    with pytest.raises(ValidationError, match="at least 258"):
        BPEParams(vocab_size=257)
    assert BPEParams(vocab_size=258).vocab_size == 258


def test_bpe_rejects_a_merge_of_ids_not_made_yet():
    tokenizer = BPETokenizer(BPEParams(vocab_size=300))
    with pytest.raises(ValueError, match="merge 1"):
        tokenizer.load_state({"merges": [[97, 98], [257, 97]]})


@pytest.fixture
def verdict_bpe(shared_data):
    text = shared_data("the-verdict.txt").read_text(encoding="utf-8")
    return text, bpe(512, text)


def test_bpe_on_the_verdict_compresses(verdict_bpe):
    text, tokenizer = verdict_bpe
    assert len(tokenizer.state()["merges"]) == 512 - 257
    ids = tokenizer.encode(text)
    assert len(ids) < 0.6 * len(text.encode("utf-8"))
    assert max(ids) < 511 and tokenizer.decode(ids) == text


def test_bpe_encodes_like_the_plain_merge_loop(verdict_bpe):
    text, tokenizer = verdict_bpe
    merges = tokenizer.state()["merges"]
    other = "The quick brown fox's 3 jumps -- naïve café, 東京!  \n\n\tTabs and   spaces end here.  "
    for sample in (text, other):
        assert tokenizer.encode(sample) == reference_bpe_encode(sample, merges)


def test_bpe_state_round_trip(verdict_bpe):
    text, tokenizer = verdict_bpe
    again = reloaded(tokenizer)
    sample = text[:2000] + EOT + "Grüße"
    assert again.is_fitted and again.state() == tokenizer.state()
    assert again.encode(sample) == tokenizer.encode(sample)
    assert again.encode_batch([sample, "x"]) == [tokenizer.encode(sample), tokenizer.encode("x")]
