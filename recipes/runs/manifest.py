"""Committed checkpoints: a run folder's manifest, its lock, and writing several files as one unit.

``manifest.json`` names every committed file of a run folder with its size and sha256, the
training step the files belong to, and the plugin, distribution and version that provided each
component of the model. Every reader checks the files it reads against it, so a damaged file,
or a weights file from another step than its training state, is an error naming the file,
never a silent load.

A commit writes its files as one unit, all or none:

1. each file is written to a temporary name beside its final one (``.NAME.XXXX.tmp``), hashed as
   its bytes go out (nothing is read back) and flushed to disk;
2. the journal ``.manifest.pending.json`` (the new manifest plus those temporary names) is
   written and renamed into place: from here on the commit is decided;
3. each temporary file is renamed over its final name;
4. ``manifest.json`` is replaced by the new manifest and the journal removed.

A crash before 2 leaves the previous checkpoint whole, and its temporary files are removed by
the next writer; a crash after 2 is finished by the next process that opens the folder (it
completes the renames from the journal), so the folder holds either the old checkpoint or the
new one. One process writes a folder at a time: writers hold ``.gptzoo.lock`` (an OS lock, so
it is released when the process dies) and record who they are in ``.gptzoo.owner.json``; a
second writer is refused at once with the holder's PID.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from filelock import FileLock, Timeout
from pydantic import BaseModel

from gptzoo.core import CheckpointError, ComponentSpec

MANIFEST = "manifest.json"
JOURNAL = ".manifest.pending.json"
LOCK = ".gptzoo.lock"
OWNER = ".gptzoo.owner.json"
FORMAT = 1
APPEND_ONLY = ("metrics.jsonl",)  # committed as a prefix: lines logged after the commit may follow it
HASH_CHUNK = 1 << 24


class RunLockedError(CheckpointError):
    """Another process is writing the run folder."""


class DiskFullError(CheckpointError):
    """No space left while writing a checkpoint; the last committed one is intact."""


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


# ---- the lock -------------------------------------------------------------------------------


class RunLock:
    """The folder's writer lock, re-entrant within one process; refuses at once when another holds it.

    ``.gptzoo.lock`` stays in the folder after use: a lock file unlinked on release could be held
    by two processes at once (one on the unlinked file, one on a new one). Only a folder this lock
    created and that was left holding nothing else is removed, by its holder before it releases.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.lock = FileLock(self.folder / LOCK, blocking=False, is_singleton=True, thread_local=False)

    def __enter__(self) -> RunLock:
        self.created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire()
        except Timeout:
            raise RunLockedError(
                f"{self.folder}: being written by {holder(self.folder)}; wait for it to finish, or choose another folder"
            ) from None
        if self.lock.lock_counter == 1:
            owner = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "command": " ".join(sys.argv),
                "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            try:
                (self.folder / OWNER).write_text(json.dumps(owner) + "\n", encoding="utf-8")
            except OSError as err:
                self.__exit__()
                if is_disk_full(err):
                    raise DiskFullError(
                        f"{self.folder}: no space left on the device, not even for {OWNER}; nothing was changed. Free some space and run again"
                    ) from None
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.lock.lock_counter == 1:  # before releasing: afterwards the files may be the next holder's
            (self.folder / OWNER).unlink(missing_ok=True)
            if self.created and [p.name for p in self.folder.iterdir()] == [LOCK]:
                # A process that opened the lock file meanwhile and gets its flock after the release
                # finds the file unlinked and is refused (filelock >= 4): never two holders.
                (self.folder / LOCK).unlink()
                with contextlib.suppress(
                    OSError
                ):  # a writer that came meanwhile made a new lock file, or NFS keeps a .nfs file until the close
                    self.folder.rmdir()
        self.lock.release()


def holder(folder: Path) -> str:
    try:
        owner = json.loads((folder / OWNER).read_text(encoding="utf-8"))
        return f"PID {owner['pid']} on {owner['host']} ('{owner['command']}', since {owner['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (its PID is not recorded yet)"


# ---- committing -----------------------------------------------------------------------------


def disk_full_error(folder: Path, writing: str) -> DiskFullError:
    """The error for a full disk while writing ``writing`` into ``folder``, saying which checkpoint is intact."""
    previous = read_manifest(folder)
    if previous is None:
        kept = "no earlier checkpoint was committed"
    else:
        kept = (
            "the committed checkpoint"
            + (f" of step {previous.step}" if previous.step is not None else "")
            + " is intact"
        )
    return DiskFullError(
        f"{folder}: no space left on the device while writing {writing}; nothing was replaced and {kept}. Free some space and run again"
    )


