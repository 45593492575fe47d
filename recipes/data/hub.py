"""Corpora from the Hugging Face Hub: ``data.source = "hf://datasets/ORG/NAME"``.

The source names a dataset repository, optionally a revision after ``@`` and a config and split
as query parameters: ``hf://datasets/HuggingFaceFW/fineweb@main?config=sample-10BT&split=train``
(split defaults to ``train``). Records are streamed through ``datasets`` (nothing is converted
or copied whole), and each record's ``data.text_field`` is one document, as a JSON Lines record's is.

The token cache is keyed by the commit the revision resolves to (asked of the Hub, or read from
the local Hub cache when it is offline), not by the content, so a large dataset is read once.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from gptzoo.core import ConfigError, GptzooError

HUB_PREFIX = "hf://datasets/"
HUB_FORM = "hf://datasets/ORG/NAME[@REVISION][?config=CONFIG&split=SPLIT]"
INSTALL = "pip install 'gptzoo[datasets]'"
COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class HubSource:
    repo_id: str
    revision: str | None
    config: str | None
    split: str


def is_hub_source(source: str) -> bool:
    return source.startswith("hf://")


def parse_hub_source(source: str) -> HubSource:
    """The parts of ``hf://datasets/ORG/NAME[@REVISION][?config=..&split=..]``; a ConfigError names what is wrong."""
    if not source.startswith(HUB_PREFIX):
        raise ConfigError(f"data.source {source!r}: a Hub corpus is a dataset, {HUB_FORM}")
    parts = urlsplit(source)
    path = (parts.netloc + parts.path).removeprefix("datasets/").strip("/")
    repo_id, _, revision = path.partition("@")
    if repo_id.count("/") > 1 or not repo_id or "" in repo_id.split("/"):
        raise ConfigError(f"data.source {source!r}: name the dataset as ORG/NAME ({HUB_FORM})")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"config", "split"})
    if unknown:
        raise ConfigError(f"data.source {source!r}: unknown parameter {unknown[0]!r}; the ones known are config, split")
    config, split = (query.get("config") or [None])[-1], (query.get("split") or ["train"])[-1]
    if config == "" or split == "":
        raise ConfigError(f"data.source {source!r}: give config and split a value, or leave them out")
    return HubSource(repo_id=repo_id, revision=revision or None, config=config, split=split)


def _datasets():  # noqa: ANN202 -- the module, imported on use: an optional extra
    try:
        import datasets
    except ImportError:
        raise GptzooError(f"a Hub corpus (data.source = hf://...) needs the datasets library: {INSTALL}") from None
    return datasets


def hub_commit(source: str) -> str:
    """The commit the source's revision resolves to: asked of the Hub, or read from the local cache offline."""
    hub = parse_hub_source(source)
    revision = hub.revision or "main"
    if COMMIT.fullmatch(revision):
        return revision
    from huggingface_hub import HfApi, constants

    if not constants.HF_HUB_OFFLINE:
        try:
            sha = HfApi().dataset_info(hub.repo_id, revision=revision).sha
        except Exception as err:  # noqa: BLE001 -- network, missing repo, bad revision: all end the same way
            raise GptzooError(f"{source}: cannot resolve revision {revision!r} on the Hub ({err})") from None
        if sha:
            return sha
    ref = _cache_folder(hub) / "refs" / revision
    if ref.is_file():
        return ref.read_text().strip()
    raise GptzooError(
        f"{source}: revision {revision!r} is not in the local Hub cache ({constants.HF_HUB_CACHE}) and the Hub is "
        "offline; unset HF_HUB_OFFLINE or download the dataset first"
    )


def _cache_folder(hub: HubSource) -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / f"datasets--{hub.repo_id.replace('/', '--')}"


def _snapshot(hub: HubSource, commit: str) -> Path:
    folder = _cache_folder(hub) / "snapshots" / commit
    if not folder.is_dir():
        raise GptzooError(
            f"{HUB_PREFIX}{hub.repo_id}: commit {commit} is not in the local Hub cache ({folder.parent}) and the Hub "
            "is offline; unset HF_HUB_OFFLINE or download the dataset first"
        )
    return folder


def hub_texts(source: str, text_field: str) -> Iterator[str]:
    """Each record's ``text_field``, streamed from the dataset at the source's revision."""
    hub = parse_hub_source(source)
    datasets = _datasets()
    from huggingface_hub import constants

    # Offline, datasets does not look in the Hub cache; the snapshot folder there is read as a local
    # dataset, whose files and configs datasets finds by the same rules as the repository's.
    path = _snapshot(hub, hub_commit(source)) if constants.HF_HUB_OFFLINE else hub.repo_id
    try:
        records = datasets.load_dataset(
            str(path),
            name=hub.config,
            split=hub.split,
            revision=None if constants.HF_HUB_OFFLINE else hub.revision,
            streaming=True,
        )
    except Exception as err:  # noqa: BLE001 -- datasets raises many kinds for a missing dataset, config or split
        raise GptzooError(f"{source}: cannot load the dataset ({type(err).__name__}: {err})") from None
    columns = getattr(records, "column_names", None)
    if columns is not None and text_field not in columns:
        raise GptzooError(
            f"{source}: no column {text_field!r} (columns: {', '.join(columns)}); set data.text_field to the one holding the text"
        )
    for number, record in enumerate(records, 1):
        text = record.get(text_field)
        if text is None:
            continue
        if not isinstance(text, str):
            raise GptzooError(f"{source}: record {number}'s {text_field!r} is {type(text).__name__}, not text")
        yield text
