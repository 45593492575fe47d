"""Writing several files of a run folder as one unit, all or none, with the new manifest.

A commit:

1. each file is written to a temporary name beside its final one (``.NAME.XXXX.tmp``), hashed as
   its bytes go out (nothing is read back) and flushed to disk;
2. the journal ``.manifest.pending.json`` (the new manifest plus those temporary names) is
   written and renamed into place: from here on the commit is decided;
3. each temporary file is renamed over its final name;
4. ``manifest.json`` is replaced by the new manifest and the journal removed.

A folder of files can be committed the same way (a sharded checkpoint, written by every process
of an FSDP run into a temporary folder): step 3 replaces the committed folder of that name with
it, and the manifest names each of its files. A commit can also drop a file or folder that no
longer belongs to the checkpoint (the weights file an FSDP checkpoint supersedes).

A crash before 2 leaves the previous checkpoint whole, and its temporary files are removed by
the next writer; a crash after 2 is finished by the next process that opens the folder (it
completes the renames from the journal), so the folder holds either the old checkpoint or the
new one. Commits are made under the folder's writer lock (recipes/runs/_lock.py).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from gptzoo.core import CheckpointError
from gptzoo.recipes.runs.manifest import APPEND_ONLY, MANIFEST, Manifest, read_manifest, sha256_of

JOURNAL = ".manifest.pending.json"


class DiskFullError(CheckpointError):
    """No space left while writing a checkpoint; the last committed one is intact."""


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


def new_temporary_folder(folder: Path, name: str) -> Path:
    """A new empty folder beside ``name``, removed by the next writer unless a commit renames it into place."""
    while True:
        tmp = folder / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue


def _remove(path: Path) -> None:
    """Remove a file or a whole folder, if there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


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
    unchanged on disk); append-only files (metrics.jsonl) are committed as they stand, unless
    ``extend_logs`` is false (a commit outside training, which must not commit what a crashed
    session logged after its last checkpoint).
    """

    def __init__(
        self,
        folder: Path,
        step: int | None = None,
        components: dict[str, dict[str, str]] | None = None,
        extend_logs: bool = True,
    ) -> None:
        self.folder = Path(folder)
        self.extend_logs = extend_logs
        self.step = step
        self.components = components
        self.staged: dict[str, tuple[Path, dict[str, Any]]] = {}
        self.staged_folders: dict[str, tuple[Path, dict[str, dict[str, Any]]]] = {}
        self.dropped: set[str] = set()

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

    def stage_folder(self, name: str, written: Path, entries: dict[str, dict[str, Any]]) -> None:
        """The folder ``written`` (from new_temporary_folder, its files flushed to disk) to replace the
        folder ``name``; ``entries`` gives each of its files' size and sha256, by name within it."""
        self.staged_folders[name] = (written, entries)

    def drop(self, name: str) -> None:
        """Remove the file or folder ``name`` from the checkpoint, and from the disk once committed."""
        if (self.folder / name).exists():
            self.dropped.add(name)

    def disk_full(self, name: str) -> DiskFullError:
        step = f" of step {self.step}" if self.step is not None else ""
        return disk_full_error(self.folder, f"{name}{step}")

    def discard(self) -> None:
        for tmp, _ in (*self.staged.values(), *self.staged_folders.values()):
            _remove(tmp)
        self.staged.clear()
        self.staged_folders.clear()

    def _replaces(self, name: str) -> bool:
        """Whether the committed file ``name`` is replaced or dropped by this commit (also as part of a folder)."""
        replaced = (*self.staged, *self.staged_folders, *self.dropped)
        return name in replaced or any(name.startswith(f"{other}/") for other in replaced)

    def commit(self) -> Manifest:
        previous = read_manifest(self.folder) or Manifest()
        files = {
            name: entry
            for name, entry in previous.files.items()
            if not self._replaces(name) and (self.folder / name).is_file()
        }
        files |= {name: entry for name, (_, entry) in self.staged.items()}
        for folder_name, (_, entries) in self.staged_folders.items():
            files |= {f"{folder_name}/{name}": entry for name, entry in entries.items()}
        for name in APPEND_ONLY:
            path = self.folder / name
            if self.extend_logs and path.is_file() and name not in self.staged:
                files[name] = {"size": path.stat().st_size, "sha256": sha256_of(path)}
        step = self.step if self.step is not None else previous.step
        manifest = Manifest(files, step, self.components if self.components is not None else previous.components)
        journal = {
            "manifest": json.loads(manifest.to_json()),
            "staged": {name: tmp.name for name, (tmp, _) in (*self.staged.items(), *self.staged_folders.items())},
        }
        if self.dropped:
            journal["dropped"] = sorted(self.dropped)
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
        self.staged_folders.clear()
        self.dropped.clear()
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
            dropped = list(journal.get("dropped", []))
        except (OSError, ValueError, KeyError, TypeError, CheckpointError):
            journal = None  # written by rename, so never half-written; unreadable means damaged: drop it
        if journal is not None:
            for name, tmp_name in staged.items():
                tmp = folder / tmp_name
                if tmp.exists():
                    if tmp.is_dir():  # a folder cannot be renamed over another: the committed one goes first
                        _remove(folder / name)
                    os.replace(tmp, folder / name)
            for name in dropped:
                _remove(folder / name)
            _write_small(folder / MANIFEST, manifest.to_json())
            _fsync_folder(folder)
        journal_file.unlink(missing_ok=True)
    for stale in folder.glob(".*.tmp"):
        _remove(stale)