class HashingFile:
    """A binary file that hashes and counts what is written to it; remembers a failed write."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.digest = hashlib.sha256()
        self.size = 0
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            self.f.write(data)
        except OSError as err:
            self.error = err
            raise
        self.digest.update(data)
        n = memoryview(data).nbytes
        self.size += n
        return n

    def flush(self) -> None:
        self.f.flush()


def is_disk_full(err: BaseException, written: HashingFile | None = None) -> bool:
    if written is not None and written.error is not None:
        err = written.error
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(err)  # torch and safetensors wrap the OSError in their own errors


def _fsync(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some systems cannot open folders; the renames are still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def new_temporary(folder: Path, name: str) -> Path:
    """A new empty file beside ``name``, with the permissions of an ordinary new file (the umask's; mkstemp's are 0600)."""
    while True:
        tmp = folder / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def _write_small(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all (temporary file, flushed, renamed)."""
    tmp = new_temporary(path.parent, path.name)
    try:
        with open(tmp, "wb") as f:
            f.write(text.encode("utf-8"))
            _fsync(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Commit:
    """Files staged under temporary names, then committed together with the new manifest.

    Files of the previous manifest that are not staged again stay committed (when they are
    unchanged on disk); append-only files (metrics.jsonl) are committed as they stand.
    """

    def __init__(
        self, folder: Path, step: int | None = None, components: dict[str, dict[str, str]] | None = None
    ) -> None:
        self.folder = Path(folder)
        self.step = step
        self.components = components
        self.staged: dict[str, tuple[Path, dict[str, Any]]] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[HashingFile]:
        """A file to write ``name``'s new content into; it is hashed as it is written."""
        tmp = new_temporary(self.folder, name)
        written = None
        try:
            with open(tmp, "wb") as f:
                written = HashingFile(f)
                yield written
                _fsync(f)
        except BaseException as err:
            tmp.unlink(missing_ok=True)
            if isinstance(err, Exception) and is_disk_full(err, written):
                raise self.disk_full(name) from None
            raise
        self.staged[name] = (tmp, {"size": written.size, "sha256": written.digest.hexdigest()})

    def stage_text(self, name: str, text: str) -> None:
        with self.stage(name) as f:
            f.write(text.encode("utf-8"))

    def disk_full(self, name: str) -> DiskFullError:
        step = f" of step {self.step}" if self.step is not None else ""
        return disk_full_error(self.folder, f"{name}{step}")

    def discard(self) -> None:
        for tmp, _ in self.staged.values():
            tmp.unlink(missing_ok=True)
        self.staged.clear()

    def commit(self) -> Manifest:
        previous = read_manifest(self.folder) or Manifest()
        files = {
            name: entry
            for name, entry in previous.files.items()
            if name not in self.staged and (self.folder / name).is_file()
        }
        files |= {name: entry for name, (_, entry) in self.staged.items()}
        for name in APPEND_ONLY:
            path = self.folder / name
            if path.is_file() and name not in self.staged:
                files[name] = {"size": path.stat().st_size, "sha256": sha256_of(path)}
        step = self.step if self.step is not None else previous.step
        manifest = Manifest(files, step, self.components if self.components is not None else previous.components)
        journal = {
            "manifest": json.loads(manifest.to_json()),
            "staged": {name: tmp.name for name, (tmp, _) in self.staged.items()},
        }
        try:
            _write_small(self.folder / JOURNAL, json.dumps(journal, indent=2) + "\n")
        except OSError as err:
            self.discard()
            if is_disk_full(err):
                raise self.disk_full(JOURNAL) from None
            raise
        _fsync_folder(self.folder)
        recover(self.folder)  # the journal is written: from here a crash is finished by the next opener
        self.staged.clear()
        return manifest


def recover(folder: Path) -> None:
    """Finish a commit whose journal was written, or drop it; then remove stale temporary files.

    Call with the folder's lock held.
    """
    journal_file = folder / JOURNAL
    if journal_file.exists():
        try:
            journal = json.loads(journal_file.read_text(encoding="utf-8"))
            manifest = Manifest.from_json(json.dumps(journal["manifest"]), journal_file)
            staged = dict(journal["staged"])
        except (OSError, ValueError, KeyError, TypeError, CheckpointError):
            journal = None  # written by rename, so never half-written; unreadable means damaged: drop it
        if journal is not None:
            for name, tmp_name in staged.items():
                tmp = folder / tmp_name
                if tmp.exists():
                    os.replace(tmp, folder / name)
            _write_small(folder / MANIFEST, manifest.to_json())
            _fsync_folder(folder)
        journal_file.unlink(missing_ok=True)
    for stale in folder.glob(".*.tmp"):
        if stale.is_file():
            stale.unlink(missing_ok=True)


@contextmanager
def run_writer(folder: Path) -> Iterator[None]:
    """Hold the folder's lock; before the block, finish or drop what a crashed writer left.

    A folder the block created and left with nothing in it is removed again.
    """
    with RunLock(folder):
        recover(Path(folder))
        yield
