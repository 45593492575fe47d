"""Corpora, the token cache, sliding windows and the shuffled window order."""

import tracemalloc

import numpy as np
import pytest

from gptzoo.core import GptzooError
from gptzoo.plugins.tokenizers import ByteTokenizer
from gptzoo.recipes.config.schema import DataConfig
from gptzoo.recipes.data import tokens as data_module
from gptzoo.recipes.data.tokens import (
    TokenWindows,
    WindowSampler,
    leading_ids,
    load_tokens,
    split_windows,
    spread_indices,
    token_dtype,
)


class CountingBytes(ByteTokenizer):
    """The byte tokenizer, counting how often it is asked to encode."""

    def __init__(self):
        super().__init__(ByteTokenizer.Params())
        self.calls = 0
        self.batch_sizes = []

    def encode_batch(self, texts):
        self.calls += 1
        self.batch_sizes.append(len(texts))
        return super().encode_batch(texts)


def config(source, tmp_path, **kw):
    return DataConfig(source=str(source), cache_dir=str(tmp_path / "cache"), **kw)


# ---- windows ----------------------------------------------------------------------------


def test_windows_and_stride_match_a_hand_worked_example():
    tokens = np.arange(10, dtype=np.uint16)
    # context 3, stride 2: starts 0, 2, 4, 6 (a window needs 4 tokens from its start)
    windows = TokenWindows(tokens, context_length=3, stride=2)
    assert len(windows) == 4
    assert [list(windows[1][0]), list(windows[1][1])] == [[2, 3, 4], [3, 4, 5]]
    assert [list(windows[3][0]), list(windows[3][1])] == [[6, 7, 8], [7, 8, 9]]
    with pytest.raises(IndexError):
        windows[4]
    inputs, targets = windows.batch([0, 3])
    assert inputs.tolist() == [[0, 1, 2], [6, 7, 8]]
    assert targets.tolist() == [[1, 2, 3], [7, 8, 9]]
    # stride = context: starts 0, 3, 6; stride 1: starts 0..6
    assert len(TokenWindows(tokens, 3, 3)) == 3
    assert len(TokenWindows(tokens, 3, 1)) == 7
    assert len(TokenWindows(tokens[:3], 3, 1)) == 0


def test_split_cuts_the_token_array_so_no_window_straddles(tmp_path):
    tokens = np.arange(100, dtype=np.uint16)
    train, val = split_windows(tokens, 8, DataConfig(val_fraction=0.2, stride=3))
    assert train.tokens.tolist() == list(range(80)) and val.tokens.tolist() == list(range(80, 100))
    assert all(train[i][1].max() < 80 for i in range(len(train)))
    assert all(val[i][0].min() >= 80 for i in range(len(val)))
    assert len(train) == (80 - 9) // 3 + 1 and len(val) == (20 - 9) // 3 + 1


def test_split_too_small_for_a_window_says_what_to_change():
    with pytest.raises(GptzooError, match="validation split 2 tokens.*context_length"):
        split_windows(np.arange(20, dtype=np.uint16), 8, DataConfig(val_fraction=0.1))


