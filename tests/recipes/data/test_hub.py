"""data.source = "hf://datasets/ORG/NAME": a dataset in the local Hub cache, read with the Hub offline."""

import pytest

from gptzoo.core import ConfigError, GptzooError
from gptzoo.plugins.tokenizers import ByteTokenizer
from gptzoo.recipes.config.schema import DataConfig
from gptzoo.recipes.data.hub import parse_hub_source
from gptzoo.recipes.data.tokens import cache_path, load_tokens

pa = pytest.importorskip("pyarrow")
pytest.importorskip("datasets")
import pyarrow.parquet as pq  # noqa: E402 -- after the skips

MAIN = "1" * 40  # the commit refs/main points at
OLDER = "2" * 40  # an earlier commit, named by its hash
EOT = 256  # the byte tokenizer's <|endoftext|>
README = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*.parquet
  - split: test
    path: data/test-*.parquet
- config_name: small
  data_files:
  - split: train
    path: small/*.parquet
---
"""


def snapshot(cache, commit, tables, readme=None):
    """A commit of datasets--org--tiny as the Hub cache lays it out: snapshots/COMMIT/<files>."""
    folder = cache / "datasets--org--tiny" / "snapshots" / commit
    for name, table in tables.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / name)
    if readme:
        (folder / "README.md").write_text(readme, encoding="utf-8")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """HF_HOME in tmp_path, the Hub offline, and org/tiny cached at two commits."""
    import datasets
    from huggingface_hub import constants

    home = tmp_path / "hf"
    cache = home / "hub"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # both libraries read the environment once, at import: set what they read
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
    texts = pa.table
    snapshot(
        cache,
        MAIN,
        {
            "data/train-00000-of-00002.parquet": texts({"text": ["AB", "C"], "id": [1, 2]}),
            "data/train-00001-of-00002.parquet": texts({"text": ["D"], "id": [3]}),
            "data/test-00000-of-00001.parquet": texts({"text": ["T"], "id": [4]}),
            "small/part.parquet": texts({"text": ["S"], "id": [5]}),
        },
        readme=README,
    )
    snapshot(cache, OLDER, {"data/train-00000-of-00001.parquet": texts({"text": ["OLD"], "id": [0]})})
    (cache / "datasets--org--tiny" / "refs").mkdir()
    (cache / "datasets--org--tiny" / "refs" / "main").write_text(MAIN)
    return tmp_path


def tokens(source, tmp_path, **kw):
    data = DataConfig(source=source, cache_dir=str(tmp_path / "cache"), **kw)
    return load_tokens(data, ByteTokenizer(ByteTokenizer.Params())).tolist()


def test_a_hub_dataset_is_a_corpus_of_its_records(hub_cache):
    # records in shard order, one <|endoftext|> between them, as a folder of Parquet shards gives
    assert tokens("hf://datasets/org/tiny", hub_cache) == [65, 66, EOT, 67, EOT, 68]
    assert tokens("hf://datasets/org/tiny?split=test", hub_cache) == [84]
    assert tokens("hf://datasets/org/tiny?config=small", hub_cache) == [83]
    assert tokens(f"hf://datasets/org/tiny@{OLDER}", hub_cache) == [79, 76, 68]


def test_the_cache_key_follows_the_commit_and_the_text_field(hub_cache):
    tokenizer = ByteTokenizer(ByteTokenizer.Params())

    def key(source, **kw):
        return cache_path(DataConfig(source=source, cache_dir=str(hub_cache / "cache"), **kw), tokenizer)

    assert key("hf://datasets/org/tiny") == key("hf://datasets/org/tiny@main") == key(f"hf://datasets/org/tiny@{MAIN}")
    assert key("hf://datasets/org/tiny") != key(f"hf://datasets/org/tiny@{OLDER}")
    assert key("hf://datasets/org/tiny") != key("hf://datasets/org/tiny?split=test")
    assert key("hf://datasets/org/tiny") != key("hf://datasets/org/tiny", text_field="id")


def test_hub_sources_that_cannot_be_read_name_what_is_wrong(hub_cache):
    with pytest.raises(GptzooError, match=r"org/tiny: no column 'body' \(columns: text, id\); set data.text_field"):
        tokens("hf://datasets/org/tiny", hub_cache, text_field="body")
    with pytest.raises(GptzooError, match=r"revision 'v2' is not in the local Hub cache .* unset HF_HUB_OFFLINE"):
        tokens("hf://datasets/org/tiny@v2", hub_cache)
    with pytest.raises(GptzooError, match=r"revision 'main' is not in the local Hub cache"):
        tokens("hf://datasets/org/absent", hub_cache)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("hf://models/org/tiny", "a Hub corpus is a dataset, hf://datasets/ORG/NAME"),
        ("hf://datasets/org/tiny/data", "name the dataset as ORG/NAME"),
        ("hf://datasets/", "name the dataset as ORG/NAME"),
        ("hf://datasets/org/tiny?shard=1", "unknown parameter 'shard'; the ones known are config, split"),
        ("hf://datasets/org/tiny?split=", "give config and split a value, or leave them out"),
    ],
)
def test_malformed_hub_sources_say_the_form(source, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("?", r"\?")):
        parse_hub_source(source)


def test_without_datasets_the_message_says_what_to_install(hub_cache, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(GptzooError, match=r"needs the datasets library: pip install 'gptzoo\[datasets\]'"):
        tokens("hf://datasets/org/tiny", hub_cache)
