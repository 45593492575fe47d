"""Corpora as token arrays, and the sliding windows a language model trains on.

A corpus is tokenized once and cached on disk as a flat memory-mapped array (uint16 when
the vocabulary fits, else uint32), keyed by the corpus content and the tokenizer (its name,
params and fitted state). Text is read and tokenized in chunks that are appended to the
cache file, so a corpus larger than memory still works; documents are separated by the
end-of-text token.

Windows are views into that array: window i of a ``TokenWindows`` starts at ``i * stride``,
its inputs are ``context_length`` tokens and its targets the same tokens shifted by one.
Nothing is copied until ``batch`` stacks B windows into a (B, T) tensor.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from gptzoo.core import ConfigError, GptzooError, Tokenizer
from gptzoo.recipes.config.schema import BUILTIN_CORPUS, DataConfig
from gptzoo.recipes.data.hub import HUB_FORM, hub_commit, hub_texts, is_hub_source, parse_hub_source
from gptzoo.recipes.research.tasks import TaskExamples, task_splits
from gptzoo.recipes.runs.files import atomic_path

CACHE_ENV = "GPTZOO_CACHE"
CACHE_FORMAT = "tokens-v1"  # bump when the way text becomes tokens changes
CHUNK_CHARS = 1 << 20  # text handed to the tokenizer at once, cut at a line end
CHUNKS_PER_BATCH = 16  # chunks per encode_batch call (tiktoken spreads them over all cores)
RECORDS_PER_BATCH = 4096  # at most this many (short) documents per encode_batch call


# ---- reading a corpus -------------------------------------------------------------------


CORPUS_KINDS = (
    f"a text file, a JSON Lines (.jsonl) or Parquet (.parquet) file, a folder of them, a Hub dataset "
    f"({HUB_FORM}), or {BUILTIN_CORPUS!r}"
)
RECORD_SUFFIXES = (".jsonl", ".parquet")  # one document per record, its text in data.text_field


def _corpus_files(source: str) -> list[Path]:
    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", *RECORD_SUFFIXES))
        if not files:
            raise GptzooError(
                f"{path}: the folder holds no .txt, .jsonl or .parquet files (a corpus is {CORPUS_KINDS})"
            )
        return files
    raise GptzooError(f"{path}: no such file or folder (a corpus is {CORPUS_KINDS})")


def _builtin_documents(source: str) -> list[str]:
    if source != BUILTIN_CORPUS:
        raise ConfigError(f"data.source {source!r}: unknown built-in corpus; the built-in one is {BUILTIN_CORPUS!r}")
    from pydoc_data.topics import topics  # the help texts that ship inside CPython

    return [topics[key] for key in sorted(topics)]


def iter_documents(source: str, text_field: str = "text") -> Iterator[Iterator[str]]:
    """Each document of the corpus as an iterator of text chunks: a text file in chunks of about
    CHUNK_CHARS cut after a newline, each record of a .jsonl or .parquet file or a Hub dataset (its
    ``text_field``) whole."""
    if source.startswith("builtin:"):
        for text in _builtin_documents(source):
            yield iter([text])
        return
    if is_hub_source(source):
        yield from (iter([text]) for text in hub_texts(source, text_field))
        return
    for file in _corpus_files(source):
        if file.suffix == ".jsonl":
            yield from (iter([text]) for text in _jsonl_texts(file, text_field))
        elif file.suffix == ".parquet":
            yield from (iter([text]) for text in _parquet_texts(file, text_field))
        else:
            yield _file_chunks(file)


def _jsonl_texts(file: Path, text_field: str) -> Iterator[str]:
    try:
        with open(file, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise GptzooError(f"{file}:{number}: not a JSON object ({err.msg})") from None
                text = record.get(text_field) if isinstance(record, dict) else None
                if isinstance(record, dict) and text_field in record and not isinstance(text, str):
                    raise GptzooError(
                        f"{file}:{number}: field {text_field!r} holds {json.dumps(text)[:40]}, not text; write it as a JSON string"
                    )
                if not isinstance(text, str):
                    known = ", ".join(record) if isinstance(record, dict) else "none (not an object)"
                    raise GptzooError(
                        f"{file}:{number}: no text field {text_field!r} (fields: {known}); set data.text_field to the one holding the text"
                    )
                yield text
    except UnicodeDecodeError as err:
        raise GptzooError(f"{file}: not UTF-8 text ({err})") from None


def _parquet_texts(file: Path, text_field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise GptzooError(
            f"{file}: reading Parquet needs pyarrow; install the parquet extra: pip install 'gptzoo[parquet]'"
        ) from None
    try:
        parquet = pq.ParquetFile(file)
    except Exception as err:  # noqa: BLE001 -- pyarrow raises ArrowInvalid, OSError, ... for a bad file
        raise GptzooError(f"{file}: not a readable Parquet file ({err})") from None
    if text_field not in parquet.schema_arrow.names:
        raise GptzooError(
            f"{file}: no column {text_field!r} (columns: {', '.join(parquet.schema_arrow.names)}); set data.text_field to the one holding the text"
        )
    for batch in parquet.iter_batches(columns=[text_field], batch_size=1024):  # streamed, a batch of rows at a time
        yield from (text for text in batch.column(0).to_pylist() if text is not None)


def _file_chunks(file: Path) -> Iterator[str]:
    try:
        with open(file, encoding="utf-8") as f:
            while chunk := f.read(CHUNK_CHARS):
                yield chunk + f.readline()
    except UnicodeDecodeError as err:
        raise GptzooError(f"{file}: not UTF-8 text ({err})") from None


def corpus_text(source: str, text_field: str = "text") -> str:
    """The whole corpus as one string (documents separated by blank lines), for fitting a tokenizer."""
    return "\n\n".join("".join(chunks) for chunks in iter_documents(source, text_field))


def corpus_digest(source: str) -> str:
    """A hash of the corpus content, so an edited file is tokenized again (a Hub dataset's: its commit)."""
    digest = hashlib.sha256()
    if is_hub_source(source):
        hub = parse_hub_source(source)
        digest.update(f"{hub.repo_id}|{hub_commit(source)}|{hub.config}|{hub.split}".encode())
        return digest.hexdigest()
    if source.startswith("builtin:"):
        for text in _builtin_documents(source):
            digest.update(text.encode("utf-8") + b"\0")
        return digest.hexdigest()
    root = Path(source).expanduser()
    for file in _corpus_files(source):
        digest.update(str(file.relative_to(root) if file != root else file.name).encode() + b"\0")
        with open(file, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


# ---- tokenizing once, caching on disk ---------------------------------------------------


def fit_tokenizer(data: DataConfig, tokenizer: Tokenizer) -> bool:
    """Fit a tokenizer that learns its vocabulary on the corpus; True if it was fitted now."""
    if not tokenizer.needs_fit or tokenizer.is_fitted:
        return False
    tokenizer.fit(corpus_text(data.source, data.text_field))
    return True


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def cache_dir(data: DataConfig) -> Path:
    folder = data.cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "gptzoo"
    return Path(folder).expanduser() / "tokens"


def tokenizer_digest(tokenizer: Tokenizer) -> str:
    description = {
        "class": f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}",
        "params": tokenizer.params.model_dump(mode="json"),
        "state": tokenizer.state(),
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


def cache_path(data: DataConfig, tokenizer: Tokenizer) -> Path:
    files = [] if data.source.startswith(("builtin:", "hf://")) else _corpus_files(data.source)
    records = is_hub_source(data.source) or any(f.suffix in RECORD_SUFFIXES for f in files)
    field = f"|{data.text_field}" if records else ""  # which field of the records was read
    key = hashlib.sha256(
        f"{CACHE_FORMAT}|{corpus_digest(data.source)}{field}|{tokenizer_digest(tokenizer)}".encode()
    ).hexdigest()
    return cache_dir(data) / f"{key[:32]}.{token_dtype(tokenizer.vocab_size).name}.bin"


def load_tokens(data: DataConfig, tokenizer: Tokenizer, progress: bool = False) -> np.ndarray:
    """The corpus as a read-only memory-mapped token array, tokenized on the first call only."""
    if tokenizer.needs_fit and not tokenizer.is_fitted:
        raise GptzooError(
            f"the '{type(tokenizer).__name__}' tokenizer is not fitted: fit it on the corpus first (fit_tokenizer)"
        )
    path = cache_path(data, tokenizer)
    dtype = token_dtype(tokenizer.vocab_size)
    if not path.is_file():
        _write_tokens(data, tokenizer, dtype, path, progress)
    if path.stat().st_size == 0:
        raise GptzooError(f"{data.source}: the corpus is empty")
    return np.memmap(path, dtype=dtype, mode="r")


def _write_tokens(data: DataConfig, tokenizer: Tokenizer, dtype: np.dtype, path: Path, progress: bool) -> None:
    limit = np.iinfo(dtype).max
    eot = np.asarray([tokenizer.eot_id], dtype=dtype).tobytes()
    with (
        atomic_path(path) as tmp,
        open(tmp, "wb") as out,
        tqdm(desc=f"tokenizing {data.source}", unit=" chunks", disable=not progress) as bar,
    ):
        pending: list[
            tuple[str, bool]
        ] = []  # (text, whether <|endoftext|> goes before it: a document's first chunk after another document)
        pending_chars = 0

        def flush() -> None:
            nonlocal pending_chars
            for (_, separated), ids in zip(pending, tokenizer.encode_batch([text for text, _ in pending]), strict=True):
                array = np.asarray(ids, dtype=np.int64)
                if array.size and (array.min() < 0 or array.max() > limit):
                    raise GptzooError(
                        f"the tokenizer produced id {array.max()} outside its vocabulary of {tokenizer.vocab_size}"
                    )
                out.write((eot if separated else b"") + array.astype(dtype).tobytes())
            bar.update(len(pending))
            pending.clear()
            pending_chars = 0

        for i, chunks in enumerate(iter_documents(data.source, data.text_field)):
            first = True
            for chunk in chunks:
                pending.append((chunk, i > 0 and first))
                pending_chars += len(chunk)
                first = False
                # many short records (JSON Lines, Parquet) go to the tokenizer together, as a few long chunks do
                if pending_chars >= CHUNKS_PER_BATCH * CHUNK_CHARS or len(pending) >= RECORDS_PER_BATCH:
                    flush()
            if first:
                pending.append(("", i > 0))  # an empty document still gets its separator
        flush()


# ---- windows and batches ----------------------------------------------------------------


class TokenWindows:
    """Sliding windows over a token array: inputs tokens[s:s+T], targets tokens[s+1:s+T+1], s = i * stride.

    Holds only the array (often a memmap); each window is a view into it.
    """

    def __init__(self, tokens: np.ndarray, context_length: int, stride: int):
        self.tokens = tokens
        self.context_length = context_length
        self.stride = stride

    def __len__(self) -> int:
        # The last window needs T + 1 tokens from its start (its targets reach one further).
        return max(0, (len(self.tokens) - self.context_length - 1) // self.stride + 1)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} of {len(self)}")
        start = i * self.stride
        end = start + self.context_length
        return self.tokens[start:end], self.tokens[start + 1 : end + 1]

    def batch(self, indices: list[int] | np.ndarray) -> tuple[Tensor, Tensor]:
        """Stack the windows at ``indices`` -> inputs, targets (B, T) int64."""
        starts = np.asarray(indices, dtype=np.int64) * self.stride  # (B,)
        rows = starts[:, None] + np.arange(self.context_length + 1)  # (B, T+1)
        chunk = torch.from_numpy(self.tokens[rows].astype(np.int64))  # (B, T+1)
        return chunk[:, :-1], chunk[:, 1:]

    def describe(self) -> str:
        return f"{len(self.tokens):,} tokens"


def split_windows(tokens: np.ndarray, context_length: int, data: DataConfig) -> tuple[TokenWindows, TokenWindows]:
    """Train and validation windows: the token array is cut once, so no window straddles the two."""
    stride = data.stride or context_length
    n_train = int(len(tokens) * (1 - data.val_fraction))
    train, val = (
        TokenWindows(tokens[:n_train], context_length, stride),
        TokenWindows(tokens[n_train:], context_length, stride),
    )
    for name, part in (("training", train), ("validation", val)):
        if not len(part):
            raise GptzooError(
                f"{data.source}: {len(tokens):,} tokens leave the {name} split {len(part.tokens):,} tokens, fewer than "
                f"context_length + 1 = {context_length + 1}; use a larger corpus, a smaller context_length or another data.val_fraction"
            )
    return train, val


def load_splits(
    data: DataConfig, tokenizer: Tokenizer, context_length: int, progress: bool = False
) -> tuple[TokenWindows | TaskExamples, TokenWindows | TaskExamples]:
    """Training and validation windows of the corpus (tokenized into the cache on first use), or the task's two splits."""
    if data.task is not None:
        return task_splits(data.task, context_length, data.seed)
    return split_windows(load_tokens(data, tokenizer, progress), context_length, data)


class WindowSampler:
    """Endless shuffled window order: epoch e is a permutation seeded by (data.seed, e).

    The position (epoch, index within it) is all the state, so a resumed run continues with
    exactly the windows an uninterrupted one would have drawn.
    """

    def __init__(self, n_windows: int, seed: int, epoch: int = 0, position: int = 0):
        self.n_windows = n_windows
        self.seed = seed
        self.epoch = epoch
        self.position = position
        self._order = self._permutation(epoch)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` window indices, running into the next epoch when this one ends."""
        parts = []
        while n:
            part = self._order[self.position : self.position + n]
            parts.append(part)
            n -= len(part)
            self.position += len(part)
            if self.position == self.n_windows:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
        return np.concatenate(parts)

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}


def spread_indices(n_windows: int, count: int) -> np.ndarray:
    """``count`` window indices spread evenly over ``n_windows`` (all of them when there are fewer)."""
    if count >= n_windows:
        return np.arange(n_windows)
    return np.linspace(0, n_windows - 1, count).round().astype(np.int64)


def leading_ids(tokenizer: Tokenizer, text: str, count: int) -> list[int]:
    """The first ``count`` ids of ``text``, as truncating the whole text's ids gives them (a classifier's training),
    without tokenizing all of a long text: prefixes grow fourfold until two of them, each with more ids than
    ``count`` (a cut changes only the tokens at its end), agree on the first ``count``; the work stays within a
    few times what ``count`` ids take."""
    size, agreed = 4 * (count + 2), None
    while size < len(text):
        ids = tokenizer.encode(text[:size])
        if len(ids) > count + 1:
            if ids[:count] == agreed:
                return agreed
            agreed = ids[:count]
        size *= 4
    return tokenizer.encode(text)[:count]
