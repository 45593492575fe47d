"""A run folder's writer lock: one process writes a folder at a time.

Writers hold ``.gptzoo.lock`` (an OS lock, so it is released when the process dies) and record who
they are in ``.gptzoo.owner.json``; a second writer is refused at once with the holder's PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from gptzoo.core import CheckpointError
from gptzoo.recipes.runs._journal import DiskFullError, is_disk_full, recover

LOCK = ".gptzoo.lock"
OWNER = ".gptzoo.owner.json"


class RunLockedError(CheckpointError):
    """Another process is writing the run folder."""


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


@contextmanager
def run_writer(folder: Path) -> Iterator[None]:
    """Hold the folder's lock; before the block, finish or drop what a crashed writer left.

    A folder the block created and left with nothing in it is removed again.
    """
    with RunLock(folder):
        recover(Path(folder))
        yield