def test_windows_are_views_and_building_them_allocates_no_copy():
    tokens = np.arange(1_000_000, dtype=np.uint32) % 50_000  # 4 MB
    tracemalloc.start()
    train, val = split_windows(tokens, 64, DataConfig(stride=1, val_fraction=0.1))
    window = train[len(train) // 2]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # A copy per window would be ~900k windows x 64 tokens; a copy of the array 4 MB.
    assert peak < tokens.nbytes // 100
    assert len(train) == 900_000 - 64
    assert np.shares_memory(window[0], tokens) and np.shares_memory(val[0][1], tokens)
    inputs, _ = train.batch([0, 1, 2])
    assert tuple(inputs.shape) == (3, 64)


# ---- corpora and the cache ----------------------------------------------------------------


def test_second_load_reuses_the_cache_without_tokenizing(tmp_path):
    corpus = tmp_path / "a.txt"
    corpus.write_text("héllo wörld\n" * 50, encoding="utf-8")
    tokenizer = CountingBytes()
    first = load_tokens(config(corpus, tmp_path), tokenizer)
    assert tokenizer.calls == 1
    assert bytes(first.astype(np.uint8)) == ("héllo wörld\n" * 50).encode("utf-8")
    assert isinstance(first, np.memmap) and first.dtype == np.uint16
    second = load_tokens(config(corpus, tmp_path), tokenizer)
    assert tokenizer.calls == 1
    assert np.array_equal(first, second)
    corpus.write_text("changed", encoding="utf-8")  # new content -> new key -> tokenized again
    assert bytes(load_tokens(config(corpus, tmp_path), tokenizer).astype(np.uint8)) == b"changed"
    assert tokenizer.calls == 2
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_cache_dir_falls_back_to_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTZOO_CACHE", str(tmp_path / "env"))
    corpus = tmp_path / "a.txt"
    corpus.write_text("abc", encoding="utf-8")
    load_tokens(DataConfig(source=str(corpus)), CountingBytes())
    assert len(list((tmp_path / "env").rglob("*.bin"))) == 1


def test_the_tokenizer_state_is_part_of_the_cache_key(tmp_path):
    class Shifted(CountingBytes):
        def __init__(self, shift):
            super().__init__()
            self.shift = shift

        def encode(self, text):
            return [(i + self.shift) % 256 for i in super().encode(text)]

        def state(self):
            return {"shift": self.shift}

    corpus = tmp_path / "a.txt"
    corpus.write_text("ab", encoding="utf-8")
    assert load_tokens(config(corpus, tmp_path), Shifted(0)).tolist() == [97, 98]
    assert load_tokens(config(corpus, tmp_path), Shifted(1)).tolist() == [98, 99]


def test_folders_are_read_in_order_with_end_of_text_between_files(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("BB", encoding="utf-8")
    (folder / "a.txt").write_text("A", encoding="utf-8")
    (folder / "sub" / "c.txt").write_text("C", encoding="utf-8")
    (folder / "notes.md").write_text("ignored", encoding="utf-8")
    tokens = load_tokens(config(folder, tmp_path), CountingBytes())
    assert tokens.tolist() == [65, 256, 66, 66, 256, 67]


def test_large_files_are_tokenized_in_chunks_written_incrementally(tmp_path, monkeypatch, shared_data):
    verdict = shared_data("the-verdict.txt")
    monkeypatch.setattr(data_module, "CHUNK_CHARS", 500)
    monkeypatch.setattr(data_module, "CHUNKS_PER_BATCH", 3)
    tokenizer = CountingBytes()
    tokens = load_tokens(config(verdict, tmp_path), tokenizer)
    expected = verdict.read_text(encoding="utf-8").encode("utf-8")
    assert bytes(tokens.astype(np.uint8)) == expected
    # ~20 kB in chunks of 500 characters (plus the rest of their line), at most 3 per call
    assert tokenizer.calls > 3 and max(tokenizer.batch_sizes) == 3


def test_builtin_corpus_is_pythons_own_help_text(tmp_path):
    from pydoc_data.topics import topics

    tokens = load_tokens(config("builtin:pydoc", tmp_path), CountingBytes())
    n_bytes = sum(len(t.encode("utf-8")) for t in topics.values())
    assert len(tokens) == n_bytes + len(topics) - 1
    assert int((np.asarray(tokens) == 256).sum()) == len(topics) - 1


@pytest.mark.parametrize(
    "source, message",
    [
        ("missing.txt", "missing.txt: no such file"),
        ("empty_dir", "holds no .txt, .jsonl or .parquet files"),
        ("builtin:nope", "unknown built-in corpus"),
    ],
)
def test_bad_sources_name_what_is_wrong(tmp_path, monkeypatch, source, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(GptzooError, match=message):
        load_tokens(config(source, tmp_path), CountingBytes())


def test_token_dtype_is_chosen_by_vocabulary_size():
    assert token_dtype(257) == np.uint16
    assert token_dtype(65_536) == np.uint16  # ids 0..65535
    assert token_dtype(65_537) == np.uint32
    assert token_dtype(100_277) == np.uint32


# ---- order -------------------------------------------------------------------------------


def test_sampler_shuffles_each_epoch_and_resumes_where_it_stopped():
    straight = WindowSampler(10, seed=3)
    drawn = np.concatenate([straight.take(4) for _ in range(5)])  # two full epochs
    assert sorted(drawn[:10]) == list(range(10)) and sorted(drawn[10:]) == list(range(10))
    assert drawn[:10].tolist() != drawn[10:].tolist()
    again, other = WindowSampler(10, seed=3), WindowSampler(10, seed=4)
    assert np.array_equal(drawn, np.concatenate([again.take(4) for _ in range(5)]))
    assert not np.array_equal(drawn, np.concatenate([other.take(4) for _ in range(5)]))

    first = WindowSampler(10, seed=3)
    head = np.concatenate([first.take(4) for _ in range(3)])
    resumed = WindowSampler(10, seed=3, **first.state())
    tail = np.concatenate([resumed.take(4) for _ in range(2)])
    assert np.array_equal(np.concatenate([head, tail]), drawn)


def test_a_batch_larger_than_the_data_wraps_into_the_next_epoch():
    sampler = WindowSampler(3, seed=0)
    drawn = sampler.take(7)
    assert len(drawn) == 7 and sorted(drawn[:3]) == [0, 1, 2] and sorted(drawn[3:6]) == [0, 1, 2]
    assert sampler.state() == {"epoch": 2, "position": 1}


def test_spread_indices_cover_the_range_evenly():
    assert spread_indices(5, 10).tolist() == [0, 1, 2, 3, 4]
    assert spread_indices(101, 5).tolist() == [0, 25, 50, 75, 100]


def test_a_failure_while_tokenizing_leaves_no_cache_file(tmp_path, monkeypatch):
    class FailsOnSecondBatch(CountingBytes):
        def encode_batch(self, texts):
            if self.calls == 1:
                raise RuntimeError("tokenizer crashed")
            return super().encode_batch(texts)

    monkeypatch.setattr(data_module, "CHUNK_CHARS", 10)
    monkeypatch.setattr(data_module, "CHUNKS_PER_BATCH", 1)
    corpus = tmp_path / "a.txt"
    corpus.write_text("line one\nline two\nline three\n", encoding="utf-8")
    with pytest.raises(RuntimeError, match="crashed"):
        load_tokens(config(corpus, tmp_path), FailsOnSecondBatch())
    assert list((tmp_path / "cache").rglob("*")) == [tmp_path / "cache" / "tokens"]
    tokenizer = CountingBytes()
    assert (
        bytes(load_tokens(config(corpus, tmp_path), tokenizer).astype(np.uint8)) == b"line one\nline two\nline three\n"
    )


# ---- JSON Lines and Parquet --------------------------------------------------------------


def test_json_lines_records_are_documents_read_from_the_text_field(tmp_path):
    shard = tmp_path / "shard.jsonl"
    shard.write_text(
        '{"id": 1, "text": "A"}\n\n{"id": 2, "text": "BB"}\n{"id": 3, "text": ""}\n{"id": 4, "text": "C"}\n',
        encoding="utf-8",
    )
    tokens = load_tokens(config(shard, tmp_path), CountingBytes())
    assert tokens.tolist() == [
        65,
        256,
        66,
        66,
        256,
        256,
        67,
    ]  # one <|endoftext|> between records, an empty one included
    other = tmp_path / "other.jsonl"
    other.write_text('{"body": "Z"}\n', encoding="utf-8")
    assert load_tokens(config(other, tmp_path, text_field="body"), CountingBytes()).tolist() == [90]
    with pytest.raises(GptzooError, match=r"other.jsonl:1: no text field 'text' \(fields: body\); set data.text_field"):
        load_tokens(config(other, tmp_path), CountingBytes())
    other.write_text('{"text": 42}\n', encoding="utf-8")
    with pytest.raises(GptzooError, match=r"other.jsonl:1: field 'text' holds 42, not text; write it as a JSON string"):
        load_tokens(config(other, tmp_path), CountingBytes())
    other.write_text('{"body": "Z"}\nnot json\n', encoding="utf-8")
    with pytest.raises(GptzooError, match=r"other.jsonl:2: not a JSON object"):
        load_tokens(config(other, tmp_path, text_field="body"), CountingBytes())


def test_a_folder_of_parquet_shards_streams_its_text_column(tmp_path, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    folder = tmp_path / "fineweb"
    folder.mkdir()
    pq.write_table(pa.table({"text": ["A", "BB"], "score": [0.5, 0.9]}), folder / "000.parquet", row_group_size=1)
    pq.write_table(pa.table({"text": ["C"], "score": [0.1]}), folder / "001.parquet")
    (folder / "001.jsonl").write_text('{"text": "D"}\n', encoding="utf-8")  # after 001.parquet: files in sorted order
    monkeypatch.setattr(data_module, "RECORDS_PER_BATCH", 2)
    tokenizer = CountingBytes()
    tokens = load_tokens(config(folder, tmp_path), tokenizer)
    assert tokens.tolist() == [65, 256, 66, 66, 256, 68, 256, 67]  # 000.parquet, 001.jsonl, 001.parquet
    assert max(tokenizer.batch_sizes) == 2
    with pytest.raises(GptzooError, match=r"000.parquet: no column 'content' \(columns: text, score\)"):
        load_tokens(config(folder, tmp_path, text_field="content"), CountingBytes())


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    shard = tmp_path / "a.parquet"
    shard.write_bytes(b"PAR1")
    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(
        GptzooError, match=r"reading Parquet needs pyarrow; install the parquet extra: pip install 'gptzoo\[parquet\]'"
    ):
        load_tokens(config(shard, tmp_path), CountingBytes())


def test_metrics_also_stream_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gptzoo.recipes.config.schema import validate_run_config
    from gptzoo.recipes.runs.metrics import read_metrics
    from gptzoo.recipes.training.loop import train

    config = validate_run_config(
        {
            "model": {"context_length": 8, "d_model": 16, "n_layers": 1, "n_heads": 2},
            "data": {"task": {"name": "induction", "vocab_size": 10, "val_examples": 4}},
            "train": {
                "max_steps": 4,
                "eval_interval": 2,
                "eval_batches": 1,
                "batch_size": 2,
                "sample_tokens": 0,
                "device": "cpu",
                "tensorboard": True,
            },
        },
        "t",
    )
    train(config, tmp_path / "run", progress=False, log=lambda m: None)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("val_loss")]
    expected = [(r["step"], r["val_loss"]) for r in read_metrics(tmp_path / "run")]
    assert [s for s, _ in logged] == [2, 4] and logged == [(s, pytest.approx(v, rel=1e-6)) for s, v in expected]
    assert "val_accuracy" in events.Tags()["scalars"]
    logits = [(e.step, e.value) for e in events.Scalars("max_attention_logit/layer0")]  # one per layer, as logged
    expected = [(r["step"], r["max_attention_logit"][0]) for r in read_metrics(tmp_path / "run")]
    assert logits == [(s, pytest.approx(v, rel=1e-6)) for s, v in expected]


class CountingTokenizer:
    """``tokenizer``, counting the characters it is given to encode."""

    def __init__(self, tokenizer):
        self.tokenizer, self.characters = tokenizer, 0

    def encode(self, text):
        self.characters += len(text)
        return self.tokenizer.encode(text)


def test_a_huge_text_is_tokenized_only_as_far_as_the_classifier_reads():
    from gptzoo.plugins.tokenizers import ByteTokenizer, TiktokenParams, TiktokenTokenizer

    byte = CountingTokenizer(ByteTokenizer(ByteTokenizer.Params()))
    assert leading_ids(byte, "é" * 10**7, 5) == [0xC3, 0xA9, 0xC3, 0xA9, 0xC3]  # é is C3 A9 in UTF-8
    assert byte.characters < 1000  # not the 10 million characters
    assert leading_ids(byte, "hi", 5) == [ord("h"), ord("i")]  # a short text whole

    bpe = CountingTokenizer(TiktokenTokenizer(TiktokenParams(encoding="gpt2")))
    for text in ("The quick brown fox jumps over the lazy dog. " * 20_000, "x" * 3000 + " and a dog" * 20_000):
        bpe.characters = 0
        assert leading_ids(bpe, text, 32) == bpe.tokenizer.encode(text)[:32]  # training's truncation of the whole
        assert bpe.characters < 20_000  # of 900,000 and 203,000
