"""Committed checkpoints: a run folder's manifest, and checking files against it.

``manifest.json`` names every committed file of a run folder with its size and sha256, the
training step the files belong to, and the plugin, distribution and version that provided each
component of the model. Every reader checks the files it reads against it, so a damaged file,
or a weights file from another step than its training state, is an error naming the file,
never a silent load.

Files are committed together with their manifest by recipes/runs/_journal.py (all or none), under
the folder's writer lock of recipes/runs/_lock.py (one writer at a time).
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from gptzoo.core import CheckpointError, ComponentSpec

MANIFEST = "manifest.json"
FORMAT = 1
APPEND_ONLY = ("metrics.jsonl",)  # committed as a prefix: lines logged after the commit may follow it
HASH_CHUNK = 1 << 24


def note(text: str) -> None:
    """A one-line remark on stderr that needs no action (the CLI's errors go the same way)."""
    print(f"gptzoo: note: {text}", file=sys.stderr)


# ---- the manifest ---------------------------------------------------------------------------


@dataclass
class Manifest:
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {"size", "sha256"}
    step: int | None = None  # the training step of the checkpoint; None for a run saved outside training
    components: dict[str, dict[str, str]] = field(
        default_factory=dict
    )  # config path -> family, name, plugin, distribution, version

    def to_json(self) -> str:
        data = {"format": FORMAT, "step": self.step, "files": self.files, "components": self.components}
        return json.dumps(data, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str, file: Path) -> Manifest:
        try:
            data = json.loads(text)
            files = {str(k): {"size": int(v["size"]), "sha256": str(v["sha256"])} for k, v in data["files"].items()}
            step = data.get("step")
            return cls(files, None if step is None else int(step), dict(data.get("components") or {}))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
            raise CheckpointError(
                f"{file}: unreadable manifest ({type(err).__name__}: {err}); the file is damaged"
            ) from None


def read_manifest(folder: Path) -> Manifest | None:
    """The folder's committed manifest, finishing an interrupted commit first; None if it has none."""
    # Imported here: finishing a commit writes a manifest, so the journal and the lock build on this module.
    from gptzoo.recipes.runs._journal import JOURNAL, recover
    from gptzoo.recipes.runs._lock import RunLock

    if (folder / JOURNAL).exists():
        with RunLock(folder):
            recover(folder)
    file = folder / MANIFEST
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise CheckpointError(f"{file}: not UTF-8 text; the manifest is damaged") from None
    return Manifest.from_json(text, file)


def sha256_of(path: Path, size: int | None = None) -> str:
    """The sha256 of the file's first ``size`` bytes (all of it by default), read in large chunks."""
    digest = hashlib.sha256()
    left = size
    with open(path, "rb", buffering=0) as f:
        if left is None:
            return hashlib.file_digest(f, "sha256").hexdigest()
        while left > 0:
            chunk = f.read(min(HASH_CHUNK, left))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def check_file(folder: Path, manifest: Manifest, name: str) -> None:
    """Raise CheckpointError naming ``name`` unless it is on disk exactly as committed."""
    path = folder / name
    entry = manifest.files.get(name)
    step = f" (the checkpoint of step {manifest.step})" if manifest.step is not None else ""
    if entry is None:
        if path.exists():
            raise CheckpointError(
                f"{path}: not part of the committed run{step} in {folder / MANIFEST}; it was written by an interrupted or foreign process"
            )
        raise CheckpointError(f"{path}: missing; {folder / MANIFEST} names no such file")
    if not path.is_file():
        raise CheckpointError(
            f"{path}: missing, but {folder / MANIFEST} commits it{step}; restore it from a copy of the run"
        )
    size = path.stat().st_size
    prefix = name in APPEND_ONLY
    if size < entry["size"] or (size != entry["size"] and not prefix):
        raise CheckpointError(
            f"{path}: {size:,} bytes, but {MANIFEST} commits {entry['size']:,}{step}; the file was cut short or changed, restore it from a copy"
        )
    if sha256_of(path, entry["size"] if prefix else None) != entry["sha256"]:
        raise CheckpointError(
            f"{path}: its sha256 differs from the one in {MANIFEST}{step}; the file is damaged (bit rot, a bad copy) or was changed, restore it from a copy"
        )


def components_of(config: BaseModel, registry: Any) -> dict[str, dict[str, str]]:
    """Who provided each component of ``config``: {dotted path: family, name, plugin, distribution, version}.

    Walks every field, so new families and per-layer lists of components are covered.
    """
    found: dict[str, dict[str, str]] = {}
    providers = {(e.impl, e.name): e for e in registry.entries()}

    def walk(value: Any, path: str) -> None:
        if isinstance(value, ComponentSpec):
            entry = providers.get((value.impl, value.name))
            if entry is None:  # validated against another registry than the one given here
                found[path] = {
                    "family": "",
                    "name": value.name,
                    "plugin": value.impl.__module__,
                    "distribution": "<code>",
                    "version": "",
                }
            else:
                found[path] = {
                    "family": entry.family,
                    "name": entry.name,
                    "plugin": entry.plugin,
                    "distribution": entry.distribution,
                    "version": entry.version,
                }
        elif isinstance(value, BaseModel):
            for key in type(value).model_fields:
                walk(getattr(value, key), f"{path}.{key}" if path else key)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{path}.{i}")
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{path}.{key}")

    walk(config, "")
    return found


def missing_components(manifest: Manifest | None, registry: Any, source: Path) -> str | None:
    """A message naming each recorded component no installed plugin provides, with what to install."""
    if manifest is None:
        return None
    lines = []
    for path, c in manifest.components.items():
        try:
            registry.get(c["family"], c["name"])
            continue
        except KeyError:
            pass
        if c["distribution"] in ("<code>", ""):
            lines.append(
                f"{path} = '{c['name']}' was registered in code by {c['plugin']}; register it on the registry you load with"
            )
        else:
            pin = f"=={c['version']}" if c["version"] else ""
            lines.append(
                f"{path} = '{c['name']}' comes from plugin '{c['plugin']}' of {c['distribution']} {c['version']}, not installed: pip install '{c['distribution']}{pin}'"
            )
    if not lines:
        return None
    return f"{source}: the run needs components no installed plugin provides:\n  " + "\n  ".join(lines)
